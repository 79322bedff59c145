"""The network stage: URLs in, bodies or explained failures out, safely and politely.

One job per module, roughly in the order a URL meets them::

    admission.py  whether a worker may start another download (in flight; bodies awaiting the CPU)
    fetch.py      one URL -> one FetchResult: attempts, retries, reading the body (the entry point)
    session.py    the aiohttp session: connector, guarded resolver, timeouts, per-hop trace hooks
    guard.py      the SSRF guard: which addresses a fetch may connect to
    hostlimit.py  per-host limits in a process: waiting for a host slot (HostGate, Hold)
    hosttable.py  the machine-wide per-host table in shared memory
    retry.py      full-jitter backoff, Retry-After, each host's cool-down
    budget.py     the body budget of a process (BodyLease)
    headers.py    Retry-After, X-Robots-Tag, Content-Type
    outcome.py    what one attempt got (_Reached, _AttemptResult)
    errors.py     failures as data: an exception or HTTP status -> ErrorClass and message

aiohttp is imported here only, at run time by session.py and errors.py (elsewhere for type
hints only); yarl, its URL type, by session, retry and headers. Names with a leading
underscore are private to this package. This file imports nothing, so that a part (the host
table in the parent, admission) loads without aiohttp.
"""
