"""What a job function gets: the runtime, the time it runs for, and a chunk callback."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from voms.runtime import Runtime


@dataclass
class JobContext:
    """A job commits its work chunk by chunk and calls :meth:`chunk_done` after each.

    ``chunk_done`` renews the job's lease, records progress in the run's history row,
    and may stop the job (the lease was lost, or a caller's progress hook raised): a
    job must therefore leave the database consistent after every chunk it commits.
    """

    rt: Runtime
    now: datetime
    chunk_size: int
    on_chunk: Callable[[int], None] = lambda rows: None
    detail: dict[str, Any] = field(default_factory=dict)

    def chunk_done(self, rows: int) -> None:
        self.on_chunk(rows)
