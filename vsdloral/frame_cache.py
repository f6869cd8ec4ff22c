"""A small bounded, thread-safe LRU cache that computes each missing key once.

Used by the VapourSynth filter to keep the last few prepared (VAE-encoded) frames, so that a
sequential render encodes every frame once even though each output frame needs two inputs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class _Pending:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value = None
        self.error: BaseException | None = None


class FrameCache(Generic[V]):
    """LRU cache of at most ``maxsize`` values. :meth:`get` computes a missing value with
    ``compute()``; concurrent requests for a key being computed wait for that result instead of
    computing it again (per-key in-flight guard). ``compute`` runs without the cache lock held."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"FrameCache: maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """Return the cached value for ``key``, computing (once) and storing it if missing."""
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    self.hits += 1
                    return self._data[key]
                pending = self._pending.get(key)
                owner = pending is None
                if owner:
                    pending = self._pending[key] = _Pending()
                    self.misses += 1
            if owner:
                break
            pending.event.wait()
            if pending.error is None:
                return pending.value  # type: ignore[return-value]
            # the owner failed: try ourselves (raises the same error again if it is not transient)
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.error = exc
            pending.event.set()
            raise
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
            del self._pending[key]
        pending.value = value
        pending.event.set()
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
