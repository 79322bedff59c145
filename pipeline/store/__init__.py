"""The store stage: a processed image's files under OUT (a local folder or an fsspec URL), whole or absent.

One job per module; the dependencies run one way, down this list::

    local.py    open_store (the run's store for OUT) and Store: local files, temp + rename
    remote.py   FsspecStore: objects uploaded in the background, bounded, a row waiting for its own
    named.py    NamedStore: a source's thumbnails under its rows' names (--layout mirror|key)
    objects.py  whole objects under a URL: copy_objects (dedup reads thumbnails back), ObjectFolder
                (dataset shards)
    scratch.py  scratch files to encode into before an upload (memfd, else an OS temp file)
    fs.py       an fsspec URL's filesystem
    base.py     what every store is (ContentStore): the content names, checked, and the calls the
                image stage writes through; TMP_DIR

fsspec is imported by ``fs.py`` only, and only when OUT is a URL (``pipeline[s3]``); ``local.py``
imports ``remote.py`` only then. Names with a leading underscore are private to their module.
This file imports nothing.
"""
