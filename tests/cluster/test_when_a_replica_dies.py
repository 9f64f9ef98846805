"""Keys and rate limits through the cluster's one ingress, and the loss of an engine replica under
a steady streaming load: its requests end with an error event (or a 503 engine_unavailable),
none hangs, none is malformed, new requests succeed within NEW_REQUESTS_BOUND_S of the kill, and
Ray Serve brings a new replica that takes traffic. Last in the session: it kills a replica."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.api.helpers import NO_END, chat_body
from tests.cluster.conftest import engine_replica_pids, per_replica, replica_metric, start_cluster_server

pytestmark = pytest.mark.cluster

# The README's bound: a request sent this long after a replica's death succeeds.
NEW_REQUESTS_BOUND_S = 5.0
REJOIN_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0


# "tests" for the load, "sk-small" for the rate limit.
KEYS_FILE = """
[[keys]]
id = "tests"
key = "test"

[[keys]]
id = "small"
key = "sk-small"
rpm = 2
"""


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys_file.write_text(KEYS_FILE)
    running = start_cluster_server(ray_cluster, ["--api-keys-file", str(keys_file), "--public-metrics"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def auth_headers() -> dict:
    return {"Authorization": "Bearer test"}


def test_keys_and_rate_limits_hold_through_the_ingress(server):
    body = chat_body(max_tokens=2)
    missing = httpx.post(f"{server.base_url}/v1/chat/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    small = {"Authorization": "Bearer sk-small"}
    statuses = [httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=small, timeout=60)
                for _ in range(3)]
    assert [s.status_code for s in statuses] == [200, 200, 429]
    assert statuses[2].json()["error"]["code"] == "rate_limit_exceeded" and int(statuses[2].headers["retry-after"]) > 0


def stream_once(base_url: str, headers: dict, number: int) -> tuple[str, str]:
    """(outcome, detail): ok, error_event or 503 (engine_unavailable), else malformed or hung."""
    # Prompts that differ early: the router may send each wherever there is room.
    body = chat_body(f"Lighthouse {number}: tell me a long story about it.", max_tokens=40, stream=True,
                     logit_bias=NO_END)
    try:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers,
                          timeout=REQUEST_TIMEOUT_S) as response:
            if response.status_code != 200:
                response.read()
                code = response.json()["error"]["code"]
                ok = response.status_code == 503 and code == "engine_unavailable"
                return ("503" if ok else "malformed"), f"{response.status_code} {code}"
            lines = [line for line in response.iter_lines() if line]
    except httpx.TimeoutException as error:
        return "hung", repr(error)
    if lines[-1] != "data: [DONE]" or not all(line.startswith("data: ") for line in lines):
        return "malformed", lines[-1]
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    if "error" in events[-1]:
        code = events[-1]["error"]["code"]
        return ("error_event" if code == "engine_unavailable" else "malformed"), code
    ids = {event["id"] for event in events}
    finished = [c["finish_reason"] for event in events for c in event["choices"] if c["finish_reason"]]
    return ("ok" if len(ids) == 1 and finished == ["length"] else "malformed"), str(finished)


def test_a_killed_replica_fails_its_requests_cleanly_and_rejoins(server, auth_headers):
    records: list[tuple[float, float, str, str]] = []
    stop = threading.Event()

    def load(thread: int) -> None:
        number = thread
        while not stop.is_set():
            started = time.monotonic()
            outcome, detail = stream_once(server.base_url, auth_headers, number)
            number += 4
            records.append((started, time.monotonic(), outcome, detail))

    before = set(per_replica(server, "rillet_replica_requests_routed_total", auth_headers))
    pids = engine_replica_pids()
    assert len(pids) == 2 and len(before) == 2
    killed_engine_processes = child_processes(pids[0])  # the replica's EngineProcess child
    assert killed_engine_processes
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(6)
    os.kill(pids[0], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        rejoined_after = wait_for_new_replica_serving(server, before, auth_headers) - killed_at
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 10)

    outcomes = [outcome for *_, outcome, _ in records]
    after_kill = [(started - killed_at, outcome) for started, _, outcome, _ in records if started > killed_at]
    first_ok = min(delay for delay, outcome in after_kill if outcome == "ok")
    failed = [r for r in records if r[2] not in ("ok",)]
    figures = {"requests": len(records), "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
               "failed_requests": [(round(s - killed_at, 2), round(e - killed_at, 2), o, d) for s, e, o, d in failed],
               "first_success_started_after_kill_s": round(first_ok, 2), "rejoined_after_s": round(rejoined_after, 1)}
    print("failure:", json.dumps(figures))
    assert not any(thread.is_alive() for thread in threads)
    assert "hung" not in outcomes and "malformed" not in outcomes, figures
    assert all(outcome == "ok" for delay, outcome in after_kill if delay >= NEW_REQUESTS_BOUND_S), figures
    assert pids[0] not in engine_replica_pids() and len(engine_replica_pids()) == 2
    assert not any(os.path.exists(f"/proc/{pid}") for pid in killed_engine_processes)  # it died with its replica
    assert replica_metric(server, "rillet_replicas") == 2


def child_processes(pid: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(child) for child in f.read().split()]
    return children


def wait_for_new_replica_serving(server, before: set[str], headers: dict) -> float:
    """Until a replica that was not there before the kill has been routed a request; returns when."""
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        routed = per_replica(server, "rillet_replica_requests_routed_total", headers)
        if any(count > 0 for replica, count in routed.items() if replica not in before):
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"no new replica took traffic within {REJOIN_TIMEOUT_S} s")
