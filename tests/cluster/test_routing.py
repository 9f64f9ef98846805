"""Routing by prefix: the follow-up turns of 8 conversations go to the replica that served their
first turn, and the two replicas' prefix caches together hit at least as often as one server's
on the same conversations.

The conversations are sent one request at a time, turn by turn across conversations (each
conversation's first turn, then each one's second, ...), so that which replica served a request
is read from the per-replica counter of requests routed. Each replica and the single server have
the same KV cache (4096 tokens); the 8 conversations need more than one such cache holds and less
than two do, which is what a second replica's cache is for."""
from __future__ import annotations

import concurrent.futures
import json
import time

import openai
import pytest

from tests.cluster.conftest import REPLICA_ARGS, per_replica
from tests.conftest import MODEL_NAME, RunningServer

pytestmark = pytest.mark.cluster

TOPICS = ["harbor", "orchard", "library", "glacier", "market", "observatory", "vineyard", "foundry"]
COLORS = ["red", "blue", "green", "amber", "violet", "white", "black", "silver", "gold"]
FOLLOW_UPS = ["Which item is blue? Answer in one sentence.", "Now list two of the green items."]
MAX_TOKENS = 24


def first_message(topic: str) -> str:
    facts = " ".join(f"In the {topic}, item {i} is {COLORS[(i * 7 + len(topic)) % len(COLORS)]}." for i in range(48))
    return f"Here are my notes on the {topic}. {facts} Summarize the notes on the {topic} in one sentence."


def run_conversations(server: RunningServer, client: openai.OpenAI, headers: dict) -> tuple[list[list[str]], float]:
    """Sends every turn; returns, per conversation, the replica of each turn (empty strings on a
    single server), and the prefix-cache hit rate of the workload."""
    conversations = [[{"role": "user", "content": first_message(topic)}] for topic in TOPICS]
    replicas: list[list[str]] = [[] for _ in TOPICS]
    hits_before, queried_before = settled_cache_counters(server, headers)
    for turn in range(1 + len(FOLLOW_UPS)):
        for index, messages in enumerate(conversations):
            if turn:
                messages.append({"role": "user", "content": FOLLOW_UPS[turn - 1]})
            routed_before = per_replica(server, "rillet_replica_requests_routed_total", headers)
            reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=MAX_TOKENS,
                                                   temperature=0)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            routed_after = per_replica(server, "rillet_replica_requests_routed_total", headers)
            served = [r for r, count in routed_after.items() if count - routed_before.get(r, 0) == 1]
            replicas[index].append(served[0] if len(served) == 1 else "")
    hits, queried = settled_cache_counters(server, headers)
    return replicas, (hits - hits_before) / (queried - queried_before)


def settled_cache_counters(server: RunningServer, headers: dict) -> tuple[float, float]:
    """The prefix cache's hit and queried tokens, once the engines' reports have caught up."""
    previous = None
    while True:
        current = (server.metric("rillet_prefix_cache_hit_tokens_total"),
                   server.metric("rillet_prefix_cache_queried_tokens_total"))
        if current == previous:
            return current
        previous = current
        time.sleep(0.6)


@pytest.fixture(scope="module")
def single_server():
    running = RunningServer(REPLICA_ARGS)
    yield running
    running.stop()


def test_follow_up_turns_go_to_the_first_turns_replica_and_the_caches_hit_at_least_as_often(
        server, client, single_server):
    replicas, cluster_hit_rate = run_conversations(server, client, {})
    single_client = openai.OpenAI(base_url=f"{single_server.base_url}/v1", api_key="unused", max_retries=0,
                                  timeout=120)
    _, single_hit_rate = run_conversations(single_server, single_client, {})

    follow_ups = [turn == turns[0] for turns in replicas for turn in turns[1:]]
    firsts = [turns[0] for turns in replicas]
    figures = {"follow_ups_on_first_replica": sum(follow_ups), "follow_ups": len(follow_ups),
               "first_turns_per_replica": {r: firsts.count(r) for r in set(firsts)},
               "cluster_hit_rate": round(cluster_hit_rate, 3), "single_hit_rate": round(single_hit_rate, 3)}
    print("routing:", json.dumps(figures))
    assert all(r for turns in replicas for r in turns), replicas
    assert sum(follow_ups) >= 0.9 * len(follow_ups), figures
    assert len(set(firsts)) == 2 and min(firsts.count(r) for r in set(firsts)) >= 2, figures  # spread
    assert cluster_hit_rate >= single_hit_rate, figures


def test_concurrent_conversations_spread_over_the_replicas_and_keep_their_replica(server, client):
    """8 conversations at once, each a client of its own: a burst of first turns spreads over both
    replicas (a choice not yet accepted counts in its replica's load), and each follow-up is routed
    for its prefix (to the one replica that holds its conversation)."""
    def routed(name: str) -> dict[str, float]:
        return per_replica(server, name, {})

    routed_before, by_prefix_before = routed("rillet_replica_requests_routed_total"), \
        routed("rillet_replica_requests_routed_by_prefix_total")

    def converse(topic: str) -> None:
        messages = [{"role": "user", "content": first_message(f"{topic} annex")}]
        for turn in range(1 + len(FOLLOW_UPS)):
            if turn:
                messages.append({"role": "user", "content": FOLLOW_UPS[turn - 1]})
            reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=MAX_TOKENS,
                                                   temperature=0)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})

    with concurrent.futures.ThreadPoolExecutor(len(TOPICS)) as pool:
        list(pool.map(converse, TOPICS))
    routed_after, by_prefix_after = routed("rillet_replica_requests_routed_total"), \
        routed("rillet_replica_requests_routed_by_prefix_total")
    per_replica_requests = {r: routed_after[r] - routed_before.get(r, 0) for r in routed_after}
    follow_ups_by_prefix = sum(by_prefix_after[r] - by_prefix_before.get(r, 0) for r in by_prefix_after)
    figures = {"requests_per_replica": per_replica_requests, "follow_ups_routed_by_prefix": follow_ups_by_prefix,
               "follow_ups": len(TOPICS) * len(FOLLOW_UPS)}
    print("concurrent routing:", json.dumps(figures))
    assert follow_ups_by_prefix >= 0.9 * len(TOPICS) * len(FOLLOW_UPS), figures
    assert min(per_replica_requests.values()) >= 0.25 * sum(per_replica_requests.values()), figures
