"""How a command ends: library errors as ``Error: …`` and exit codes, Ctrl-C, a reader that leaves."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click

from pipeline.errors import PipelineError, UsageError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_FAILURES, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to ``Error: …`` and the documented exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("\nInterrupted: finished shards are saved; rerun the same command to resume.", err=True)
            _exit_interrupted()
        except UsageError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except PipelineError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _exit_interrupted() -> None:
    """Exit 130 once a Ctrl-C has unwound the command (rows committed, workers killed, temp
    files removed, catalog closed), skipping the interpreter's teardown when this is the
    process's own command: the process pools the interrupt abandoned race CPython's exit hook
    (3.11 writes to a pool's wake-up pipe while the pool's thread closes it, and printed an
    EBADF traceback after a clean interrupt). In a test runner (its own streams), a plain
    ``SystemExit``."""
    if not isinstance(sys.stderr, _QuietWhenClosed):
        sys.exit(EXIT_INTERRUPTED)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def second_interrupt_exits() -> Iterator[None]:
    """First Ctrl-C: unwind cleanly (workers stopped, temp files removed, catalog closed,
    exit 130). A second one while that happens: kill the workers and exit at once; the
    catalog stays consistent (SQLite rolls back an open transaction) and the next run
    clears any temp file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def immediately(signum: int, frame: object) -> None:
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(EXIT_INTERRUPTED)

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, immediately)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    except KeyboardInterrupt:
        raise  # `immediately` stays installed until the process exits
    except BaseException:
        signal.signal(signal.SIGINT, previous)
        raise
    signal.signal(signal.SIGINT, previous)


class _QuietWhenClosed:
    """A standard stream that, once its reader has gone (EPIPE), sends the rest to /dev/null.

    `pipeline run … | head -1` must not turn a finished run into exit 1 and a traceback, nor
    stop the command half way (a run's exit 3, dedup's report). Python ignores SIGPIPE, so a
    write to a closed pipe raises BrokenPipeError; restoring SIGPIPE's default instead, as `ls`
    has it, would also kill the process on a peer's closed socket.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        # Python's docs (signal, "Note on SIGPIPE"): point the descriptor at /dev/null, so the
        # buffered rest and the flush at exit go nowhere instead of raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_when_reader_leaves() -> None:
    """Wrap the process's own stdout and stderr (never a test runner's stand-ins) once."""
    if sys.stdout is not None and sys.stdout is sys.__stdout__:
        sys.stdout = _QuietWhenClosed(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None and sys.stderr is sys.__stderr__:
        sys.stderr = _QuietWhenClosed(sys.stderr)  # type: ignore[assignment]
