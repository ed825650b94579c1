"""Work handed to threads of its own while the caller goes on (uploads, encoding files): leaving
the block waits for all of it, and the first piece that failed raises there. After a failure
inside the block, what has not started yet is dropped."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Background:
    def __init__(self, threads: int, name: str):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._pending: list[Future] = []

    def submit(self, work: Callable[..., object], *args: object) -> None:
        self._pending.append(self._pool.submit(work, *args))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        if exc_type is None:
            for done in self._pending:
                done.result()
