"""Wires the stages: manifest → shards → batches → executor (fetch + process + store) → catalog.

The runner lives in the parent process. It checks the run's fingerprint against the
catalog (resume or refuse: ``resume.py``), streams the rows that still need work to the
executor in batches (``todo.py``, schedule/batches.py), commits finished rows every half
second with the done marks of the shards they complete (``commits.py``), and reports
progress through a callback (``progress.py``), so that the CLI, a notebook or a script can
show it however they like. ``drive.py`` holds ``run()``, the Python API, and the wiring.
"""

from pipeline.runner.drive import build_config, run, run_config
from pipeline.runner.progress import Progress, ProgressCallback, RunSummary

__all__ = ["Progress", "ProgressCallback", "RunSummary", "build_config", "run", "run_config"]
