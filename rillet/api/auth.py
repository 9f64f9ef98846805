"""API keys: who may call /v1/* (and /metrics and /openapi.json, unless opened), and which models
each key may use. Reading /metrics needs a key marked for it (`metrics = true` in the keys file):
its figures describe every key's traffic, not only the reader's.

Keys are kept only as SHA-256 hashes and compared in constant time. With no key configured
the server is open.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from rillet.api.errors import APIError, ErrorKind


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    key_sha256: bytes
    # None: every served model.
    models: frozenset[str] | None = None
    # Requests and tokens per minute; None: the server's defaults, 0: no limit for this key.
    rpm: int | None = None
    tpm: int | None = None
    # May read /metrics.
    metrics: bool = False

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


class KeyConfigError(ValueError):
    """The keys given on the command line, in the environment or in the keys file are unusable."""


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @property
    def is_open(self) -> bool:
        return not self.keys

    def find(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        found = None
        for key in self.keys:  # no early exit: every key costs the same comparison
            if hmac.compare_digest(digest, key.key_sha256):
                found = key
        return found

    @classmethod
    def from_settings(cls, plain_keys: list[str], keys_file: str | None) -> KeyStore:
        plain = [k.strip() for k in plain_keys if k.strip()]
        keys = [ApiKey(f"key-{i + 1}", hash_key(k)) for i, k in enumerate(plain)]
        if keys_file:
            keys += _read_keys_file(Path(keys_file), keys)
        return cls(keys)


_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def _read_keys_file(path: Path, earlier: list[ApiKey]) -> list[ApiKey]:
    """The file's [[keys]]; a setting that is wrong in any way is a KeyConfigError of one line
    naming its entry."""
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("keys", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise KeyConfigError(f"cannot read the keys file {path}: {error}") from None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise KeyConfigError(f"{path}: keys must be an array of tables, written [[keys]]")
    keys = list(earlier)
    for i, entry in enumerate(entries):
        keys.append(_key_entry(entry, f"{path}: keys[{i}]", i, keys))
    return keys[len(earlier):]


def _key_entry(entry: dict, where: str, index: int, earlier: list[ApiKey]) -> ApiKey:
    unknown = set(entry) - {"id", "key", "key_sha256", "models", "rpm", "tpm", "metrics"}
    if unknown:
        raise KeyConfigError(f"{where} has unsupported settings {sorted(unknown)}")
    key_id = entry.get("id", f"file-key-{index + 1}")
    if not isinstance(key_id, str) or not key_id:
        raise KeyConfigError(f"{where}.id must be a non-empty string")
    where = f"{where} (id {key_id!r})"
    if ("key" in entry) == ("key_sha256" in entry):
        raise KeyConfigError(f"{where} needs exactly one of key and key_sha256")
    if "key" in entry:
        if not isinstance(entry["key"], str) or not entry["key"].strip():
            raise KeyConfigError(f"{where}.key must be a non-empty string")
        digest = hash_key(entry["key"].strip())
    else:
        if not isinstance(entry["key_sha256"], str) or not _SHA256_HEX.match(entry["key_sha256"]):
            raise KeyConfigError(f"{where}.key_sha256 must be 64 hexadecimal digits, the SHA-256 of the key")
        digest = bytes.fromhex(entry["key_sha256"])
    models = entry.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise KeyConfigError(f"{where}.models must be a list of model names, such as [\"SmolLM2-135M-Instruct\"]")
    for other in earlier:
        if other.key_id == key_id:
            raise KeyConfigError(f"{where}: the id {key_id!r} is used by another key")
        if hmac.compare_digest(other.key_sha256, digest):
            raise KeyConfigError(f"{where} has the same key as the key with id {other.key_id!r}")
    metrics = entry.get("metrics", False)
    if not isinstance(metrics, bool):
        raise KeyConfigError(f"{where}.metrics must be true or false")
    return ApiKey(key_id, digest, None if models is None else frozenset(models),
                  _limit(entry, "rpm", where), _limit(entry, "tpm", where), metrics)


def _limit(entry: dict, name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is not None and (type(value) is not int or value < 0):
        raise KeyConfigError(f"{where}.{name} must be a whole number, 0 for no limit")
    return value


# Outside /v1/*, the paths that need a key on a server with keys, unless opened by a flag.
METRICS_PATH = "/metrics"
KEYED_PATHS = frozenset({METRICS_PATH, "/openapi.json"})


class AuthMiddleware:
    """Checks `Authorization: Bearer KEY` on /v1/* and KEYED_PATHS (less the `public_paths`)
    before anything else reads the request."""

    def __init__(self, app, store: KeyStore, public_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.store = store
        self.keyed_paths = KEYED_PATHS - public_paths

    def _needs_key(self, path: str) -> bool:
        return path.startswith("/v1/") or path in self.keyed_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self.store.is_open and self._needs_key(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, presented = header.partition(" ")
            key = self.store.find(presented.strip()) if scheme.lower() == "bearer" else None
            if key is None:
                error = APIError(ErrorKind.INVALID_API_KEY, "missing or invalid API key: send Authorization: Bearer KEY")
                await error.response()(scope, receive, send)
                return
            if scope["path"] == METRICS_PATH and not key.metrics:
                error = APIError(ErrorKind.METRICS_NOT_ALLOWED, "this API key may not read /metrics: mark it with "
                                 "metrics = true in the keys file")
                await error.response()(scope, receive, send)
                return
            scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def api_key_of(request: Request) -> ApiKey | None:
    return getattr(request.state, "api_key", None)


def check_model_allowed(key: ApiKey | None, model: str) -> None:
    if key is not None and not key.may_use(model):
        raise APIError(ErrorKind.MODEL_NOT_ALLOWED, f"this API key may not use the model {model!r}", "model")
