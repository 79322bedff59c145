"""Store: names come only from hex digests, writes are atomic, OUT errors are StorageError."""

from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path

import pytest

from pipeline.errors import StorageError
from pipeline.store.base import TMP_DIR
from pipeline.store.local import Store

SHA = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
assert len(SHA) == 64


def _tmp_entries(root: Path) -> list[Path]:
    tmp = root / TMP_DIR
    return list(tmp.iterdir()) if tmp.exists() else []


# -- names -----------------------------------------------------------------------------------


def test_relpaths_are_sharded_by_digest_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.thumb_relpath(SHA, 256, "jpg") == f"thumbs/256/ab/{SHA}.jpg"
    assert store.original_relpath(SHA, "png") == f"originals/ab/{SHA}.png"


@pytest.mark.parametrize(
    "bad",
    ["../x", "", SHA.upper(), SHA[:-1], SHA + "0", "g" * 64, f"../{SHA[3:]}", SHA[:62] + "/x"],
)
def test_sha_must_be_64_lowercase_hex(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path)
    with pytest.raises(ValueError):
        store.thumb_relpath(bad, 256, "jpg")
    with pytest.raises(ValueError):
        store.original_relpath(bad, "jpg")


@pytest.mark.parametrize("ext", ["", "../jpg", "j/pg", "JPG", "toolongext"])
def test_ext_is_validated(tmp_path: Path, ext: str) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path).original_relpath(SHA, ext)


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_size_is_validated(tmp_path: Path, size: object) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path).thumb_relpath(SHA, size, "jpg")  # type: ignore[arg-type]


@pytest.mark.parametrize("rel", ["/etc/passwd", "../outside", "thumbs/../../x", f"{TMP_DIR}/x", ""])
def test_paths_outside_the_store_are_refused(tmp_path: Path, rel: str) -> None:
    store = Store(tmp_path)
    with pytest.raises(ValueError):
        store.write_bytes(rel, b"x")
    with pytest.raises(ValueError):
        store.exists(rel)


# -- writes ----------------------------------------------------------------------------------


def test_write_bytes_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rel = store.original_relpath(SHA, "jpg")
    assert not store.exists(rel)
    store.write_bytes(rel, b"hello")
    assert store.exists(rel)
    assert (tmp_path / rel).read_bytes() == b"hello"
    assert _tmp_entries(tmp_path) == []


def test_existing_target_is_not_rewritten(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rel = store.original_relpath(SHA, "jpg")
    store.write_bytes(rel, b"first")
    before = os.stat(tmp_path / rel)
    store.write_bytes(rel, b"second")  # same name means same content: nothing to do
    after = os.stat(tmp_path / rel)
    assert (tmp_path / rel).read_bytes() == b"first"
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_files_get_the_umask_permissions_not_private_ones(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        store = Store(tmp_path)
        rel = store.original_relpath(SHA, "jpg")
        store.write_bytes(rel, b"x")
        assert stat.S_IMODE(os.stat(tmp_path / rel).st_mode) == 0o644
    finally:
        os.umask(umask)


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rel = store.thumb_relpath(SHA, 256, "jpg")
    with store.atomic_path(rel) as tmp:
        assert tmp.parent == tmp_path / TMP_DIR
        assert tmp.suffix == ".jpg"
        assert not (tmp_path / rel).exists()  # nothing visible until the write completes
        tmp.write_bytes(b"thumb")
    assert (tmp_path / rel).read_bytes() == b"thumb"
    assert _tmp_entries(tmp_path) == []


def test_atomic_path_removes_temp_on_failure(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rel = store.thumb_relpath(SHA, 256, "jpg")
    with pytest.raises(RuntimeError, match="encoder broke"), store.atomic_path(rel) as tmp:
        tmp.write_bytes(b"half a thum")
        raise RuntimeError("encoder broke")
    assert not (tmp_path / rel).exists()
    assert _tmp_entries(tmp_path) == []


def test_temp_names_are_unique(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rel = store.thumb_relpath(SHA, 8, "png")
    with store.atomic_path(rel) as a, store.atomic_path(rel) as b:
        assert a != b


def test_clear_temp_removes_leftovers(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.clear_temp() == 0  # no .tmp yet
    (tmp_path / TMP_DIR).mkdir()
    (tmp_path / TMP_DIR / "123-dead.jpg").write_bytes(b"left by a killed worker")
    (tmp_path / TMP_DIR / "sub").mkdir()
    assert store.clear_temp() == 2
    assert _tmp_entries(tmp_path) == []


def test_store_recovers_when_a_cached_folder_is_removed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_bytes(store.original_relpath(SHA, "jpg"), b"x")
    (tmp_path / TMP_DIR).rmdir()
    other = "cd" + SHA[2:]
    store.write_bytes(store.original_relpath(other, "jpg"), b"y")
    assert (tmp_path / store.original_relpath(other, "jpg")).read_bytes() == b"y"


def test_store_pickles(tmp_path: Path) -> None:
    store = pickle.loads(pickle.dumps(Store(tmp_path)))
    assert store.root == tmp_path


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_out_unwritable_is_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    # Running as root ignores chmod, and filling a disk is not a unit test: make the
    # rename fail the way the kernel would.
    store = Store(tmp_path)

    def fail(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", fail)
    rel = store.original_relpath(SHA, "jpg")
    with pytest.raises(StorageError, match=str(tmp_path)):
        store.write_bytes(rel, b"x")
    with pytest.raises(StorageError), store.atomic_path(rel) as tmp:
        tmp.write_bytes(b"x")
    monkeypatch.undo()
    assert _tmp_entries(tmp_path) == []
    assert not store.exists(rel)


def test_disk_full_inside_the_writer_is_storage_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rel = store.thumb_relpath(SHA, 8, "png")
    with pytest.raises(StorageError, match="no space left"), store.atomic_path(rel):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert _tmp_entries(tmp_path) == []


def test_other_os_errors_propagate_unchanged(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(OSError) as info, store.atomic_path(store.thumb_relpath(SHA, 8, "png")):
        raise OSError("encoder error -2")  # Pillow's encoder failures carry no errno
    assert not isinstance(info.value, StorageError)


def test_read_only_out_is_storage_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="permission denied"):
            Store(tmp_path).write_bytes(f"originals/ab/{SHA}.jpg", b"x")
    finally:
        tmp_path.chmod(0o700)
