"""Rows on Ray: one long-lived actor per CPU, each running the local worker's row loop.

The only module that imports ray (``pip install 'pipeline[ray]'``); ``executors.make_executor``
imports it only when ``--executor ray`` is asked for, and a missing ray is a usage error
(exit 2), never a silent fall-back to the local pool.

Why actors and not a task per batch: a task holds its CPU until its last row ends, so a URL
that never answers (~46 s with retries) idled a whole Ray worker, the starvation of issue 10
that the local executor no longer has. An actor (``RowWorker``, ``num_cpus=1``) is a worker
process like a local one: it keeps its asyncio loop, aiohttp session and thread pool for the
whole run, and its two methods are the local worker protocol, ``feed`` → ``feed_rows`` (start
a batch, return once the process wants more rows, with the rows finished meanwhile) and
``collect`` → ``collect_rows``. A row stuck on a silent server holds one download slot of one
actor and one place in the window, nothing more.

Measured (``bench/ray_overhead.py``, 2-CPU local Ray on a busy 2-core machine): 2,000 rows
with 20 URLs that never answer (``--silent-every 100 --timeout 5``) took 177 s with a task per
batch, 39 s with actors, 38 s with the local pool. On uniform fast rows actors and tasks use
the same CPU per row (10-12 ms); actors add their start-up, 2-4 s per run here (a fresh worker
process each, killed at the end), which a long cluster run does not notice.

The driver keeps exactly one call outstanding per actor (an actor runs its calls one at a
time, so a second one would only queue behind the first) and knows the rows each actor holds
(handed out, not yet reported). An idle actor gets the next batch while the rows held by all
actors stay under the window (``executors.window_rows``, rows, not shards), else a collect if
it holds rows; it ``ray.wait``s over the outstanding calls and ticks (an empty ``Finished``)
every ``TICK_S`` so the runner commits while everything waits on slow servers. A collect
answers within ``COLLECT_WAIT_S`` even with nothing finished, so an actor whose remaining rows
all hang can be fed as soon as the window has room. The run's config crosses once
(``ray.put``), to each actor's constructor, not with every batch.

A new actor is sent nothing but a ``pid`` probe until it answers: on a cluster with no free
CPU it may wait to be scheduled for ever, and it must not hold rows meanwhile. An actor whose
constructor fails (``pipeline`` missing on its node) stops the run with a usage error: its
replacement would fail the same way.

Faults. An actor that dies (SIGKILL, OOM killer, its node lost, unreachable) is killed for
good, a new one takes its place (the number of actors stays), and each row it held gets one
more death to its name; a row with ``max_attempts`` deaths becomes an ``internal`` failure
(``ray: <reason> (tried N times)``), the others run again. Nothing is dropped, and nothing is
reported twice: the dead actor's handle is gone with it. Ray's own retries are off
(``max_restarts=0``, ``max_task_retries=0``): a restarted actor would have lost its rows
anyway, and one budget, counted here, covers every kind of death. A ``PipelineError`` raised
in an actor (e.g. ``StorageError``: OUT cannot be written) stops the run, as with the local
pool.

Deaths are counted per row held, not narrowed down as ``LocalExecutor`` does (rerun the
rows out one batch at a time, halve a batch that kills alone). On a cluster a death is
usually a lost node or an OOM kill, which says nothing about the rows held, and running the
survivors one batch at a time would let a single hanging URL among them idle an actor again.
The price is paid only for a row that itself crashes the process (a decoder crash): every
row held with it at a death loses one attempt too. Rows of a dead actor go back one source
per batch, so they spread over the actors instead of travelling with the killer; a bystander
fails only if it was held with it at all ``max_attempts`` deaths.

Every node must have ``pipeline`` (same version) installed, and its own credentials for
the object store (instance role, ``AWS_*`` variables): the driver sends none.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import RunConfig
from pipeline.errors import PipelineError, UsageError
from pipeline.models import ManifestRow, Shard
from pipeline.schedule.batches import batches
from pipeline.schedule.executors import TICK_S, window_rows
from pipeline.worker.items import failed_items
from pipeline.worker.loop import Finished
from pipeline.worker.protocol import collect_rows, feed_rows

# A collect answers after this long even with no row finished, so that the driver can feed an
# actor whose remaining rows all wait on silent servers as soon as the window has room again.
COLLECT_WAIT_S = 1.0
# At the end of a run, how long to wait for killed actors to be gone (their outstanding calls
# fail once they are), so none still writes into OUT when the runner clears its temp files.
KILL_WAIT_S = 5.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(
            f"--executor ray needs Ray, which is not installed ({exc}): pip install 'pipeline[ray]'"
        ) from None
    return ray


class RowWorker:
    """A Ray actor: one worker process, the same row loop as a local pool process."""

    def __init__(self, config: RunConfig) -> None:
        self._config = config

    def pid(self) -> int:
        """Answers once the actor runs (the driver feeds it nothing before)."""
        return os.getpid()

    def feed(self, batch: Shard) -> Finished:
        return feed_rows(batch, self._config)

    def collect(self, max_wait_s: float) -> Finished:
        return collect_rows(max_wait_s)


class RayExecutor:
    """Run batches of rows on Ray actors, one per CPU of the cluster at ``address`` (None:
    start a local Ray), or ``num_cpus`` actors when given.

    If Ray is already initialised in this process (a notebook, a test), that connection is
    used and left open; a Ray started here is shut down when the run ends. The actors are
    killed when the run ends, however it ends.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        window: int | None = None,
        max_attempts: int = 3,
    ) -> None:
        self._ray = _import_ray()  # fail at once, before the manifest is even opened
        self.address = address
        self.num_cpus = num_cpus
        self.window = window  # rows; None: window_rows(actors, config)
        self.max_attempts = max_attempts

    def run(self, batches: Iterable[Shard], config: RunConfig) -> Iterator[Finished]:
        source = iter(batches)
        started_here = self._connect()
        fleet: _Fleet | None = None
        try:
            first = next(source, None)
            if first is None:
                return  # nothing to run: no actor to start
            actors = self.num_cpus or max(1, int(self._ray.cluster_resources().get("CPU", 1)))
            window = self.window or window_rows(actors, config)
            fleet = _Fleet(self._ray, config, actors, window, self.max_attempts)
            yield from fleet.run(_chain(first, source))
        finally:
            if fleet is not None:
                fleet.stop()
            if started_here:
                self._ray.shutdown()

    def _connect(self) -> bool:
        ray = self._ray
        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
        if self.address is None and self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus  # only a Ray we start can be sized
        try:
            ray.init(address=self.address, **options)
        except ConnectionError as exc:
            raise UsageError(f"cannot connect to Ray at {self.address}: {exc}") from None
        return True


