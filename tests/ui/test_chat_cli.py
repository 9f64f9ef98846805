"""`rillet chat` in a real terminal (a pty, through pexpect), against the real server, a server it
starts itself, and a stub server for the errors a real one cannot be made to give on demand."""
from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pexpect
import pytest

from rillet.api.app import create_app
from rillet.api.rate_limit import RateLimiter
from rillet.api.served_model import ServedModel
from tests.api.helpers import access_lines
from tests.api.stub_app import JoiningTemplate, StubEngine, WordTokenizer, serving
from tests.conftest import free_port, wait_until_no_process_left
from tests.ui.conftest import API_KEY, screen, spawn_chat

STATS = re.compile(r"\[(\d+) prompt \+ (\d+) completion tokens")
# The first line of an answer: after the line sent and the terminal codes that end the prompt, text.
ANSWER_LINE = r"\r\n(?:\x1b\[[0-9;?]*[A-Za-z])*[^\x1b\r\n]+\r\n"
# `rillet chat` that says at the end whether anything imported torch or the engine.
REPORTING_IMPORTS = ("import sys, rillet.cli\n"
                     "status = rillet.cli.main(sys.argv[1:])\n"
                     "heavy = [m for m in ('torch', 'rillet.engine', 'rillet.model') if m in sys.modules]\n"
                     "print('imported:', heavy or 'neither torch nor the engine')\n"
                     "sys.exit(status)")


def expect_stats(chat: pexpect.spawn) -> tuple[int, int]:
    chat.expect(STATS)
    return int(chat.match.group(1)), int(chat.match.group(2))


def chat_completions(server) -> list[dict]:
    return [entry for entry in access_lines(server) if entry["path"] == "/v1/chat/completions"]


def new_completions(server, seen: int, count: int = 1, timeout: float = 60) -> list[dict]:
    """The access lines of the chat completions after the first `seen`, once there are `count`:
    a line is written when the request ends on the server, a moment after the client is done."""
    deadline = time.monotonic() + timeout
    while len(entries := chat_completions(server)) < seen + count:
        assert time.monotonic() < deadline, f"{len(entries) - seen} of {count} completions logged"
        time.sleep(0.05)
    return entries[seen:]


def finish(chat: pexpect.spawn) -> int:
    chat.expect(pexpect.EOF)
    chat.close()
    assert "Traceback" not in screen(chat)
    return chat.exitstatus


