"""`rillet chat`: a conversation in the terminal with a running OpenAI-compatible server, or with
one it starts for itself when none answers. It imports neither torch nor the engine: the server
does the work, through the official `openai` client; prompt_toolkit edits the lines."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import openai

from rillet.config import DEFAULTS

DEFAULT_BASE_URL = f"http://{DEFAULTS.host}:{DEFAULTS.port}/v1"
PROMPT = ">>> "
COMMANDS_HELP = """\
/reset        forget the conversation (the system message stays)
/save FILE    write the conversation to FILE as JSON messages
/exit         leave (so does Ctrl-D)
Ctrl-C stops the answer being written; what it had written stays in the conversation."""


class ChatError(Exception):
    """Ends `rillet chat` with one line and status 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", metavar="URL", help=f"the server's OpenAI API address (default: {DEFAULT_BASE_URL}, "
                        "and when no server answers there, rillet chat starts one for itself)")
    parser.add_argument("--api-key", metavar="KEY", default=os.environ.get("RILLET_API_KEY"),
                        help="the key of a server that needs one (default: $RILLET_API_KEY)")
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="the model to talk to (default: the server's first in /v1/models); "
                        "a GGUF file or model folder instead starts a server of it for this chat")
    parser.add_argument("--system", metavar="TEXT", help="a system message that begins the conversation")
    parser.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default: the server's, 1)")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="the longest answer in tokens (default: the server's)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the sampling, for repeatable answers")
    parser.add_argument("--verbose", action="store_true",
                        help="after each answer, its token counts, time to first token and tokens per second")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rillet chat", description="chat with a model in the terminal",
                                     epilog=COMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        # Ctrl-C stops an answer. A process started with SIGINT ignored (a shell's background job, some
        # CI runners) passes that on, and Python then raises no KeyboardInterrupt; a chat reading its
        # terminal is in the foreground, and the key is its own.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    server = None
    try:
        client, model, server = connect(args)
        sampling = {name: value for name, value in (("temperature", args.temperature),
                                                     ("max_tokens", args.max_tokens), ("seed", args.seed))
                    if value is not None}
        conversation = Conversation(client, model, args.system, sampling, args.verbose, server)
        note(f"chatting with {model} at {str(client.base_url).rstrip('/')}; /help for commands, Ctrl-D to leave")
        return repl(conversation, line_reader())
    except ChatError as error:
        print(f"rillet chat: error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()


def connect(args: argparse.Namespace):
    """The client, the model's name, and the server started for this chat (or None)."""
    from rillet.chat.local_server import LocalServer, ServerStartError

    model_path = args.model if args.model and os.path.exists(args.model) else None
    if model_path is None:
        client = make_client(args.base_url or DEFAULT_BASE_URL, args.api_key)
        try:
            return client, pick_model(client, args.model), None
        except openai.APIConnectionError as error:
            if args.base_url:
                raise ChatError(describe_error(error, client.base_url)) from None
        note(f"no server answers at {str(client.base_url).rstrip('/')}: starting one")
    elif args.base_url:
        raise ChatError(f"--model {args.model} is a file, which rillet chat serves itself: leave out --base-url, "
                        "or give --model the name of a model that the server there serves")
    try:
        server = LocalServer(model_path)
    except ServerStartError as error:
        raise ChatError(str(error)) from None
    try:
        client = make_client(server.base_url, server.api_key)
        return client, pick_model(client, None if model_path else args.model), server
    except BaseException:
        server.stop()
        raise


def make_client(base_url: str, api_key: str | None) -> openai.OpenAI:
    # No retries: a refusal is said at once, in one line, and the person decides.
    return openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0,
                         timeout=openai.Timeout(600, connect=5))


def pick_model(client: openai.OpenAI, wanted: str | None) -> str:
    try:
        served = [model.id for model in client.models.list()]
    except openai.APIConnectionError:
        raise
    except openai.APIError as error:
        raise ChatError(describe_error(error, client.base_url)) from None
    if not served:
        raise ChatError(f"the server at {client.base_url} lists no model this key may use")
    if wanted is not None and wanted not in served:
        raise ChatError(f"the server at {client.base_url} does not serve {wanted!r}; it serves {', '.join(served)}")
    return wanted or served[0]


