"""Shards as Ray tasks: the same ``run_shard`` on every core of a cluster.

The only module that imports ray (``pip install 'pipeline[ray]'``); ``executors.make_executor``
imports it only when ``--executor ray`` is asked for, and a missing ray is a usage error
(exit 2), never a silent fall-back to the local pool.

Ray schedules; we do not. The driver keeps a bounded window of tasks in flight and takes
results as they finish (``ray.wait``), so neither the driver's memory nor Ray's object store
grows with the manifest. The run's config crosses once (``ray.put``), not with every task.
Results stream back to the driver, which alone writes the catalog (``runner.py``).

A task that fails (an exception in ``run_shard``, a worker killed by the OOM killer, a node
lost with its result) is resubmitted by the driver up to ``max_attempts`` times in all, then
its rows are recorded as ``internal`` failures: a shard is never dropped. Ray's own task
retries are off (``max_retries=0``) so that one budget, counted here, covers both kinds.
A ``PipelineError`` raised by a task (e.g. ``StorageError``: OUT cannot be written) is
fatal for the run, as with the local pool.

Every node must have ``pipeline`` (same version) installed, and its own credentials for
the object store (instance role, ``AWS_*`` variables): the driver sends none.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.config import RunConfig
from pipeline.errors import PipelineError, UsageError
from pipeline.models import Shard, ShardReport
from pipeline.worker import Finished, failed_items, run_shard


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(
            f"--executor ray needs Ray, which is not installed ({exc}): pip install 'pipeline[ray]'"
        ) from None
    return ray


class RayExecutor:
    """Run shards as Ray tasks on the cluster at ``address`` (None: start a local Ray).

    If Ray is already initialised in this process (a notebook, a test), that connection is
    used and left open; a Ray started here is shut down when the run ends.
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
        self.window = window
        self.max_attempts = max_attempts

    def run(self, shards: Iterable[Shard], config: RunConfig) -> Iterator[Finished]:
        ray = self._ray
        started_here = self._connect()
        pending: dict[Any, Shard] = {}
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(run_shard)
            config_ref = ray.put(config)
            window = self.window or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
            source = iter(shards)
            again: deque[Shard] = deque()
            failures: dict[int, int] = {}
            while True:
                while len(pending) < window:
                    shard = again.popleft() if again else next(source, None)
                    if shard is None:
                        break
                    pending[task.remote(shard, config_ref)] = shard
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    shard = pending.pop(ref)
                    report, reason = self._result(ref)
                    if report is None:
                        failures[shard.shard_id] = tries = failures.get(shard.shard_id, 0) + 1
                        if tries < self.max_attempts:
                            again.append(shard)
                            continue
                        yield Finished(failed_items(shard.rows, f"{reason} (tried {tries} times)"))
                        continue
                    yield Finished(report.items, report.fetched, report.bytes_downloaded, report.worker_pid)
        finally:
            for ref in pending:  # an abandoned shard has committed nothing; it reruns next time
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

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

    def _result(self, ref: Any) -> tuple[ShardReport | None, str]:
        """The task's report, or None and why it failed (run-fatal errors re-raised)."""
        ray = self._ray
        try:
            return ray.get(ref), ""
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, PipelineError):
                raise cause from None  # run-fatal (e.g. StorageError): stop scheduling
            return None, f"{type(cause).__name__}: {cause}"
        except ray.exceptions.RayError as exc:  # worker crashed, node died, result lost
            return None, f"ray: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
