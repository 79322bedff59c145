"""``pipeline dedup`` at scale (issue 13): checks on a process pool give the serial groups, a
cluster of N copies costs O(N) thumbnail checks and its pairs are never all held at once,
and chains still do not join two pictures."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import encode, photo
from PIL import Image, ImageEnhance

from pipeline.catalog import CATALOG_NAME
from pipeline.cli import main
from pipeline.dedup import dedup
from pipeline.dedup import groups as dedup_groups
from pipeline.dedup import pool as dedup_pool
from pipeline.dedup import search as dedup_search
from pipeline.dedup.items import smallest_thumbnail
from pipeline.dedup.thumbcheck import ThumbnailCheck

pytestmark = pytest.mark.timeout(300)

N = 60  # copies of one picture: 1,770 candidate pairs if every pair were checked


def _copy(base: Image.Image, rng: np.random.Generator) -> bytes:
    side = int(rng.integers(200, 401))
    im = base.resize((side, side * 3 // 4), Image.Resampling.LANCZOS)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.95, 1.05)))
    return encode(im, "JPEG", quality=int(rng.integers(60, 96)))


def _write_set(folder: Path) -> None:
    """N copies of one photo, 6 copies each of two others and blends between them, 10 singles."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    cluster = photo(400, 300, 21)
    for k in range(N):
        (folder / f"c_{k:03}.jpg").write_bytes(_copy(cluster, rng))
    a, b = photo(400, 300, 22), photo(400, 300, 23)
    for k in range(6):
        (folder / f"a_{k}.jpg").write_bytes(_copy(a, rng))
        (folder / f"b_{k}.jpg").write_bytes(_copy(b, rng))
    for mix in (0.3, 0.4, 0.5, 0.6, 0.7):  # each close to one side or both: a chain A ~ AB ~ B
        (folder / f"mix_{mix}.jpg").write_bytes(encode(Image.blend(a, b, mix), "JPEG", quality=90))
    for k in range(10):
        (folder / f"single_{k}.jpg").write_bytes(encode(photo(400, 300, 100 + k), "JPEG", quality=90))


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `pipeline run` over the folder; tests copy its OUT."""
    root = tmp_path_factory.mktemp("dedup-scale")
    _write_set(root / "images")
    code, output = _run(["run", str(root / "images"), "-o", str(root / "out"), "-q", "--procs", "2"])
    assert code == 0, output
    return root / "out"


def _fresh(processed: Path, tmp_path: Path, name: str = "out") -> Path:
    out = tmp_path / name
    shutil.copytree(processed, out)
    return out


def _groups(out: Path) -> list[set[str]]:
    with sqlite3.connect(out / CATALOG_NAME) as db:
        rows = db.execute(
            "SELECT m.group_id, i.key FROM dedup_members m JOIN items i ON i.row = m.row"
        ).fetchall()
    found: dict[int, set[str]] = {}
    for group, key in rows:
        found.setdefault(group, set()).add(key)
    return sorted(found.values(), key=sorted)


def test_a_cluster_of_n_copies_is_one_group_for_o_n_checks(processed, tmp_path) -> None:
    out = _fresh(processed, tmp_path)
    code, output = _run(["dedup", str(out)])
    assert code == 0, output
    candidates, checked = (
        int(x.replace(",", ""))
        for x in re.search(r"([\d,]+) candidate pairs, ([\d,]+) checked", output).groups()
    )
    cluster = [g for g in _groups(out) if any(k.startswith("c_") for k in g)]
    assert cluster == [{f"c_{k:03}.jpg" for k in range(N)}]
    # Every pair of the cluster is a candidate, but only a join's pair and its seeds are checked.
    assert candidates >= N * (N - 1) // 2
    assert checked <= 3 * N, output


def test_two_pictures_are_not_joined_through_a_chain(processed, tmp_path) -> None:
    out = _fresh(processed, tmp_path)
    dedup(out, workers=1)
    for group in _groups(out):
        sides = {k[0] for k in group if k[:2] in ("a_", "b_")}
        assert len(sides) <= 1, group
    assert {f"a_{k}.jpg" for k in range(6)} <= next(g for g in _groups(out) if "a_0.jpg" in g)
    assert {f"b_{k}.jpg" for k in range(6)} <= next(g for g in _groups(out) if "b_0.jpg" in g)


def test_pool_gives_the_serial_groups(processed, tmp_path, monkeypatch) -> None:
    # Small batches, and the pool from the first one, so this little set really crosses processes.
    monkeypatch.setattr(dedup_pool, "BATCH", 8)
    monkeypatch.setattr(dedup_pool, "_POOL_FROM", 1)
    started = []
    real = dedup_pool.ProcessPoolExecutor

    def counting(*args: object, **kwargs: object) -> dedup_pool.ProcessPoolExecutor:
        started.append(kwargs.get("mp_context"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dedup_pool, "ProcessPoolExecutor", counting)
    serial, pooled = _fresh(processed, tmp_path, "serial"), _fresh(processed, tmp_path, "pooled")
    one = dedup(serial, workers=1)
    assert not started
    two = dedup(pooled, workers=2)
    assert len(started) == 1 and started[0].get_start_method() == "spawn"
    assert _groups(serial) == _groups(pooled)
    assert (one.groups, one.duplicates, one.candidates, one.checked) == (
        two.groups, two.duplicates, two.candidates, two.checked,
    )  # fmt: skip
    with sqlite3.connect(serial / CATALOG_NAME) as a, sqlite3.connect(pooled / CATALOG_NAME) as b:
        sql = "SELECT * FROM dedup_members ORDER BY row"
        assert a.execute(sql).fetchall() == b.execute(sql).fetchall()
        sql = "SELECT a, b, similarity FROM dedup_pairs ORDER BY a, b"
        assert a.execute(sql).fetchall() == b.execute(sql).fetchall()
    assert (serial / "duplicates.csv").read_bytes() == (pooled / "duplicates.csv").read_bytes()


def test_a_cluster_is_grouped_as_its_pairs_stream_in(processed, tmp_path, monkeypatch) -> None:
    # Candidates handed over 50 at a time and decided 200 at a time: the cluster's 1,770 pairs
    # are never all held, the cluster is still one group for O(N) checks, and the groups are
    # those of one big buffer.
    whole = dedup(_fresh(processed, tmp_path, "whole"), workers=1)
    assert whole.held >= N * (N - 1) // 2  # every pair fitted in one buffer: held at once
    monkeypatch.setattr(dedup_search, "CHUNK", 50)
    monkeypatch.setattr(dedup_groups, "_BUFFER", 200)
    out = _fresh(processed, tmp_path, "streamed")
    streamed = dedup(out, workers=1)
    assert streamed.held <= 200 + 50
    assert streamed.candidates < whole.candidates  # the cluster's later pairs were dropped unmeasured
    cluster = [g for g in _groups(out) if any(k.startswith("c_") for k in g)]
    assert cluster == [{f"c_{k:03}.jpg" for k in range(N)}]
    assert streamed.checked <= 3 * N
    assert _groups(out) == _groups(tmp_path / "whole")
    # duplicates.json (written as it goes): each copy lists the N - 1 others, in one valid file.
    listed = json.loads((out / "duplicates.json").read_text(encoding="utf-8"))
    copies = {f"c_{k:03}.jpg" for k in range(N)}
    assert all(set(listed[c]) == copies - {c} and len(listed[c]) == N - 1 for c in copies)
    assert all(listed[k] == [] for k in listed if k.startswith("single_"))


def test_variant_hashes_of_a_batch_are_the_checks_own(processed) -> None:
    # The pool's stacked computation must give exactly ThumbnailCheck.variant_hashes: the
    # candidates of a dedup must not depend on how the thumbnails were batched.
    with sqlite3.connect(processed / CATALOG_NAME) as db:
        listed = db.execute("SELECT row, thumbnails FROM items WHERE status = 'ok' ORDER BY row").fetchall()
    thumbs = {row: smallest_thumbnail(t) for row, t in listed}
    check = ThumbnailCheck(processed, thumbs, {})
    rows = list(thumbs)
    expected = np.stack([check.variant_hashes(r) for r in rows])
    assert (dedup_pool.variant_batch(processed, thumbs, rows)[0] == expected).all()
    assert (dedup_pool.variant_batch(processed, thumbs, rows[:3])[0] == expected[:3]).all()


def test_workers_option(processed, tmp_path, monkeypatch) -> None:
    started = []
    real = dedup_pool.ProcessPoolExecutor

    def counting(*args: object, **kwargs: object) -> dedup_pool.ProcessPoolExecutor:
        started.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(dedup_pool, "ProcessPoolExecutor", counting)
    monkeypatch.setattr(dedup_pool, "_POOL_FROM", 1)
    monkeypatch.setattr(dedup_pool, "VARIANT_BATCH", 8)  # several jobs even for this little set
    out = _fresh(processed, tmp_path, "one")
    code, output = _run(["dedup", str(out), "--workers", "1"])
    assert code == 0 and not started, output
    out = _fresh(processed, tmp_path, "two")
    code, output = _run(["dedup", str(out), "--workers", "2"])
    assert code == 0 and started and started[0][0] == 2, output
    assert _groups(out) == _groups(tmp_path / "one")
    code, output = _run(["dedup", str(out), "--workers", "0"])
    assert code == 2 and "--workers" in output, output
