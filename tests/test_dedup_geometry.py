"""``pipeline dedup`` on turned and cropped copies: found from variant hashes, matched by the
thumbnail check's turns and crops, named in the catalog and the report; look-alikes stay apart."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import encode, photo
from PIL import Image, ImageDraw

from pipeline.catalog import CATALOG_NAME
from pipeline.cli import main

pytestmark = pytest.mark.timeout(180)


def _look_alike(im: Image.Image, seed: int) -> Image.Image:
    """Same scene, other content in its lower half: alike at a glance, another picture."""
    other = photo(im.width, im.height, seed)
    out = im.copy()
    out.paste(other.crop((0, im.height // 2, im.width, im.height)), (0, im.height // 2))
    return out


def _write_set(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, seed in (("a", 21), ("b", 22)):
        base = photo(800, 600, seed)
        marked = base.copy()
        ImageDraw.Draw(marked).text((30, 520), "(c) stock photo", fill=(255, 255, 255))
        files = {
            "orig.jpg": base,
            "rot3.jpg": base.rotate(3, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
            "rotm3.jpg": base.rotate(-3, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
            "crop10.jpg": base.crop((20, 55, 740, 595)),  # 10% off each side, off centre
            "mark.jpg": marked,
            "alike.jpg": _look_alike(base, seed + 100),
        }
        for suffix, im in files.items():
            (folder / f"{name}_{suffix}").write_bytes(encode(im, "JPEG", quality=90))


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def deduped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("geometry")
    _write_set(root / "images")
    _invoke(["run", str(root / "images"), "-o", str(root / "out"), "-q", "--procs", "2"])
    _invoke(["dedup", str(root / "out"), "--report", str(root / "report.html")])
    return root


def _group_of(out: Path) -> dict[str, str]:
    with open(out / "duplicates.csv", newline="", encoding="utf-8") as f:
        return {r["key"]: r["group_id"] for r in csv.DictReader(f)}


def test_turned_and_cropped_copies_join_their_original_and_look_alikes_do_not(deduped: Path) -> None:
    group_of = _group_of(deduped / "out")
    for name in ("a", "b"):
        members = {f"{name}_{s}" for s in ("orig.jpg", "rot3.jpg", "rotm3.jpg", "crop10.jpg", "mark.jpg")}
        assert {group_of.get(k) for k in members} == {group_of[f"{name}_orig.jpg"]}, group_of
        assert f"{name}_alike.jpg" not in group_of, group_of
    assert group_of["a_orig.jpg"] != group_of["b_orig.jpg"]


def test_catalog_keeps_the_path_and_the_turn_or_crop_found(deduped: Path) -> None:
    db = sqlite3.connect(deduped / "out" / CATALOG_NAME)
    sha = dict(db.execute("SELECT key, sha256 FROM items"))
    verdicts = list(db.execute("SELECT a, b, path, found FROM dedup_pairs"))

    def found_for(key: str) -> list[tuple[str, str]]:
        # A copy is checked against whichever member of its group the windows reach first
        # (not every pair of a group is checked), so look at every verdict it has.
        return [(path, found) for a, b, path, found in verdicts if sha[key] in (a, b)]

    rotated = found_for("a_rot3.jpg")
    assert any(path == "geometry" and "rotated" in found and "3°" in found for path, found in rotated), rotated
    cropped = found_for("a_crop10.jpg")
    assert any(path == "aligned" and found.startswith("cropped") for path, found in cropped), cropped


def test_report_names_the_path_of_each_near_member(deduped: Path) -> None:
    page = (deduped / "report.html").read_text(encoding="utf-8")
    assert '"p":"geometry: rotated' in page
    assert '"p":"aligned: ' in page
    assert "matched by " in page  # drawn in each near member's caption


def test_a_group_is_checked_on_its_largest_picture_not_its_first_member(tmp_path: Path) -> None:
    """Two turned copies join first (they are nearly one picture), so the group's root is a
    turned copy; then the original joins, then a copy cropped off one edge matches the
    original. An edge crop against a turned copy is covered by no single view, so the
    group's seed check must use its largest picture (the original), or the crop stays out."""
    base = photo(800, 600, 31)
    turned = base.rotate(5, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)).resize((720, 540))
    files = {
        "a_turned.jpg": encode(turned, "JPEG", quality=92),
        "b_turned.jpg": encode(turned, "JPEG", quality=60),
        "c_original.jpg": encode(base, "JPEG", quality=90),
        "d_edge_crop.jpg": encode(base.crop((80, 0, 800, 600)), "JPEG", quality=90),  # 10% off the left
    }
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    _invoke(["run", str(folder), "-o", str(out), "-q", "--procs", "1"])
    _invoke(["dedup", str(out), "--workers", "1"])
    groups = _group_of(out)
    assert set(groups) >= set(files), groups
    assert len({groups[name] for name in files}) == 1, groups


