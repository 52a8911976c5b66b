"""The scheduler inside `voms serve`: each job on its cron schedule, in a thread.

Every process runs one; the lease and the slot recorded with it (see runner.py) make
each cron slot run once across processes and hosts. A job still running here when its
next slot comes is not started twice: that slot is skipped.
"""

import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services.housekeeping import reencryption, runner
from voms.services.housekeeping.registry import JOBS, next_run, schedules

log = logging.getLogger("voms.scheduler")
MAX_SLEEP_S = 30.0


class Scheduler:
    """Start with :meth:`start`, stop with :meth:`stop` (the app's lifespan does both)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.schedules = {
            name: expr
            for name, expr in schedules(rt.settings.job_schedules).items()
            if expr is not None
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=len(JOBS), thread_name_prefix="voms-job")
        self._running: dict[str, Future[None]] = {}
        self.next_due: dict[str, datetime] = {}
        self._keys_mtime: float | None = None

    def start(self) -> None:
        now = utcnow()
        self.next_due = {name: next_run(expr, now) for name, expr in self.schedules.items()}
        self._thread = threading.Thread(target=self._loop, name="voms-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduler started: %s", ", ".join(sorted(self.schedules)) or "no jobs")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        # Running jobs stop at their next chunk only if the process ends; wait briefly.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tick(self, now: datetime) -> list[str]:
        """Start every job whose slot has come; returns the names started here."""
        started = []
        for name, due in list(self.next_due.items()):
            if due > now:
                continue
            self.next_due[name] = next_run(self.schedules[name], now)
            busy = self._running.get(name)
            if busy is not None and not busy.done():
                continue
            try:
                claimed = runner.claim(self.rt, name, "schedule", slot=due)
            except runner.JobBusy:
                continue
            except Exception:
                log.exception("job %s: could not claim its lease", name)
                continue
            self._running[name] = self._pool.submit(self._execute, claimed)
            started.append(name)
        return started

    def _execute(self, claimed: runner.Claim) -> None:
        result = runner.execute(self.rt, claimed)
        level = logging.INFO if result["outcome"] == "succeeded" else logging.ERROR
        log.log(
            level,
            "job %s %s: %d rows%s",
            claimed.job,
            result["outcome"],
            result["rows_affected"],
            f" ({result['error']})" if result["error"] else "",
        )

    def _refresh_keys(self) -> None:
        """After `voms keys rotate`, load the new key file (exports need the new key)."""
        try:
            mtime = self.rt.settings.resolved_keys_file().stat().st_mtime
        except OSError:
            return
        if self._keys_mtime is not None and mtime != self._keys_mtime:
            reencryption.current_keyring(self.rt)
            log.info("key file changed: keys reloaded")
        self._keys_mtime = mtime

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = utcnow()
            try:
                self._refresh_keys()
                self.tick(now)
            except Exception:
                log.exception("scheduler tick failed")
            soonest = min(self.next_due.values(), default=None)
            wait = MAX_SLEEP_S if soonest is None else (soonest - utcnow()).total_seconds()
            self._stop.wait(min(MAX_SLEEP_S, max(0.5, wait)))


def lifespan(rt: Runtime) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the scheduler runs while the app serves."""

    @asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        scheduler = Scheduler(rt)
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    return run
