"""The worker stage: rows inside one worker process, each fetched, processed and reported as it ends.

One job per module, from the parent's call down to one row::

    protocol.py   the calls a parent makes: init_worker, ready, feed_rows, collect_rows, run_shard
    loop.py       the process's row loop: an event loop on its own thread, the rows it holds,
                  when a feed or collect call answers (Finished: what a call hands back)
    rows.py       one source of a batch: admitted, fetched (or read from disk), processed on a
                  CPU thread, reported; failures of a row's own code become its rows' failures
    items.py      a source's outcome as ItemResults: status from error class, invalid and
                  internal rows
    resources.py  what a process keeps for the whole run: aiohttp session, CPU threads,
                  admission per kind of source, the store

Inside, one asyncio loop with one aiohttp session per process (both kept for the whole run)
downloads each batch's unique sources (up to ``--concurrency`` in flight, paced by
net/admission.py) and hands each body to a small thread pool for the Pillow work. Pillow
releases the GIL while it decodes, resizes and encodes to a file, so the loop keeps
downloading while the threads use the core (measured: docs/design.md).

The loop runs on a thread of its own, so a process holds many batches at once and the
pool's call returns as soon as the process is about to run out of rows to start: every
process pulls work at its own pace, and a row waiting on a silent server holds one download
slot, nothing more (issue 10; docs/design.md, "Rows, not shards, hold the machine").

The parent imports ``protocol`` (the executors) and ``items.invalid_item`` (the runner);
aiohttp and Pillow are imported only inside the functions that run in a worker. Names with a
leading underscore are private to this package. This file imports nothing.
"""
