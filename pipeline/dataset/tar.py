"""A WebDataset shard: samples as members of one POSIX ustar file, headers made here, files copied by the kernel."""

from __future__ import annotations

import errno
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from pipeline.dataset.samples import Sample, missing_file


class TarShard:
    """A WebDataset shard: each sample's members one after the other, in one tar (POSIX
    ustar, what WebDataset, GNU tar and Python's tarfile read).

    Headers are made here, not by ``tarfile``: its ``addfile`` cost ~90 us per member (PAX
    header building, a deep copy of the TarInfo), 3-4 members per sample, on the parent's
    thread that also commits every row. A sample goes out in one write."""

    def __init__(self, path: Path) -> None:
        self.samples = 0
        self._file = open(path, "wb")  # noqa: SIM115  (closed by close())
        self._mtime = b"%011o" % int(time.time())

    def add(self, sample: Sample) -> None:
        chunks: list[bytes] = []
        members: list[tuple[str, bytes | Path]] = [*sample.images, ("json", _json_bytes(sample.record))]
        if sample.caption is not None:
            members.append(("txt", sample.caption.encode("utf-8", "surrogateescape")))
        for field, data in members:
            name = f"{sample.key}.{field}"
            if isinstance(data, bytes):
                chunks += [self._header(name, len(data)), data, b"\0" * (-len(data) % _BLOCK)]
                continue
            self._file.write(b"".join(chunks))
            chunks = []
            self._copy(name, data)
        self._file.write(b"".join(chunks))
        self.samples += 1

    def _copy(self, name: str, path: Path) -> None:
        """A member from a file: header, then the bytes copied by the kernel (no Python
        buffer of a 50 MB original; measured ~0.15 ms less per 264 KB original)."""
        try:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                self._file.write(self._header(name, size))
                self._file.flush()
                sent, out = 0, self._file.fileno()
                while sent < size:
                    n = _copy_range(src.fileno(), out, size - sent)
                    if n == 0:  # the file shrank under us: never a short member
                        raise OSError(f"{path} changed while being packed")
                    sent += n
        except OSError as exc:
            raise missing_file(path, exc) from exc
        self._file.write(b"\0" * (-size % _BLOCK))

    def close(self) -> None:
        self._file.write(b"\0" * (2 * _BLOCK))  # the end-of-archive marker
        self._file.close()

    def _header(self, name: str, size: int) -> bytes:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > 100 or size >= 8**11:  # beyond ustar (a name > 100 bytes, a body >= 8 GiB)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, int(self._mtime, 8), 0o644
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        header = bytearray(_BLOCK)
        header[0 : len(raw)] = raw
        header[100:108] = b"0000644\0"  # mode
        header[108:116] = b"0000000\0"  # uid
        header[116:124] = b"0000000\0"  # gid
        header[124:136] = b"%011o\0" % size
        header[136:148] = self._mtime + b"\0"
        header[148:156] = b" " * 8  # the checksum counts itself as spaces
        header[156:157] = b"0"  # a regular file
        header[257:265] = b"ustar\x0000"
        header[148:156] = b"%06o\0 " % sum(header)
        return bytes(header)


_BLOCK = 512


def _copy_range(src: int, dst: int, count: int) -> int:
    """Copy up to ``count`` bytes from ``src``'s position to ``dst``'s, in the kernel."""
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(src, dst, count)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    return os.sendfile(dst, src, None, count)


def _json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogateescape")
