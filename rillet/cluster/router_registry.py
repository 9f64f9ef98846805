"""The routers of this process, by deployment name, for the ingress's EngineClient to read.

A module of its own because Ray Serve ships the router's module to the handle's process by value
(cloudpickle), which gives router.py's own globals a private copy there; this module is imported
by reference, so the router and the client share its dict."""
from __future__ import annotations

ROUTERS: dict = {}
