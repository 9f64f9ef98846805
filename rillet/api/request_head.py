"""What the head of a request must be before anything else reads it: the outermost layer.

- At most MAX_HEADERS headers (their total size is bounded before this, by the HTTP parser's
  limit on an incomplete head: rillet/api/http_server.py); more are a 431.
- On a server bound to a loopback address, a Host this machine answers to. A web page the user
  visits can point a name of its own at 127.0.0.1 (DNS rebinding) and then read the server as
  its own origin, CORS notwithstanding; its requests carry that name in Host (Ollama's
  CVE-2024-28224). Allowed: localhost and names under .localhost, any IP address (a rebinding
  needs a name), and the names given with --allowed-host. Anything else is a 403.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from rillet.api.errors import APIError, ErrorKind

MAX_HEADERS = 100
LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True, slots=True)
class HostCheck:
    """The names a request's Host may carry besides localhost and IP addresses."""
    names: frozenset[str] = frozenset()

    def allows(self, host_header: str) -> bool:
        host = host_name(host_header)
        if not host or host in LOOPBACK_NAMES or host.endswith(".localhost") or host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    @classmethod
    def for_server(cls, bound_host: str, allowed: list[str]) -> HostCheck | None:
        """The check of a server bound to bound_host: on a loopback address, or wherever names are
        given with --allowed-host; None (no check) otherwise, or where "*" is among them."""
        names = frozenset(host_name(name) for name in allowed)
        if "*" in names or (not names and not is_loopback(bound_host)):
            return None
        return cls(names)


def host_name(host_header: str) -> str:
    """The name of a Host header, without its port, lower case, without a final dot."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 address, [::1]:8000
        return host[1:host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    if name and port.isdigit():
        host = name
    return host.rstrip(".")


def is_loopback(bound_host: str) -> bool:
    if bound_host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bound_host.strip("[]")).is_loopback
    except ValueError:
        return False


class RequestHeadMiddleware:
    def __init__(self, app, host_check: HostCheck | None = None, max_headers: int = MAX_HEADERS) -> None:
        self.app = app
        self.host_check = host_check
        self.max_headers = max_headers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            error = self._refusal(scope["headers"])
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: list[tuple[bytes, bytes]]) -> APIError | None:
        if len(headers) > self.max_headers:
            return APIError(ErrorKind.HEADERS_TOO_LARGE, f"the request has {len(headers)} headers; this server "
                            f"takes at most {self.max_headers}", headers={"Connection": "close"})
        if self.host_check is not None:
            host = next((value for name, value in headers if name == b"host"), b"").decode("latin-1")
            if not self.host_check.allows(host):
                return APIError(ErrorKind.HOST_NOT_ALLOWED, f"this server does not answer to the host "
                                f"{host_name(host)!r}: start it with --allowed-host {host_name(host)} to allow it")
        return None
