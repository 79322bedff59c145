"""The dataset stage (issue 14): the run's ok samples as WebDataset tars or Parquet files.

``--output-format webdataset`` packs every ok row into ``00000.tar``, ``00001.tar``, … (zero
padded: ``{00000..00041}.tar`` lists them), ``--samples-per-shard`` samples each, as
``<key>.<ext>`` (the largest thumbnail; ``<key>.<size>.<ext>`` for further sizes,
``<key>.original.<ext>`` when originals are kept), ``<key>.json`` (the catalog row as
``pipeline export`` writes it) and ``<key>.txt`` (``--caption-column``). ``parquet`` writes
``00000.parquet``, … with the same columns plus the bytes (``image``, ``image_<size>``,
``original``). The key is the manifest row number, nine digits or more: unique across the
run (every partition and rerun), stable, and without a dot (WebDataset splits a member's
name at its first dot into key and field).

Who does what. Workers are unchanged: they write thumbnails and originals as files into
a local folder (``files_root``: OUT itself, or beside the catalog for an object-store OUT),
which stays as the thumbnail cache that ``pipeline dedup`` reads. The parent, the single
catalog writer, reads the files of each committed ok row and appends the sample to the
open shard, a local temp file; a full shard is renamed into place (local OUT) or uploaded
whole on a background thread (one object per shard, never one per image), then its members
are recorded in the catalog (``dataset_samples``: row → part; ``dataset_parts``) and
``_stats.json`` is rewritten. At most one finished shard waits for its upload.

A kill loses nothing: rows in the catalog but in no recorded part are packed again at the
next start (in row order, into the next part number); a shard visible but not recorded (a
kill between its rename or upload and its record) is removed at that start, and the temp
file of the open shard is cleared with OUT's temp folder. So every ok row ends in exactly
one listed shard, and no reader sees part of one.

One job per module, in the order a sample meets them::

    writer.py   DatasetWriter, driven by the runner: packs committed rows, hands over full
                shards, records them (dataset_parts, dataset_samples), rewrites _stats.json
    samples.py  one sample: a catalog row's record, caption and image files (Sample, sample_key)
    shards.py   samples into numbered shards: a temp file open at a time, rolled every N samples
    tar.py      a WebDataset shard (TarShard): ustar headers made here, files copied by the kernel
    parquet.py  a Parquet shard (ParquetShard), a row group at a time
    sinks.py    where a finished shard goes: renamed into a folder, or uploaded as one object
    paths.py    where a run's dataset goes (OUT/dataset/), and where workers write image files
    export.py   ``pipeline export --format webdataset``: a catalog as a new dataset, in one go

The runner imports ``writer`` (``DatasetWriter``, ``check_caption``) and ``paths.files_root``; ``pipeline/catalog_export.py`` imports
``export``. pyarrow is imported by ``parquet.py`` only when a Parquet shard is written;
fsspec (through ``pipeline/store/objects.py``) only for a URL. Names with a leading
underscore are private to their module. This file imports nothing.
"""
