"""API keys: who may call /v1/*, and which models each key may use.

Keys are kept only as SHA-256 hashes and compared in constant time. With no key configured
the server is open.
"""
from __future__ import annotations

import hashlib
import hmac
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
            keys += _read_keys_file(Path(keys_file))
        return cls(keys)


def _read_keys_file(path: Path) -> list[ApiKey]:
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("keys", [])
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise KeyConfigError(f"cannot read the keys file {path}: {error}") from None
    keys = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {"id", "key", "key_sha256", "models", "rpm", "tpm"}
        if unknown:
            raise KeyConfigError(f"{path}: keys[{i}] has unsupported settings {sorted(unknown)}")
        if ("key" in entry) == ("key_sha256" in entry):
            raise KeyConfigError(f"{path}: keys[{i}] needs exactly one of key and key_sha256")
        digest = hash_key(entry["key"]) if "key" in entry else bytes.fromhex(entry["key_sha256"])
        models = entry.get("models")
        keys.append(ApiKey(str(entry.get("id", f"file-key-{i + 1}")), digest,
                           None if models is None else frozenset(models),
                           _limit(entry, "rpm", path, i), _limit(entry, "tpm", path, i)))
    return keys


def _limit(entry: dict, name: str, path: Path, index: int) -> int | None:
    value = entry.get(name)
    if value is not None and (type(value) is not int or value < 0):
        raise KeyConfigError(f"{path}: keys[{index}].{name} must be a whole number, 0 for no limit")
    return value


class AuthMiddleware:
    """Checks `Authorization: Bearer KEY` on /v1/* before anything else reads the request."""

    def __init__(self, app, store: KeyStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and not self.store.is_open:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, presented = header.partition(" ")
            key = self.store.find(presented.strip()) if scheme.lower() == "bearer" else None
            if key is None:
                error = APIError(ErrorKind.INVALID_API_KEY, "missing or invalid API key: send Authorization: Bearer KEY")
                await error.response()(scope, receive, send)
                return
            scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def api_key_of(request: Request) -> ApiKey | None:
    return getattr(request.state, "api_key", None)


def check_model_allowed(key: ApiKey | None, model: str) -> None:
    if key is not None and not key.may_use(model):
        raise APIError(ErrorKind.MODEL_NOT_ALLOWED, f"this API key may not use the model {model!r}", "model")
