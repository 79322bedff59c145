"""The manifest stage: a manifest file or folder read as a stream of ``ManifestRow``s.

Formats, chosen by file name: ``.csv`` and ``.tsv`` (header required; the URL column is
``url`` unless told otherwise, an optional ``key`` column, every other column is kept as
an extra), ``.txt`` (one URL per line, ``#`` comments), ``.jsonl``/``.ndjson`` (one object
per line), ``.parquet`` (needs pyarrow), each optionally ``.gz``. A directory stands for
every image file under it.

Rows are never held all at once: memory stays flat however long the manifest is. A row
that cannot be used is still yielded, with ``invalid`` set, so that it is recorded with its
line number and the run goes on.

One job per module, from the file to one row::

    spec.py       open_manifest: where a manifest is and its kind (ManifestSpec); default_out
    read.py       read_rows (every kind), extra_columns, count_rows, identity (the resume check)
    delimited.py  CSV and TSV (header, columns)
    lines.py      a text file (± gzip) as lines, cut short as ManifestTruncated; .txt
    jsonl.py      JSONL
    parquet.py    Parquet, a record batch at a time
    folder.py     a folder: its image files, in a stable order
    rows.py       one row: make_row (text made storable), resolve_source (http(s) or a local
                  file under --local-root)

Other stages import ``spec`` and ``read`` (tests: ``rows.resolve_source``). Names with a
leading underscore are private to their module. This file imports nothing.
"""
