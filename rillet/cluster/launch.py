"""`rillet serve --replicas N [--ray-address ADDRESS]`: starts Ray (or joins a cluster), runs the
application of deployment.py on Ray Serve, and waits for SIGTERM or SIGINT; then it shuts Ray
Serve down (and the local Ray it started), so that nothing of it is left running."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from rillet.cluster.proxy_headers import PROXY_CALLBACK
from rillet.cluster.replica import ReplicaSettings
from rillet.config import ServeConfig

log = logging.getLogger("rillet.cluster")


def serve_cluster(settings: ServeConfig, keys, model_path: str, served_name: str, log_format: str) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        print("rillet: error: --replicas needs Ray Serve: pip install 'rillet[cluster]'", file=sys.stderr)
        return 1
    from rillet.cluster.deployment import APP_NAME, IngressSettings, build_application

    config = settings.engine_config()
    cpus_per_replica = settings.cpus_per_replica or config.resolved_num_threads()
    gpus_per_replica = 1 if config.device.startswith("cuda") else 0
    replica_settings = ReplicaSettings(settings, model_path, log_format)
    ingress_settings = IngressSettings(settings, keys, model_path, served_name)
    # Serve's controller, proxy and replicas are started by this job and inherit its environment:
    # the proxy's x-request-id made as a single server's (proxy_headers.py), and each Serve process
    # running its router and user code on its one event loop instead of a thread of their own,
    # which costs less CPU a streamed token (about +8% tokens/s on 2 cores; nothing here blocks
    # the loop: the engine runs in its own process, the API's planning in a worker thread).
    runtime_env = {"env_vars": {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": PROXY_CALLBACK,
                                "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                                "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace="rillet", logging_level=settings.log_level.upper(),
                 runtime_env=runtime_env)
    else:
        # A local Ray of this machine's cores, or of as many as the replicas ask for.
        ray.init(num_cpus=max(os.cpu_count() or 1, settings.replicas * cpus_per_replica), namespace="rillet",
                 include_dashboard=False, logging_level=settings.log_level.upper(), runtime_env=runtime_env)
    # After ray.init, whose own SIGTERM handler would end this process without shutting Serve down.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location="HeadOnly")
        print(f"rillet: starting {settings.replicas} engine replicas ({cpus_per_replica:g} CPUs"
              f"{f', {gpus_per_replica} GPU' if gpus_per_replica else ''} each) on Ray Serve", file=sys.stderr,
              flush=True)
        app = build_application(replica_settings, ingress_settings, settings.replicas, cpus_per_replica, gpus_per_replica)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        print(f"rillet: serving {served_name} on http://{settings.host}:{settings.port}/v1 "
              f"({settings.replicas} replicas, Ray Serve)", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("rillet: stopping the Ray Serve application", file=sys.stderr, flush=True)
        return 0
    except RuntimeError as error:
        print(f"rillet: error: {error}", file=sys.stderr)
        return 1
    finally:
        serve.shutdown()
        ray.shutdown()
