"""The ``pipeline`` command: a thin click client of the ``pipeline`` library.

This package is the only importer of click (and cloup, its help in sections); the library
works without it. Library errors become a one-line ``Error: …`` and an exit code in one
place (``exits.py``):

  0    done
  1    internal error (a bug: please report it with the traceback), OUT cannot be
       written, or the manifest is cut short (rows before the cut are committed)
  2    usage error, unreadable manifest, a refused resume, OUT in use by another run, or
       workers that die while starting (run() from a script without the __main__ guard)
  3    done, but the failure rate is above --max-failure-rate (run), or partitions are
       missing or unfinished (merge)
  130  interrupted (Ctrl-C); rerun the same command to resume

A reader that stops early (``pipeline export OUT | head -1``) is not a failure: what follows
goes to /dev/null, the command finishes its work and exits with the code above.

Modules: ``commands.py`` (the commands and their bodies), ``options.py`` (the options, declared
once each, in help sections), ``output.py`` (progress, summaries), ``exits.py`` (errors, exit
codes, Ctrl-C, a closed stdout).
"""

from pipeline.cli.commands import main

__all__ = ["main"]
