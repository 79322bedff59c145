"""pipeline: download image URLs and turn them into thumbnails, hashes and a catalog.

The library works without the CLI::

    from pipeline import run
    summary = run("manifest.csv", out="manifest.pipeline", procs=4)
"""

__version__ = "0.1.0"