def test_a_copy_with_a_banner_is_found_and_joined(tmp_path: Path) -> None:
    """An opaque strip across the bottom moves the whole picture's pHash past the search
    radius; the copies are found by their band-cut variants, which agree."""
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in (41, 42):
        base = photo(800, 600, seed)
        banner = base.copy()
        draw = ImageDraw.Draw(banner)
        draw.rectangle((0, 516, 800, 600), fill=(200, 30, 30))
        draw.text((20, 540), "SALE -50% TODAY ONLY", fill=(255, 255, 255))
        (folder / f"{seed}_original.jpg").write_bytes(encode(base, "JPEG", quality=90))
        (folder / f"{seed}_banner.jpg").write_bytes(encode(banner, "JPEG", quality=90))
    out = tmp_path / "out"
    _invoke(["run", str(folder), "-o", str(out), "-q", "--procs", "1"])
    _invoke(["dedup", str(out), "--workers", "1"])
    groups = _group_of(out)
    for seed in (41, 42):
        assert f"{seed}_banner.jpg" in groups and f"{seed}_original.jpg" in groups, groups
        assert groups[f"{seed}_banner.jpg"] == groups[f"{seed}_original.jpg"], groups
    assert len({groups[name] for name in groups}) == 2, groups  # the two pictures stay apart


def _with_logo(base: Image.Image, corner: str) -> Image.Image:
    """A bold logo (a white frame round a black square), 24% of the width, 90% opaque."""
    side = int(base.width * 0.24)
    logo = Image.new("RGBA", (side, side), (255, 255, 255, 230))
    ImageDraw.Draw(logo).rectangle((side // 6, side // 6, 5 * side // 6, 5 * side // 6), fill=(0, 0, 0, 230))
    x = 8 if corner.endswith("left") else base.width - side - 8
    y = 8 if corner.startswith("top") else base.height - side - 8
    out = base.convert("RGBA")
    out.alpha_composite(logo, (x, y))
    return out.convert("RGB")


def test_a_copy_with_a_corner_logo_is_found_and_joined(tmp_path: Path) -> None:
    """A bold logo in a corner moves the whole picture's pHash past the search radius; the
    copies are found by their side-cut variants (a quarter off the left or the right)."""
    folder = tmp_path / "images"
    folder.mkdir()
    corners = {51: "bottom right", 52: "top left"}
    for seed, corner in corners.items():
        base = photo(800, 600, seed)
        (folder / f"{seed}_original.jpg").write_bytes(encode(base, "JPEG", quality=90))
        (folder / f"{seed}_logo.jpg").write_bytes(encode(_with_logo(base, corner), "JPEG", quality=90))
    out = tmp_path / "out"
    _invoke(["run", str(folder), "-o", str(out), "-q", "--procs", "1"])
    _invoke(["dedup", str(out), "--workers", "1"])
    groups = _group_of(out)
    for seed in corners:
        assert f"{seed}_logo.jpg" in groups and f"{seed}_original.jpg" in groups, groups
        assert groups[f"{seed}_logo.jpg"] == groups[f"{seed}_original.jpg"], groups
    assert len({groups[name] for name in groups}) == 2, groups  # the two pictures stay apart
