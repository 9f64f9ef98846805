"""The server `rillet chat` starts for itself when none answers: `rillet serve` on a free port of
127.0.0.1, in its own session (so that a Ctrl-C meant for the chat never reaches it), with a key
of its own and no playground, stopped when the chat ends."""
from __future__ import annotations

import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

READY_LINE = b"rillet: serving "
# Straight to 127.0.0.1, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """The server did not come up; the message is one line."""


class LocalServer:
    def __init__(self, model_path: str | None, startup_timeout: float = 600) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.api_key = "sk-rillet-chat-" + secrets.token_hex(16)
        command = [sys.executable, "-m", "rillet", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--shutdown-grace", "1", "--no-playground"]
        if model_path:
            command += ["--model", model_path]
        # Its own key, in place of any RILLET_API_KEYS the caller has: nobody else on the machine may use it.
        env = {**os.environ, "RILLET_API_KEYS": self.api_key}
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                        preexec_fn=_die_with_parent)  # noqa: PLW1509 (it only calls prctl)
        self._serving = threading.Event()
        # What the server writes once it serves is kept (the last lines), not shown: it would run into the chat.
        self.last_lines: collections.deque[str] = collections.deque(maxlen=20)
        threading.Thread(target=self._relay_output, name="rillet-chat-server-output", daemon=True).start()
        try:
            self._wait_ready(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _relay_output(self) -> None:
        """Shows the server's loading output (its progress bar included) as `rillet serve` shows it,
        until it serves."""
        stream = self.process.stdout
        pending = b""
        while chunk := os.read(stream.fileno(), 65536):
            if not self._serving.is_set():
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.last_lines.append(line.decode(errors="replace").rsplit("\r", 1)[-1])
                if line.startswith(READY_LINE):
                    self._serving.set()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"the server exited with status {self.process.returncode}"
                                       + (f": {self.last_line()}" if self.last_line() else ""))
            if _answers(f"http://127.0.0.1:{self.port}/health"):
                self._serving.wait(5)  # its "serving" line comes a moment after /health answers
                self._serving.set()
                return
            time.sleep(0.2)
        raise ServerStartError(f"the server did not answer within {timeout:g} s")

    def last_line(self) -> str:
        return next((line for line in reversed(self.last_lines) if line.strip()), "")

    @property
    def exited(self) -> bool:
        return self.process.poll() is not None

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (the server's graceful shutdown, which stops its engine process), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: a SIGTERM when the chat process dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
