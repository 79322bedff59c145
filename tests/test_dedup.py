"""``pipeline dedup``: the exact index, the rule on real transformed images, the CLI, reruns."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import encode, photo
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from pipeline.catalog import CATALOG_NAME, Catalog
from pipeline.cli import main
from pipeline.config import DedupOptions
from pipeline.dedup import iter_pairs_within, pairs_within, popcount
from pipeline.dedup.groups import Grouper
from pipeline.dedup.items import Items
from pipeline.dedup.search import search

pytestmark = pytest.mark.timeout(180)

# --- the index ---------------------------------------------------------------------------


def _planted(n: int, radius: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes, a third of them copies of another with 0..radius+2 bits flipped."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for k in range(n // 3):
        src, dst = rng.integers(0, n, 2)
        x = h[src]
        for bit in rng.choice(64, int(rng.integers(0, radius + 3)), replace=False):
            x ^= np.uint64(1) << np.uint64(bit)
        h[dst] = x
    h[:8] = h[8]  # a bucket of identical hashes
    return h


@pytest.mark.parametrize("radius", [0, 1, 3, 8, 10, 13, 20])
def test_index_finds_exactly_the_pairs_brute_force_finds(radius: int) -> None:
    h = _planted(3000, radius, seed=radius)
    i, j, d = pairs_within(h, radius)
    brute = popcount(h[:, None] ^ h[None, :])
    bi, bj = np.nonzero(np.triu(brute <= radius, 1))
    found = list(zip(i.tolist(), j.tolist()))
    assert len(found) == len(set(found)), "a pair came out twice"
    assert set(found) == set(zip(bi.tolist(), bj.tolist()))
    assert (d == brute[i, j]).all()
    assert len(found) > 250  # the planted pairs are there to be found
    # The streamed search (what dedup uses) yields the same pairs, each once, in small chunks.
    streamed = [(int(x), int(y)) for a, b in iter_pairs_within(h, radius, chunk=64) for x, y in zip(a, b)]
    assert len(streamed) == len(set(streamed)) and set(streamed) == set(found)


def test_index_handles_tiny_inputs() -> None:
    assert len(pairs_within(np.array([5], np.uint64), 8)[0]) == 0
    i, j, d = pairs_within(np.array([0, 1, 2**64 - 1], np.uint64), 1)
    assert list(zip(i, j, d)) == [(0, 1, 1)]


def test_groups_do_not_chain_through_a_middle_picture() -> None:
    # A~B and B~C are each within the rule, A and C are not: B joins one of them, never both.
    a, b, c = 0, 0b1111111, 0b11111111111111
    items = Items(
        rows=np.arange(3), sha=["a", "b", "c"], phash=np.array([a, b, c], np.uint64),
        dhash=np.array([a, b, c], np.uint64), pixels=np.ones(3, np.int64), size=np.ones(3, np.int64),
    )  # fmt: skip
    options = DedupOptions(max_distance=8, max_sum=16, verify=False)
    groups = Grouper(items, None, options, None)
    search(items, np.arange(3), options, groups, None)
    roots = groups.root
    assert roots[0] != roots[2]
    assert roots[1] in (roots[0], roots[2])


# --- real images through the real run ------------------------------------------------------


def _crop(im: Image.Image, frac: float) -> Image.Image:
    dx, dy = int(im.width * frac), int(im.height * frac)
    return im.crop((dx // 3, dy // 2, im.width - (dx - dx // 3), im.height - (dy - dy // 2)))


def _watermark(im: Image.Image) -> Image.Image:
    im = im.copy()
    ImageDraw.Draw(im).text((20, im.height - 40), "(c) someone 2024", fill=(255, 255, 255))
    return im


def _look_alike(im: Image.Image, seed: int) -> Image.Image:
    """Same scene, other content in its lower half: alike at a glance, another picture."""
    other = photo(im.width, im.height, seed)
    out = im.copy()
    out.paste(other.crop((0, im.height // 2, im.width, im.height)), (0, im.height // 2))
    return out


def _product(shape: str, colour: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGB", (480, 480), (245, 245, 242))
    getattr(ImageDraw.Draw(im), shape)((120, 100, 360, 380), fill=colour)
    return im


def _write_set(folder: Path) -> dict[str, str]:
    """Real transformed copies of two photos, an exact copy, and hard negatives; name -> group."""
    folder.mkdir(parents=True)
    groups: dict[str, str] = {}
    for base_name, seed in (("a", 11), ("b", 12)):
        base = photo(800, 600, seed)
        variants = {
            "orig.jpg": encode(base, "JPEG", quality=92),
            "half.jpg": encode(base.resize((400, 300)), "JPEG", quality=90),
            "q30.jpg": encode(base, "JPEG", quality=30),
            "re.png": encode(base.resize((640, 480)), "PNG"),
            "re.webp": encode(base, "WEBP", quality=70),
            "crop7.jpg": encode(_crop(base, 0.07), "JPEG", quality=90),
            "bright.jpg": encode(ImageEnhance.Brightness(base).enhance(1.25), "JPEG", quality=90),
            "gray.jpg": encode(ImageOps.grayscale(base), "JPEG", quality=90),
            "mark.jpg": encode(_watermark(base), "JPEG", quality=90),
        }
        for name, data in variants.items():
            (folder / f"{base_name}_{name}").write_bytes(data)
            groups[f"{base_name}_{name}"] = base_name
        shutil.copyfile(folder / f"{base_name}_orig.jpg", folder / f"{base_name}_copy.jpg")
        groups[f"{base_name}_copy.jpg"] = base_name
        (folder / f"{base_name}_alike.jpg").write_bytes(
            encode(_look_alike(base, seed + 100), "JPEG", quality=90)
        )
        groups[f"{base_name}_alike.jpg"] = f"{base_name}_alike"
    for name, shape, colour in (("p_red.png", "ellipse", (200, 30, 30)), ("p_blue.png", "ellipse", (30, 30, 200)),
                                ("p_box.png", "rectangle", (200, 30, 30))):  # fmt: skip
        (folder / name).write_bytes(encode(_product(shape, colour), "PNG"))
        groups[name] = name
    return groups


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """One real `pipeline run` over the generated folder, shared by the tests below."""
    root = tmp_path_factory.mktemp("dedup")
    groups = _write_set(root / "images")
    code, output = _run(["run", str(root / "images"), "-o", str(root / "out"), "-q", "--procs", "2"])
    assert code == 0, output
    return root / "images", root / "out", groups


def _fresh_out(processed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(processed[1], out)
    return out


def _csv_groups(out: Path) -> dict[str, list[dict[str, str]]]:
    with open(out / "duplicates.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    found: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        found.setdefault(r["group_id"], []).append(r)
    return found


def test_dedup_groups_real_transformed_copies_and_not_look_alikes(processed, tmp_path) -> None:
    _, _, truth = processed
    out = _fresh_out(processed, tmp_path)
    code, output = _run(["dedup", str(out)])
    assert code == 0, output
    assert "groups" in output and "duplicates.csv" in output
    groups = _csv_groups(out)
    by_key = {r["key"]: g for g, members in groups.items() for r in members}
    for base in ("a", "b"):
        members = {k for k, g in truth.items() if g == base}
        assert {by_key.get(k) for k in members} == {by_key[f"{base}_orig.jpg"]}, f"{base} split: {by_key}"
    # Hard negatives: the look-alike photos and the products of another shape or colour.
    for key in ("a_alike.jpg", "b_alike.jpg", "p_red.png", "p_blue.png", "p_box.png"):
        assert key not in by_key, f"{key} was grouped with {[r['key'] for r in groups[by_key[key]]]}"
    assert by_key["a_orig.jpg"] != by_key["b_orig.jpg"]
    # Columns, one representative per group, exact copies marked exact at distance 0.
    rows = [r for members in groups.values() for r in members]
    assert list(rows[0]) == ["group_id", "key", "url", "sha256", "kind", "distance", "is_representative"]
    for members in groups.values():
        assert sum(r["is_representative"] == "1" for r in members) == 1
        assert members[0]["is_representative"] == "1"  # representative first
    rep_a = next(r for r in groups[by_key["a_orig.jpg"]] if r["is_representative"] == "1")
    assert rep_a["key"] in (
        "a_orig.jpg",
        "a_copy.jpg",
        "a_q30.jpg",
        "a_bright.jpg",
        "a_gray.jpg",
        "a_mark.jpg",
        "a_re.webp",
    )
    copy = {r["key"]: r for r in rows}
    assert copy["a_copy.jpg"]["sha256"] == copy["a_orig.jpg"]["sha256"]
    # imagededup's find_duplicates shape: every key, its duplicates' keys.
    found = json.loads((out / "duplicates.json").read_text())
    assert set(found) == set(truth)
    assert sorted(found["a_half.jpg"]) == sorted(
        k for k, g in truth.items() if g == "a" and k != "a_half.jpg"
    )
    assert found["a_alike.jpg"] == []
    # The catalog holds the same groups.
    db = sqlite3.connect(out / CATALOG_NAME)
    n, kinds = db.execute("SELECT COUNT(*), GROUP_CONCAT(DISTINCT kind) FROM dedup_members").fetchone()
    assert n == len(rows) and set(kinds.split(",")) == {"exact", "near"}


def test_keep_largest_smallest_file_first(processed, tmp_path) -> None:
    out = _fresh_out(processed, tmp_path)
    db = sqlite3.connect(out / CATALOG_NAME)

    def rep_of(key: str) -> str:
        return db.execute(
            "SELECT r.key FROM dedup_members m JOIN items i ON i.row = m.row JOIN items r ON r.row = m.representative "
            "WHERE i.key = ?",
            (key,),
        ).fetchone()[0]

    assert _run(["dedup", str(out), "--keep", "first"])[0] == 0
    assert rep_of("a_half.jpg") == "a_bright.jpg"  # the earliest row (sorted file names)
    assert _run(["dedup", str(out), "--keep", "smallest-file"])[0] == 0
    sizes = dict(db.execute("SELECT key, bytes FROM items"))
    group = [k for k in sizes if k.startswith("a_") and k != "a_alike.jpg"]
    assert rep_of("a_orig.jpg") == min(group, key=lambda k: (sizes[k], k))
    assert _run(["dedup", str(out)])[0] == 0  # largest: 800x600, earliest row among them
    assert rep_of("a_half.jpg") == "a_bright.jpg"


def test_export_unique_has_one_row_per_distinct_image(processed, tmp_path) -> None:
    out = _fresh_out(processed, tmp_path)
    code, output = _run(["export", str(out), "--unique"])
    assert code == 2 and "Error: --unique needs duplicate groups: run `pipeline dedup" in output
    assert _run(["dedup", str(out)])[0] == 0
    code, output = _run(["export", str(out), "--unique", "-f", "jsonl"])
    assert code == 0
    keys = sorted(json.loads(line)["key"] for line in output.splitlines() if line.startswith("{"))
    truth = processed[2]
    assert len(keys) == len(set(truth.values()))  # one per distinct picture
    assert {truth[k] for k in keys} == set(truth.values())


def test_rerun_after_more_images_updates_groups_and_reuses_checks(processed, tmp_path) -> None:
    images = tmp_path / "images"
    shutil.copytree(processed[0], images)
    out = _fresh_out(processed, tmp_path)
    code, first = _run(["dedup", str(out)])
    assert code == 0 and " 0 reused" in first
    base = photo(800, 600, 12)
    (images / "b_third.jpg").write_bytes(encode(base.resize((300, 225)), "JPEG", quality=80))
    (images / "c_one.jpg").write_bytes(encode(photo(700, 500, 13), "JPEG", quality=90))
    (images / "c_two.webp").write_bytes(encode(photo(700, 500, 13).resize((350, 250)), "WEBP", quality=80))
    # The manifest changed, so the run starts over on the same OUT (--force); dedup keeps its
    # thumbnail verdicts, which are keyed by content.
    code, output = _run(["run", str(images), "-o", str(out), "-q", "--procs", "2", "--force"])
    assert code == 0, output
    code, second = _run(["dedup", str(out)])
    assert code == 0, second
    assert " 0 reused" not in second
    by_key = {r["key"]: g for g, members in _csv_groups(out).items() for r in members}
    assert by_key["b_third.jpg"] == by_key["b_orig.jpg"]
    assert by_key["c_one.jpg"] == by_key["c_two.webp"] != by_key["b_orig.jpg"]


# --- clear messages --------------------------------------------------------------------------


def test_missing_thumbnails_give_a_clear_error_and_no_verify_still_works(processed, tmp_path) -> None:
    out = _fresh_out(processed, tmp_path)
    shutil.rmtree(out / "thumbs")
    code, output = _run(["dedup", str(out)])
    assert code == 1
    assert output.startswith("Error: thumbnail thumbs/") and "is missing or unreadable" in output
    assert "--no-verify" in output and "Traceback" not in output
    code, output = _run(["dedup", str(out), "--no-verify"])
    assert code == 0, output
    assert len(_csv_groups(out)) >= 2


def test_catalog_without_images_gives_a_clear_error(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    Catalog(out / CATALOG_NAME).close()
    code, output = _run(["dedup", str(out)])
    assert (code, output.strip()) == (
        1,
        f"Error: {out / CATALOG_NAME} has no images yet: run `pipeline run` into this folder first",
    )
    code, output = _run(["dedup", str(tmp_path)])
    assert code == 2 and output.startswith("Error: no catalog at")  # a usage error


def test_catalog_with_failed_rows_only_gives_a_clear_error(tmp_path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    (tmp_path / "list.txt").write_text("bad.jpg\nmissing.jpg\n")
    out = tmp_path / "out"
    code, output = _run(["run", str(tmp_path / "list.txt"), "-o", str(out), "-q", "--procs", "1"])
    assert code == 0, output
    code, output = _run(["dedup", str(out)])
    assert code == 1
    assert output.startswith(
        f"Error: none of the 2 rows in {out / CATALOG_NAME} is a processed image (1 failed, 1 invalid)"
    )
    assert "--retry-failed" in output


def test_max_distance_is_checked() -> None:
    code, output = _run(["dedup", ".", "--max-distance", "40"])
    assert code == 2 and "--max-distance must be between 0 and 32" in output
