"""The asyncio patterns the daemon repeats, written once: wait for the first of several
things (a stop among them), run work unless stopped, bounded concurrency, time limits on
the injected Clock, and background tasks whose failure is never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import structlog

from watcher.clock import Clock

_T = TypeVar("_T")
_K = TypeVar("_K")

log = structlog.get_logger(__name__)


class Stopped(Exception):
    """The stop event was set before the work finished; the work was cancelled."""


async def first_of(*waits: Awaitable[Any], among: Iterable[asyncio.Future[Any]] = ()) -> None:
    """Return once any of `waits` (coroutines, started here and cancelled on the way out)
    or of `among` (futures owned by the caller, left running) is done."""
    started = {asyncio.ensure_future(w) for w in waits}
    try:
        await asyncio.wait(started | set(among), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in started:
            future.cancel()
        await asyncio.gather(*started, return_exceptions=True)


async def sleep_or_stop(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    """Sleep `seconds` on `clock`, returning early once `stop` is set."""
    await first_of(clock.sleep(seconds), stop.wait())


async def unless_stopped(work: Coroutine[Any, Any, _T], stop: asyncio.Event) -> _T:
    """Await `work`, or cancel it and raise Stopped as soon as `stop` is set."""
    if stop.is_set():
        work.close()  # never started, so never awaited
        raise Stopped
    task = await _unless(work, stop.wait())
    if task.cancelled():
        raise Stopped
    return task.result()


class Timeout(Exception):
    """`within` ran out of clock seconds."""


async def within(clock: Clock, seconds: float, work: Awaitable[_T]) -> _T:
    """Await `work` for at most `seconds` on `clock`; raise Timeout when they pass first.
    On a ManualClock the limit passes only when the test advances the clock."""
    task = await _unless(work, clock.elapse(seconds))
    if task.cancelled():
        raise Timeout(f"timed out after {seconds:g}s")
    return task.result()


async def _unless(work: Awaitable[_T], cutoff: Awaitable[Any]) -> asyncio.Future[_T]:
    """`work` run until it is done or `cutoff` comes first (then cancelled), and awaited
    to its end either way; the finished future."""
    task = asyncio.ensure_future(work)
    try:
        await first_of(cutoff, among=[task])
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return task


async def bounded_map(
    limit: int, fn: Callable[[_K], Awaitable[_T]], items: Sequence[_K]
) -> list[_T]:
    """`fn` over `items`, at most `limit` at a time, results in order. The first failure
    cancels the rest and is raised as itself (not as an ExceptionGroup)."""
    if not items:
        return []
    gate = asyncio.Semaphore(limit)

    async def one(item: _K) -> _T:
        async with gate:
            return await fn(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def guarded_task(work: Coroutine[Any, Any, _T], *, name: str) -> asyncio.Task[_T]:
    """A background task whose failure is logged (`background_task_died`, with its
    traceback) when it happens, not when (or if) someone awaits it: a task that dies
    while the daemon shuts down is seen too."""
    task = asyncio.create_task(work, name=name)

    def report(done: asyncio.Task[_T]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.error("background_task_died", task=name, error=repr(exc), exc_info=exc)

    task.add_done_callback(report)
    return task
