"""The per-process read cache: no stampede when an entry expires, never a stale answer."""

import threading
import time

import pytest

from tests.factories import Clock
from voms.caching import ReadCache


def test_a_value_is_loaded_once_and_kept_for_its_ttl() -> None:
    clock = Clock()
    cache = ReadCache[str](10, clock=clock)
    loads: list[str] = []

    def load() -> str:
        loads.append("x")
        return f"v{len(loads)}"

    assert cache.get("k", load) == "v1"
    clock.now += 4.9
    assert cache.get("k", load) == "v1"
    clock.now += 5.2  # past the ttl: never answered from the cache
    assert cache.get("k", load) == "v2"
    assert len(loads) == 2


def test_from_half_its_life_one_caller_refreshes_while_the_others_keep_the_value() -> None:
    clock = Clock()
    cache = ReadCache[str](10, clock=clock)
    cache.get("k", lambda: "old")
    clock.now += 6
    refreshing = threading.Event()
    release = threading.Event()

    def slow_load() -> str:
        refreshing.set()
        release.wait(5)
        return "new"

    refresher = threading.Thread(target=cache.get, args=("k", slow_load))
    refresher.start()
    assert refreshing.wait(5)
    # While the refresh runs, others answer at once from the entry and start no load.
    assert cache.get("k", lambda: pytest.fail("a second refresh")) == "old"
    entry, refresh = cache.lookup("k")
    assert entry is not None
    assert (entry.value, refresh) == ("old", False)
    release.set()
    refresher.join(5)
    assert cache.get("k", lambda: pytest.fail("loaded again")) == "new"
    clock.now += 4.9  # the refresh restarted the entry's life
    assert cache.get("k", lambda: pytest.fail("refreshed early")) == "new"
    clock.now += 5
    entry, refresh = cache.lookup("k")
    assert entry is not None
    assert (entry.value, refresh) == ("new", True)


def test_an_expired_entry_is_loaded_by_one_caller_while_the_others_wait_for_it() -> None:
    cache = ReadCache[int](10)
    loads = 0
    lock = threading.Lock()

    def load() -> int:
        nonlocal loads
        with lock:
            loads += 1
        time.sleep(0.05)
        return 42

    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache.get("k", load))) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert answers == [42] * 16
    assert loads == 1


def test_different_keys_load_side_by_side() -> None:
    cache = ReadCache[str](10)
    both_loading = threading.Barrier(2, timeout=5)

    def load(value: str) -> str:
        both_loading.wait()  # breaks (and fails the test) if the loads ran one by one
        return value

    answers: dict[str, str] = {}
    threads = [
        threading.Thread(target=lambda k=k: answers.update({k: cache.get(k, lambda: load(k))}))
        for k in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert answers == {"a": "a", "b": "b"}


def test_a_failed_load_caches_nothing_and_the_next_caller_loads_again() -> None:
    cache = ReadCache[str](10)

    def broken() -> str:
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        cache.get("k", broken)
    assert cache.lookup("k") == (None, False)
    assert cache.get("k", lambda: "back") == "back"


def test_a_failed_refresh_leaves_the_entry_until_it_expires_and_lets_the_next_caller_retry() -> (
    None
):
    clock = Clock()
    cache = ReadCache[str](10, clock=clock)
    cache.get("k", lambda: "old")
    clock.now += 6

    def broken() -> str:
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        cache.get("k", broken)
    assert cache.get("k", lambda: "new") == "new"


def test_the_cache_holds_at_most_max_entries() -> None:
    cache = ReadCache[int](10, max_entries=3)
    for number in range(10):
        cache.get(number, lambda number=number: number)  # type: ignore[misc]
    assert len(cache._entries) <= 3
    assert cache.get(9, lambda: pytest.fail("the newest entry was dropped")) == 9


def test_callers_asking_for_a_fresh_value_at_once_share_the_loads() -> None:
    clock = Clock()
    cache = ReadCache[int](10, clock=clock)
    cache.get("k", lambda: 0)
    loads = 0
    first_load_running = threading.Event()
    release = threading.Event()

    def load() -> int:
        nonlocal loads
        loads += 1
        first_load_running.set()
        release.wait(5)
        return loads

    clock.now += 1
    first = threading.Thread(target=cache.reload, args=("k", load))
    first.start()
    assert first_load_running.wait(5)
    clock.now += 1
    # These ask while the first load runs: it began before them, so one more load is
    # needed, and one is enough for all of them.
    answers: list[int] = []
    askers = [
        threading.Thread(target=lambda: answers.append(cache.reload("k", load))) for _ in range(8)
    ]
    for asker in askers:
        asker.start()
    time.sleep(0.2)  # they wait for the first load
    release.set()
    first.join(5)
    for asker in askers:
        asker.join(5)
    assert loads == 2
    assert answers == [2] * 8


def test_a_fresh_value_is_loaded_anew_when_the_last_load_began_before_the_call() -> None:
    clock = Clock()
    cache = ReadCache[str](10, clock=clock)
    cache.get("k", lambda: "before")
    clock.now += 0.001
    assert cache.reload("k", lambda: "after") == "after"
