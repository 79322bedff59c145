"""Scheduling, in the parent: the row stream cut into shards and batches, run by an executor.

One job per module, roughly in the order rows meet them::

    shards.py        rows -> shards with deterministic ids (resume, partitions, done marks)
    batches.py       a shard's rows -> batches of <= 32 rows, a source's rows kept together
    tracker.py       which shards still wait for rows; which a set of finished rows completes
    executors.py     the local executor: batches fed to a spawn process pool, a window of rows
    ray_executor.py  the Ray executor: one long-lived actor per CPU, fed the same way
    hostsort.py      offline: a manifest's rows grouped by host, streamed (``pipeline group-by-host``)

The executors call the worker protocol (``pipeline.worker.protocol``) and never touch the
catalog. ray is imported by ``ray_executor.py`` only, and that module only when ``--executor
ray`` is asked for. Names with a leading underscore are private to their module. This file
imports nothing.
"""
