"""Each key's share of the engine's sequences: at most `per_key` sequences (a request's n choices
each) of one key in flight at once, so that one key's requests never take every sequence the
engine runs and starve the others' (its n is bounded apart, per request: rillet/api/pipeline.py).

A request over its key's share waits, in order with its key's other waiting requests, until its
key's earlier requests end; it waits in the admission queue, under its bounds and its timeout
(rillet/api/admission.py). An open server has no keys to tell its clients apart: no share applies.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Share:
    """The sequences one request holds of its key's share, once acquired; release() is idempotent."""
    shares: KeyShares | None
    key_id: str | None
    num_seqs: int
    held: bool = False

    async def acquire(self) -> None:
        if self.shares is not None and self.key_id is not None and not self.held:
            await self.shares.acquire(self)

    def release(self) -> None:
        if self.held:
            self.shares.release(self)


class KeyShares:
    def __init__(self, per_key: int | None) -> None:
        self.per_key = per_key
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[Share, asyncio.Future]]] = {}

    def claim(self, key_id: str | None, num_seqs: int) -> Share:
        """A share for a request of `num_seqs` sequences; none applies on an open server (key None)."""
        return Share(self if self.per_key and key_id is not None else None, key_id, num_seqs)

    def held_by(self, key_id: str) -> int:
        return self._held.get(key_id, 0)

    async def acquire(self, share: Share) -> None:
        queue = self._waiting.setdefault(share.key_id, deque())
        if not queue and self._fits(share):
            self._take(share)
            return
        granted = asyncio.get_running_loop().create_future()
        queue.append((share, granted))
        try:
            await granted
        except BaseException:
            if share.held:  # granted as it was cancelled
                self.release(share)
            else:
                with contextlib.suppress(ValueError):  # already taken off by _grant, which skips it
                    queue.remove((share, granted))
                self._grant(share.key_id)  # the requests behind it may fit now
            raise
        finally:
            if not queue:
                self._waiting.pop(share.key_id, None)

    def release(self, share: Share) -> None:
        share.held = False
        left = self._held[share.key_id] - share.num_seqs
        if left:
            self._held[share.key_id] = left
        else:
            del self._held[share.key_id]
        self._grant(share.key_id)

    def _fits(self, share: Share) -> bool:
        return self.held_by(share.key_id) + share.num_seqs <= self.per_key

    def _take(self, share: Share) -> None:
        self._held[share.key_id] = self.held_by(share.key_id) + share.num_seqs
        share.held = True

    def _grant(self, key_id: str) -> None:
        """Lets in the key's waiting requests, in order, while the first of them fits."""
        queue = self._waiting.get(key_id)
        while queue and self._fits(queue[0][0]):
            share, granted = queue.popleft()
            if not granted.done():
                self._take(share)
                granted.set_result(None)
