"""rillet on Ray Serve: `rillet serve --replicas N`.

One ingress (the same FastAPI app as a single server, rillet.api.app.create_app) in front of N
engine replicas, each one EngineProcess with its own model and KV cache:

- replica.py: the engine replica deployment;
- client.py: the EngineClient the ingress's app uses, which streams from the replicas;
- prefix_index.py and router.py: which replica a request goes to (Ray Serve's request-router
  interface), by the prompt's prefix and the replicas' load;
- metrics.py: the per-replica figures on /metrics;
- deployment.py: the ingress deployment and the application of both;
- launch.py: what `rillet serve --replicas` runs (Ray, Serve, the application, shutdown).

Ray is imported only here, and only by `rillet serve --replicas`.
"""