def _chain(first: Shard, rest: Iterator[Shard]) -> Iterator[Shard]:
    yield first
    yield from rest


@dataclass(eq=False)
class _Actor:
    """One actor as the driver sees it."""

    handle: Any
    ready: bool = False  # its pid probe answered: it runs and may be fed
    call: Any = None  # the ObjectRef of its one outstanding call
    fed: Shard | None = None  # the batch that call carries (None: a collect or the probe)
    held: dict[int, ManifestRow] = field(default_factory=dict)  # row -> fed, not reported


class _Fleet:
    """The actors of one run, the rows they hold, and the rows waiting to run again."""

    def __init__(self, ray: Any, config: RunConfig, actors: int, window: int, max_attempts: int) -> None:
        self._ray = ray
        self._shard_size = config.shard_size
        self._window = window
        self._max_attempts = max_attempts
        self._remote = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RowWorker)
        self._config_ref = ray.put(config)
        self._calls: dict[Any, _Actor] = {}  # outstanding call -> its actor
        self._again: deque[Shard] = deque()  # rows of dead actors, to run again first
        self._deaths: dict[int, int] = {}  # row -> actors that died holding it
        self._held = 0  # rows held by all actors together
        self._exhausted = False
        self._actors = [self._start() for _ in range(actors)]

    def run(self, source: Iterator[Shard]) -> Iterator[Finished]:
        while True:
            self._dispatch(source)
            if self._exhausted and not self._again and not self._held:
                return
            ready = self._wait()
            if not ready:
                yield Finished()  # a tick: the runner commits what it holds
                continue
            for ref in ready:
                yield self._settle(self._calls.pop(ref), ref)

    def _start(self) -> _Actor:
        actor = _Actor(self._remote.remote(self._config_ref))
        self._call(actor, actor.handle.pid.remote(), None)
        return actor

    def _call(self, actor: _Actor, ref: Any, fed: Shard | None) -> None:
        actor.call, actor.fed = ref, fed
        self._calls[ref] = actor

    def _dispatch(self, source: Iterator[Shard]) -> None:
        """Give every idle actor its next call: a batch while the window has room, else a
        collect if it holds rows (an idle actor holding nothing stays idle: no spinning)."""
        for actor in self._actors:
            if actor.call is not None or not actor.ready:
                continue
            batch = self._next_batch(source) if self._held < self._window else None
            if batch is not None:
                actor.held.update((row.row, row) for row in batch.rows)
                self._held += len(batch.rows)
                self._call(actor, actor.handle.feed.remote(batch), batch)
            elif actor.held:
                self._call(actor, actor.handle.collect.remote(COLLECT_WAIT_S), None)

    def _next_batch(self, source: Iterator[Shard]) -> Shard | None:
        if self._again:
            return self._again.popleft()
        if self._exhausted:
            return None
        batch = next(source, None)
        self._exhausted = batch is None
        return batch

    def _wait(self) -> list[Any]:
        refs = list(self._calls)
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=TICK_S)
        if ready:  # take every answer that is in, not one per loop
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def _settle(self, actor: _Actor, ref: Any) -> Finished:
        """What ``actor``'s call ended with: its rows, or a death; run-fatal errors raised."""
        ray = self._ray
        fed, actor.call, actor.fed = actor.fed, None, None
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, PipelineError):
                raise cause from None  # run-fatal (e.g. StorageError): stop scheduling
            if fed is None:
                raise  # collect or the probe itself failed: no batch to blame, retrying would loop
            # feed_rows failed before the batch started (a bug): its rows count one attempt.
            return self._lose(actor, fed.rows, f"{type(cause).__name__}: {cause}")
        except ray.exceptions.RayError as exc:  # the actor died, its node was lost, unreachable
            if getattr(exc, "actor_init_failed", False):
                # Its constructor failed (pipeline missing or another version on that node):
                # a replacement would fail the same way, for ever.
                raise UsageError(
                    f"a Ray worker cannot start pipeline's actor ({_first_line(exc)}): "
                    "every node needs pipeline installed, same version"
                ) from None
            return self._replace(actor, f"ray: {type(exc).__name__}: {_first_line(exc)}")
        if not actor.ready:
            actor.ready = True  # the probe: from now on it is fed
            return Finished()
        return self._accept(actor, answer)

    def _accept(self, actor: _Actor, finished: Finished) -> Finished:
        items = [item for item in finished.items if actor.held.pop(item.row, None) is not None]
        self._held -= len(items)
        return Finished(items, finished.worker_pid)

    def _replace(self, actor: _Actor, reason: str) -> Finished:
        """``actor`` is dead or unreachable: make sure it stays dead, start another in its
        place, and count a death against every row it held."""
        index = self._actors.index(actor)
        self._kill(actor)
        self._actors[index] = self._start()
        return self._lose(actor, list(actor.held.values()), reason)

    def _lose(self, actor: _Actor, rows: Iterable[ManifestRow], reason: str) -> Finished:
        """``rows`` came to nothing on ``actor``: one more attempt each; those at
        ``max_attempts`` fail as ``internal``, the others wait to run again."""
        again: list[ManifestRow] = []
        out: list[ManifestRow] = []
        for row in rows:
            if actor.held.pop(row.row, None) is None:
                continue  # reported already
            self._held -= 1
            self._deaths[row.row] = tries = self._deaths.get(row.row, 0) + 1
            (again if tries < self._max_attempts else out).append(row)
        self._requeue(again)
        return Finished(failed_items(out, f"{reason} (tried {self._max_attempts} times)"))

    def _requeue(self, rows: list[ManifestRow]) -> None:
        # One source per batch: they spread over the actors rather than stay together with a
        # row that kills its process (a source's rows stay together: it is fetched once).
        by_shard: dict[int, list[ManifestRow]] = {}
        for row in rows:
            by_shard.setdefault(row.row // self._shard_size, []).append(row)
        for shard_id, same in by_shard.items():
            self._again.extend(batches(same, shard_id, 1))

    def _kill(self, actor: _Actor) -> None:
        with contextlib.suppress(Exception):  # already gone, or Ray is going away: nothing to stop
            self._ray.kill(actor.handle, no_restart=True)

    def stop(self) -> None:
        """Kill every actor (rows still out have committed nothing: the rerun runs them) and
        wait, bounded, until their calls fail, i.e. until they no longer write."""
        for actor in self._actors:
            self._kill(actor)
        refs = list(self._calls)
        self._calls.clear()
        if refs:
            with contextlib.suppress(Exception):  # Ray is going away anyway; the kills are sent
                self._ray.wait(refs, num_returns=len(refs), timeout=KILL_WAIT_S)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
