"""The response cache (``FOCUS_CACHE_MB``; off by default), Triton's response cache in spirit.

A key names everything the answer depends on: the task, the model version (the repository
version directory *and* focus.json's version string), the SHA-256 of the image bytes and every
query parameter of the request (sorted; so a parameter added to /segment later is part of the
key without touching this module). Entries are evicted least recently used first, by bytes.

It lives on the event loop only (no lock): lookups and stores happen between awaits.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from service.metrics import Metrics

_ENTRY_OVERHEAD = 256  # bytes per entry beyond its content: key, headers, bookkeeping


@dataclass(frozen=True)
class CachedResponse:
    content: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...]  # the original response's headers worth replaying

    @property
    def size(self) -> int:
        return len(self.content) + sum(len(k) + len(v) for k, v in self.headers) + _ENTRY_OVERHEAD


def cache_key(
    task: str,
    repository_version: int,
    card_version: str,
    image: bytes,
    params: Iterable[tuple[str, str]],
) -> str:
    """The key of one request; equal keys mean byte-identical answers."""
    digest = hashlib.sha256(image).hexdigest()
    query = "&".join(f"{k}={v}" for k, v in sorted(params))
    return f"{task}\x00{repository_version}\x00{card_version}\x00{digest}\x00{query}"


class ResponseCache:
    """An LRU of encoded responses bounded by ``max_bytes`` (the sum of entry sizes)."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        if max_bytes <= 0:
            raise ValueError("a response cache needs a positive size")
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self.bytes = 0
        metrics.cache_bytes.set(0)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, task: str) -> CachedResponse | None:
        """The cached response (now the most recently used), or None; counts hit or miss."""
        found = self._entries.get(key)
        if found is None:
            self.metrics.cache_misses.labels(task=task).inc()
            return None
        self._entries.move_to_end(key)
        self.metrics.cache_hits.labels(task=task).inc()
        return found

    def put(self, key: str, response: CachedResponse) -> bool:
        """Store ``response``, evicting the least recently used; False if it can never fit."""
        size = response.size
        if size > self.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        while self._entries and self.bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
        self._entries[key] = response
        self.bytes += size
        self.metrics.cache_bytes.set(self.bytes)
        return True
