"""A role's service (an async context manager) run in an event loop of its own thread, for a
benchmark or a test that drives it from outside."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def serve_in_thread(
    enter: Callable[[], AbstractAsyncContextManager[T]], what: str, start_timeout: float = 30.0
) -> Iterator[tuple[T, asyncio.AbstractEventLoop]]:
    """Enter ``enter()`` in an event loop of its own thread and keep it entered until the
    block ends; a failure to start is raised here, a failure to stop reports every task."""
    ready: list[tuple[T, asyncio.AbstractEventLoop]] = []
    failure: list[BaseException] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        try:
            async with enter() as running:
                ready.append((running, asyncio.get_running_loop()))
                started.set()
                await stop[0].wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name=what, daemon=True)
    thread.start()
    if not started.wait(start_timeout):
        raise RuntimeError(f"{what} did not start within {start_timeout:.0f} s")
    if failure:
        raise failure[0]
    loop = ready[0][1]
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError(f"{what} did not stop:\n{_where_it_hangs(loop)}")


def _where_it_hangs(loop: asyncio.AbstractEventLoop) -> str:
    """Every pending task of ``loop`` and every thread, with their stacks: what a service
    that does not stop is waiting for."""

    async def tasks() -> str:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                print(f"task {task.get_name()}:", file=out)
                task.print_stack(file=out)
        return out.getvalue()

    try:
        report = asyncio.run_coroutine_threadsafe(tasks(), loop).result(5)
    except Exception as exc:  # the loop itself may be stuck
        report = f"(tasks unavailable: {exc!r})\n"
    for ident, frame in sys._current_frames().items():
        report += f"thread {ident}:\n" + "".join(traceback.format_stack(frame)[-6:])
    return report