def test_two_turns_stream_and_the_second_remembers_the_first(server, tmp_path):
    chat = spawn_chat("--base-url", f"{server.base_url}/v1", "--system", "You are a terse assistant.",
                      "--temperature", "0", "--max-tokens", "12", "--verbose", tmp_path=tmp_path)
    seen = len(chat_completions(server))
    chat.expect_exact("chatting with SmolLM2-135M-Instruct at")
    chat.expect_exact(">>>")
    chat.send("My name is Ada.\r")
    first_prompt, first_completion = expect_stats(chat)
    chat.expect_exact(">>>")
    chat.send("What is my name?\r")
    second_prompt, _ = expect_stats(chat)
    # The second request carries the system message, the first question and its answer.
    assert second_prompt > first_prompt + first_completion
    assert [e["prompt_tokens"] for e in new_completions(server, seen, 2)] == [first_prompt, second_prompt]

    chat.expect_exact(">>>")
    chat.send("/save conversation.json\r")
    chat.expect_exact("saved 5 messages to conversation.json")
    saved = json.loads((tmp_path / "conversation.json").read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert [saved[0]["content"], saved[1]["content"], saved[3]["content"]] == [
        "You are a terse assistant.", "My name is Ada.", "What is my name?"]
    for answer in (saved[2]["content"], saved[4]["content"]):  # what was kept is what was shown
        assert answer and answer in screen(chat)

    chat.expect_exact(">>>")
    chat.send("/reset\r")
    chat.expect_exact("the conversation is forgotten (the system message stays)")
    chat.expect_exact(">>>")
    chat.send("/save after-reset.json\r")
    chat.expect_exact("saved 1 message to")
    assert json.loads((tmp_path / "after-reset.json").read_text()) == [saved[0]]
    chat.expect_exact(">>>")
    chat.sendeof()  # Ctrl-D leaves
    assert finish(chat) == 0


# At temperature 0 this prompt runs to max_tokens (1,500 tokens, many seconds), so the Ctrl-C lands
# in the answer however slowly the test reads it.
LONG_ANSWER = "Write a long poem about the sea, with many short lines."
# `rillet chat` started with SIGINT ignored, as a shell's background job or some CI runners start it.
SIGINT_IGNORED = ("import signal, sys, rillet.cli\n"
                  "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                  "sys.exit(rillet.cli.main(sys.argv[1:]))")


def test_ctrl_c_stops_the_answer_and_keeps_the_chat(server, tmp_path):
    chat = spawn_chat("--base-url", f"{server.base_url}/v1", "--temperature", "0", "--max-tokens", "1500",
                      "--verbose", tmp_path=tmp_path)
    seen = len(chat_completions(server))
    chat.expect_exact(">>>")
    chat.send(LONG_ANSWER + "\r")
    chat.expect_exact("lines.")
    chat.expect(ANSWER_LINE + r"[^\x1b\r\n]+\r\n")  # two lines of the answer, streamed
    chat.sendintr()
    chat.expect_exact("[stopped: the partial answer stays in the conversation]")
    [stopped] = new_completions(server, seen)
    assert stopped["cancelled"] is True and stopped["completion_tokens"] < 1500

    chat.expect_exact(">>>")
    chat.send("/save kept.json\r")
    chat.expect_exact("saved 2 messages")
    partial = json.loads((tmp_path / "kept.json").read_text())[1]
    assert partial["role"] == "assistant" and partial["content"].count("\n") >= 1

    chat.expect_exact(">>>")
    chat.send("Go on.\r")  # sent with the stopped answer before it
    chat.expect_exact("on.")
    chat.expect(ANSWER_LINE)
    chat.sendintr()
    [going_on] = new_completions(server, seen + 1)
    assert going_on["prompt_tokens"] > stopped["prompt_tokens"] + 12
    chat.expect_exact(">>>")
    chat.send("/exit\r")  # a line, which the terminal keeps for the prompt wherever the Ctrl-C landed
    assert finish(chat) == 0


def test_ctrl_c_stops_the_answer_of_a_chat_started_with_sigint_ignored(server, tmp_path):
    chat = spawn_chat("--base-url", f"{server.base_url}/v1", "--temperature", "0", "--max-tokens", "1500",
                      tmp_path=tmp_path, python_code=SIGINT_IGNORED)
    chat.expect_exact(">>>")
    chat.send(LONG_ANSWER + "\r")
    chat.expect_exact("lines.")
    chat.expect(ANSWER_LINE)
    chat.sendintr()
    chat.expect_exact("[stopped: the partial answer stays in the conversation]")
    chat.expect_exact(">>>")
    chat.send("/exit\r")
    assert finish(chat) == 0


def test_a_wrong_key_is_one_line(keyed_cors_server, tmp_path):
    chat = spawn_chat("--base-url", f"{keyed_cors_server.base_url}/v1", "--api-key", "sk-wrong", tmp_path=tmp_path)
    assert finish(chat) == 1
    lines = [line for line in screen(chat).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "401 invalid_api_key" in lines[0] and "--api-key" in lines[0] and "sk-wrong" not in lines[0]


def test_the_right_key_from_the_environment(keyed_cors_server, tmp_path):
    chat = spawn_chat("--base-url", f"{keyed_cors_server.base_url}/v1", "--max-tokens", "4", "--verbose",
                      tmp_path=tmp_path, env={"RILLET_API_KEY": API_KEY})
    chat.expect_exact(">>>")
    chat.send("Hi.\r")
    expect_stats(chat)
    chat.expect_exact(">>>")
    chat.sendeof()
    assert finish(chat) == 0


def test_connection_refused_is_one_line_and_nothing_heavy_is_imported(tmp_path):
    chat = spawn_chat("--base-url", f"http://127.0.0.1:{free_port()}/v1", tmp_path=tmp_path,
                      python_code=REPORTING_IMPORTS)
    assert finish(chat) == 1
    lines = [line for line in screen(chat).splitlines() if line.strip()]
    assert lines[0].startswith("rillet chat: error: cannot reach a server at http://127.0.0.1:")
    assert lines[0].endswith(": connection refused")
    assert lines[1:] == ["imported: neither torch nor the engine"]


@pytest.fixture
def stub_server():
    """Three requests a minute, for everyone (an open server shares one bucket)."""
    engine = StubEngine()
    served = ServedModel(name="stub", tokenizer=WordTokenizer(), chat_template=JoiningTemplate(),
                         max_context_len=64, max_num_seqs=4, fingerprint="fp_stub", created=1)
    with serving(create_app(engine, served, rate_limiter=RateLimiter(3, None))) as base_url:
        yield engine, base_url


def test_503_and_429_are_one_line_each_and_the_chat_goes_on(stub_server, tmp_path):
    engine, base_url = stub_server
    chat = spawn_chat("--base-url", f"{base_url}/v1", tmp_path=tmp_path, python_code=REPORTING_IMPORTS)
    chat.expect_exact(">>>")  # the model list took the first request of the minute
    chat.send("hello\r")
    chat.expect_exact("w0 w1 w2")
    chat.expect_exact(">>>")
    engine.is_alive = False
    chat.send("again\r")
    chat.expect(r"error: 503 engine_unavailable: [^\r\n]+\r\n")
    chat.expect_exact(">>>")
    engine.is_alive = True
    chat.send("once more\r")
    chat.expect(r"error: 429 rate_limit_exceeded: [^\r\n]+ try again in (\d+(\.\d+)?) ?s")
    assert 0 < float(chat.match.group(1)) <= 20
    chat.expect_exact(">>>")
    chat.send("/save stub.json\r")
    chat.expect_exact("saved 2 messages")  # the refused turns were dropped: send them again
    chat.expect_exact(">>>")
    chat.sendeof()
    assert finish(chat) == 0
    assert "imported: neither torch nor the engine" in screen(chat)


def test_chat_starts_its_own_server_and_stops_it(tmp_path):
    from rillet.model import default_model_path

    mark = uuid.uuid4().hex
    chat = spawn_chat("--model", default_model_path(), "--temperature", "0", "--max-tokens", "6", "--verbose",
                      tmp_path=tmp_path, env={"RILLET_TEST_SERVER": mark})
    chat.expect_exact("loaded ", timeout=240)  # the server's own loading output
    chat.expect(r"chatting with SmolLM2-135M-Instruct\.Q4_1 at http://127\.0\.0\.1:(\d+)/v1")
    port = int(chat.match.group(1))
    # A server of its own: a key nobody else has, and no playground.
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    page = httpx.get(f"http://127.0.0.1:{port}/")
    assert page.status_code == 404 and page.json()["error"]["code"] == "not_found"

    chat.expect_exact(">>>")
    chat.sendintr()  # Ctrl-C at the prompt clears the line; the server stays
    chat.expect_exact(">>>")
    chat.send("Say hello.\r")
    expect_stats(chat)
    chat.expect_exact(">>>")
    chat.sendeof()
    assert finish(chat) == 0
    wait_until_no_process_left(mark, timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")
