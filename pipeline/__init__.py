"""pipeline: download image URLs and turn them into thumbnails, hashes and a catalog.

The library works without the CLI::

    from pipeline import run
    summary = run("manifest.csv", out="manifest.pipeline", procs=4)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "export", "run"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a small module (errors, models) does not pull in aiohttp and Pillow.
    if name == "run":
        from pipeline.runner import run

        return run
    if name == "export":
        from pipeline.catalog_export import export

        return export
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
