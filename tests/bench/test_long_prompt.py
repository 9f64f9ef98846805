"""bench/long_prompt.py times each long prompt on a connection of its own: a server that drops a kept-alive
connection between two requests (llama-server did, at stops 34-37) must not fail the measure."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "long_prompt.py"


class OneRequestPerConnection(BaseHTTPRequestHandler):
    """Answers a connection's first request with a streamed chat completion and keeps the connection
    open; a second request on it is dropped unanswered, as a server that closes an idle connection
    just as the next request arrives drops it."""
    protocol_version = "HTTP/1.1"
    answered: list[int] = []  # the client port of each answered request

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if getattr(self, "served", False):
            self.close_connection = True
            return
        self.served = True
        self.answered.append(self.client_address[1])
        chunks = [{"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
                  {"choices": [], "usage": {"prompt_tokens": 1002, "completion_tokens": 1, "total_tokens": 1003}}]
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


def test_each_request_opens_a_connection_of_its_own():
    OneRequestPerConnection.answered = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OneRequestPerConnection)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = subprocess.run([sys.executable, str(SCRIPT), "--base-url", f"http://127.0.0.1:{server.server_port}/v1",
                              "--repeats", "3"], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["prompt_tokens"] == 1002 and len(result["ttft_s"]) == 3
    assert len(OneRequestPerConnection.answered) == len(set(OneRequestPerConnection.answered)) == 4  # and the warm-up