@dataclass
class Conversation:
    client: openai.OpenAI
    model: str
    system: str | None
    sampling: dict
    verbose: bool = False
    server: object | None = None  # the LocalServer of this chat, if it started one
    messages: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def save(self, path: str) -> None:
        Path(path).expanduser().write_text(json.dumps(self.messages, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")

    def ask(self, text: str) -> None:
        """Streams the answer to `text` onto stdout. Ctrl-C stops it and keeps what was written;
        an error drops the whole turn, so that it can be sent again."""
        self.messages.append({"role": "user", "content": text})
        answer = Answer()
        try:
            self._stream(answer)
        except KeyboardInterrupt:
            answer.interrupted = True
        except openai.APIError as error:
            self.messages.pop()
            end_line(answer.text)
            if self.server is not None and self.server.exited:
                raise ChatError(f"the server rillet chat started has exited: {self.server.last_line()}") from None
            note(f"error: {describe_error(error, self.client.base_url)}", error=True)
            return
        except Exception as error:  # noqa: BLE001 (a connection broken mid-stream, say: one line, no traceback)
            self.messages.pop()
            end_line(answer.text)
            note(f"error: the answer failed: {error or type(error).__name__}", error=True)
            return
        end_line(answer.text)
        if answer.interrupted:
            note("[stopped: the partial answer stays in the conversation]" if answer.text else "[stopped]")
        if answer.text:
            self.messages.append({"role": "assistant", "content": answer.text})
        else:
            self.messages.pop()
        if self.verbose and not answer.interrupted and answer.usage is not None:
            note(answer.stats())
        sys.stdout.write("\n")
        sys.stdout.flush()

    def _stream(self, answer: Answer) -> None:
        with self.client.chat.completions.create(model=self.model, messages=self.messages, stream=True,
                                                 stream_options={"include_usage": True}, **self.sampling) as stream:
            for chunk in stream:
                if chunk.usage is not None:
                    answer.usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        answer.add(choice.delta.content)
        answer.ended_at = time.perf_counter()


@dataclass
class Answer:
    pieces: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    ended_at: float | None = None
    usage: object | None = None
    interrupted: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, piece: str) -> None:
        self.first_at = self.first_at or time.perf_counter()
        self.pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()

    def stats(self) -> str:
        prompt, completion = self.usage.prompt_tokens, self.usage.completion_tokens
        line = f"[{prompt} prompt + {completion} completion tokens"
        if self.first_at is not None:
            line += f", {self.first_at - self.started:.2f} s to first token"
            # The pace of decoding: the tokens after the first, over the time since the first; over
            # the whole time when the answer came at once (one token, or tokens held up together).
            ended = self.ended_at or time.perf_counter()
            if completion > 1 and ended - self.first_at >= 0.05:
                line += f", {(completion - 1) / (ended - self.first_at):.1f} tokens/s"
            elif completion > 0:
                line += f", {completion / (ended - self.started):.1f} tokens/s"
        return line + "]"


def repl(conversation: Conversation, read_line: Callable[[], str]) -> int:
    while True:
        try:
            text = read_line().strip()
            if text.partition(" ")[0] in ("/exit", "/quit", "/bye"):
                return 0
            if text:
                run(conversation, text)
        except KeyboardInterrupt:  # at the prompt (or between two answers), Ctrl-C clears the line
            continue
        except EOFError:
            return 0


def run(conversation: Conversation, text: str) -> None:
    """A command, or a message to the model."""
    command, _, argument = text.partition(" ")
    if command == "/help":
        note(COMMANDS_HELP)
    elif command == "/reset":
        conversation.reset()
        note("the conversation is forgotten" + (" (the system message stays)" if conversation.system else ""))
    elif command == "/save":
        save(conversation, argument.strip())
    elif command.startswith("/") and command[1:].isalpha():
        note(f"unknown command {command}: /help lists them", error=True)
    else:  # a message, which may begin with a path such as /etc/hosts
        conversation.ask(text)


def save(conversation: Conversation, path: str) -> None:
    if not path:
        note("/save needs a file name: /save FILE", error=True)
        return
    try:
        conversation.save(path)
    except OSError as error:
        note(f"cannot save to {path}: {error.strerror or error}", error=True)
        return
    count = len(conversation.messages)
    note(f"saved {count} message{'' if count == 1 else 's'} to {path}")


def line_reader() -> Callable[[], str]:
    """prompt_toolkit's line editing and history on a terminal; plain lines from a pipe."""
    if not sys.stdin.isatty():
        def read_plain() -> str:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            return line.rstrip("\n")
        return read_plain
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    history = InMemoryHistory()
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "rillet"
    try:
        state.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(state / "chat_history"))
    except OSError:
        pass
    session = PromptSession(history=history)
    return lambda: session.prompt(PROMPT)


def end_line(text: str) -> None:
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def note(text: str, error: bool = False) -> None:
    """A line of the chat's own (not the model's), on stderr: dim, or red for an error, on a terminal."""
    if sys.stderr.isatty():
        text = f"\x1b[{'31' if error else '2'}m{text}\x1b[0m"
    print(text, file=sys.stderr, flush=True)


def describe_error(error: openai.APIError, base_url: object) -> str:
    """One line for any failure of a request: no traceback, the server's own words, and what to do."""
    base_url = str(base_url).rstrip("/")
    if isinstance(error, openai.APITimeoutError):
        return f"the server at {base_url} did not answer in time"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach a server at {base_url}: {_connection_failure(error)}"
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("message") or error.message
    if not isinstance(error, openai.APIStatusError):  # an error event inside the stream
        return f"the answer failed: {message}"
    line = f"{error.status_code}{' ' + error.code if error.code else ''}: {message}"
    if error.status_code == 401:
        return line + " (give the server's key with --api-key or RILLET_API_KEY)"
    wait = _retry_after(error.response.headers)
    if wait is None or "try again in" in message:  # a 429 says it in its message
        return line
    return line + f" (retry after {wait:g} s)"


def _connection_failure(error: BaseException) -> str:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "connection refused" in str(cause).lower():
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return str(error.__cause__ or error)


def _retry_after(headers) -> float | None:
    try:
        if "retry-after-ms" in headers:
            return round(float(headers["retry-after-ms"]) / 1000, 1)
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        pass
    return None
