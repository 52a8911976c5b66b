"""Per-process caches of small, rarely changed database reads (API keys, the catalog).

A plain "reload when expired" cache makes a busy process stall when an entry expires:
every request that arrives during the reload finds it expired and reloads it too, and
at hundreds of requests a second those reloads pile up into tens of milliseconds of
latency (seen in ``bench/redeem.py``). A :class:`ReadCache` avoids that twice over:

- **refresh ahead:** from half its life on, the first caller that reads an entry
  reloads it while every other caller keeps using it; a busy process never sees an
  entry expire;
- **single flight:** once an entry has expired (a process idle for a while), one caller
  loads it and the others wait for that load instead of each running their own.

An entry is never used after it expires, so the time bound a cache promises (a revoked
key stops working within five seconds) holds as before.
"""

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class Entry(Generic[V]):
    value: V
    loaded: float  # when its load began
    expires: float
    refresh_at: float


class ReadCache(Generic[V]):
    """Values loaded by the caller, kept ``ttl`` seconds; at most ``max_entries`` of them."""

    def __init__(
        self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[Hashable, Entry[V]] = {}
        self._mutex = threading.Lock()  # guards the two collections below
        self._loads: dict[Hashable, threading.Lock] = {}  # one load of a key at a time
        self._refreshing: set[Hashable] = set()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value: loaded once for all callers when missing or expired, and
        refreshed by this caller when it is the one :meth:`lookup` picks."""
        entry = self._entries.get(key)
        if entry is not None and entry.refresh_at > self._clock():
            return entry.value  # fresh (the usual case): nothing more to decide
        entry, refresh = self.lookup(key)
        if entry is None:
            return self._load_once(key, load)
        if refresh:
            try:
                return self.refresh(key, load)
            finally:
                self.end_refresh(key)
        return entry.value

    def lookup(self, key: Hashable) -> tuple[Entry[V] | None, bool]:
        """The entry while it is valid (else None), and whether this caller is the one to
        refresh it now; that caller must call :meth:`end_refresh` when done."""
        now = self._clock()
        entry = self._valid(key, now)
        if entry is None or entry.refresh_at > now:
            return entry, False
        with self._mutex:
            if key in self._refreshing:
                return entry, False
            self._refreshing.add(key)
            return entry, True

    def end_refresh(self, key: Hashable) -> None:
        with self._mutex:
            self._refreshing.discard(key)

    def refresh(self, key: Hashable, load: Callable[[], V]) -> V:
        """Load ``key`` now and keep the result."""
        began = self._clock()
        value = load()
        if len(self._entries) >= self.max_entries and key not in self._entries:
            self._entries.clear()
        self._entries[key] = Entry(value, began, began + self.ttl, began + self.ttl / 2)
        return value

    def reload(self, key: Hashable, load: Callable[[], V]) -> V:
        """A value read after this call began: callers that ask at the same time share
        one load (what one caller misses, say a voucher type created a moment ago, is
        then read once for all of them, not once each)."""
        asked = self._clock()
        with self._load_lock(key):
            entry = self._entries.get(key)
            if entry is not None and entry.loaded >= asked:
                return entry.value
            return self.refresh(key, load)

    def clear(self) -> None:
        self._entries.clear()

    def _valid(self, key: Hashable, now: float) -> Entry[V] | None:
        entry = self._entries.get(key)
        return entry if entry is not None and entry.expires > now else None

    def _load_once(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._load_lock(key):
            entry = self._valid(key, self._clock())
            if entry is not None:  # loaded while this caller waited
                return entry.value
            return self.refresh(key, load)

    @contextmanager
    def _load_lock(self, key: Hashable) -> Iterator[None]:
        """Held while ``key`` loads: one load of a key at a time. The lock is forgotten
        once free (whoever still waits for it finds the entry loaded)."""
        with self._mutex:
            lock = self._loads.setdefault(key, threading.Lock())
        with lock:
            try:
                yield
            finally:
                with self._mutex:
                    if self._loads.get(key) is lock:
                        del self._loads[key]
