"""A two-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and a worker node of
one CPU each, no dashboard) and `rillet serve --replicas 2 --ray-address` on it: one engine
replica per node. The `server` fixture is that server here, so the single server's API tests
imported into test_api_subset.py run against the cluster unchanged.

The modules that need Ray are marked `cluster` (pytestmark) and left out of `make test`;
`make test-cluster` runs them. Ray is imported only inside the fixtures, so that collecting this
folder without the cluster extra works."""
from __future__ import annotations

import os
import time

import httpx
import openai
import pytest

from tests.conftest import RunningServer

# Per replica: one compute thread, a KV cache of 4096 tokens (the API tests send a 3,500-token
# prompt), the single server's prefill chunk.
REPLICA_ARGS = ["--threads", "1", "--kv-cache-tokens", "4096", "--max-num-batched-tokens", "256"]
ENGINE_PROCESS_TITLE = b"ray::ServeReplica:rillet:rillet-engine"
SERVE_PROCESS_TITLES = (b"ray::ServeController", b"ray::ProxyActor", b"ray::ServeReplica")


@pytest.fixture(scope="session")
def ray_cluster():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing to report from a test machine
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def start_cluster_server(ray_cluster, extra_args: list[str] = ()) -> RunningServer:
    wait_until_gone(SERVE_PROCESS_TITLES, timeout=60)  # the previous server's Serve, shutting down
    running = RunningServer(["--replicas", "2", "--ray-address", ray_cluster.address, *REPLICA_ARGS, *extra_args])
    try:
        wait_for_replicas(running, 2, timeout=120)
    except BaseException:
        running.stop()
        raise
    return running


def wait_for_replicas(server: RunningServer, count: int, timeout: float) -> float:
    """Waits until the router has `count` replicas whose engines are up; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if replica_metric(server, "rillet_replicas") == count:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not {count} replicas after {timeout} s:\n{server.output()[-3000:]}")


def replica_metric(server: RunningServer, name: str, headers: dict | None = None) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", headers=headers or {}).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def per_replica(server: RunningServer, name: str, headers: dict | None = None) -> dict[str, float]:
    """{replica id: value} of a per-replica metric."""
    values = {}
    for line in httpx.get(f"{server.base_url}/metrics", headers=headers or {}).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            replica = labels.split('replica="', 1)[1].split('"', 1)[0]
            values[replica] = float(value)
    return values


def engine_replica_pids() -> list[int]:
    """The engine replicas' Ray worker processes (Ray titles them by deployment)."""
    return processes_titled((ENGINE_PROCESS_TITLE,))


def processes_titled(titles: tuple[bytes, ...]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(titles):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def wait_until_gone(titles: tuple[bytes, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while processes_titled(titles):
        assert time.monotonic() < deadline, f"still running: {processes_titled(titles)}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster_server(ray_cluster):
    """An open server (no keys) for a module's tests; Ray Serve runs one application on a cluster
    at a time, so each module that needs another kind starts its own."""
    running = start_cluster_server(ray_cluster)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(cluster_server):
    return cluster_server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="test", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c
