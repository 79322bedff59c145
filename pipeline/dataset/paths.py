"""Where a run's dataset goes: its folder, the shards' extensions, the stats file, and the folder workers write image files to."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig, is_url

DATASET_DIR = "dataset"
STATS_NAME = "_stats.json"
EXTENSIONS = {"webdataset": "tar", "parquet": "parquet"}


def dataset_dir(out: Path | str) -> Path | str:
    """Where a run's shards go: ``OUT/dataset/`` (beside the catalog and the image files of a
    local OUT, so a reader given the folder sees shards only; the same under a URL)."""
    return f"{out}/{DATASET_DIR}" if isinstance(out, str) else Path(out) / DATASET_DIR


def files_root(config: RunConfig, catalog_file: Path) -> Path | str:
    """Where workers write image files: OUT, or for a dataset on an object store a local
    folder beside the catalog (``<catalog stem>-files``), packed from there by the parent."""
    if config.output_format == "files" or not is_url(config.out):
        return config.out
    return catalog_file.parent / f"{catalog_file.stem}-files"
