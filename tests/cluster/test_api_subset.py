"""The single server's end-to-end API tests, run unchanged against `rillet serve --replicas 2` on a
two-node Ray cluster (conftest.py makes `server`, `client` and `http` the cluster's).

Left out, and why: tests that read the JSON access log from the server's output (in a cluster it
is written by the ingress replica, to Ray's log files), tests that start servers of their own
(keys, rate limits, shutdown, engine-process failure: test_when_a_replica_dies.py covers keys,
limits and a replica's death), and tests that read an engine counter at once after an answer (the
cluster's engine figures are each replica's report of a moment ago:
test_disconnect_mid_stream_frees_blocks is below in a form that waits for the reports to settle)."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.api.helpers import NO_END, chat_body
from tests.api.test_chat import (rendered_prompt_tokens, test_fingerprint_is_stable_and_created_is_recent,  # noqa: F401
                                 test_max_completion_tokens_wins_over_max_tokens,
                                 test_max_tokens_cuts_with_finish_reason_length,
                                 test_n_gives_n_choices_and_counts_all_their_tokens,
                                 test_non_stream_answers_with_sensible_text_and_real_usage,
                                 test_same_seed_gives_the_same_sampled_text, test_stop_string_ends_the_text_before_it,
                                 test_system_and_multi_turn_conversation, test_temperature_zero_is_repeatable)
from tests.api.test_clients import (test_sdk_parse_returns_the_pydantic_model,  # noqa: F401
                                    test_sdk_stream_helper_accumulates_streamed_tool_calls)
from tests.api.test_engine_behaviour import (test_16_concurrent_greedy_requests_equal_each_alone,  # noqa: F401
                                             test_disconnect_mid_prefill_stops_compute_and_frees_blocks)
from tests.api.test_errors import (test_prompt_longer_than_context_is_400,  # noqa: F401
                                   test_prompt_plus_max_tokens_beyond_context_is_400,
                                   test_typed_exceptions_of_the_official_client, test_unknown_model_is_404,
                                   test_unknown_route_and_method)
from tests.api.test_logprobs import test_logprobs_in_a_stream_match_the_non_stream_answer  # noqa: F401
from tests.api.test_models import test_health, test_models_list_shape, test_unknown_model_card_is_404  # noqa: F401
from tests.api.test_observability import (  # noqa: F401
    test_a_client_request_id_is_honoured_within_a_safe_alphabet_and_length,
    test_an_id_with_nothing_safe_in_it_is_replaced, test_every_response_carries_a_fresh_request_id)
from tests.api.test_sampling_fields import test_seed_gives_the_same_text_with_other_requests_in_flight  # noqa: F401
from tests.api.test_stream import (test_include_usage_adds_a_final_usage_chunk, test_openai_client_stream,  # noqa: F401
                                   test_sse_framing, test_stream_text_equals_non_stream_text_at_temperature_zero,
                                   test_stream_with_n_choices_has_each_choice_framed,
                                   test_stream_with_stop_string_equals_non_stream)

pytestmark = pytest.mark.cluster


def test_disconnect_mid_stream_cancels_the_sequence_in_its_replica(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=chat_body(
                "Write a very long essay about oceans.", max_tokens=2000, stream=True, logit_bias=NO_END)) as response:
            assert response.status_code == 200
            for count, _ in enumerate(response.iter_lines()):
                if count > 5:
                    break
    generated = settled(server, "rillet_generated_tokens_total")
    assert server.metric("rillet_running_sequences") == server.metric("rillet_waiting_sequences") == 0
    assert server.metric("rillet_kv_blocks_free") == server.metric("rillet_kv_blocks_total")
    time.sleep(1)
    assert server.metric("rillet_generated_tokens_total") == generated  # no more tokens: it was aborted


def settled(server, name: str, quiet_s: float = 1.5, timeout: float = 30) -> float:
    """A counter once the replicas' reports have stopped changing it for quiet_s."""
    deadline = time.monotonic() + timeout
    value, since = server.metric(name), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"{name} still changing after {timeout} s"
        time.sleep(0.1)
        current = server.metric(name)
        if current != value:
            value, since = current, time.monotonic()
    return value
