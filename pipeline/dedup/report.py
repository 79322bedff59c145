"""``pipeline dedup --report FILE``: one static HTML page to check the groups by eye.

The page is self-contained (no network: inline CSS and JS, no CDN) and points at the run's
stored thumbnails with paths relative to the page, so it opens from disk as long as the page
and OUT keep their relative places. Groups are embedded once as JSON and drawn a page at a
time (largest groups first) with lazy-loaded images, so 10,000 groups open as fast as 10.
"""

from __future__ import annotations

import html
import json
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.catalog import Catalog
from pipeline.dedup.outputs import iter_grouped
from pipeline.dedup.thumbcheck import VERSION
from pipeline.errors import DedupError, StorageError
from pipeline.locate import catalog_path

PAGE_SIZE = 50


def write_report(
    out: str | Path,
    dest: str | Path,
    *,
    page_size: int = PAGE_SIZE,
    catalog: str | Path | None = None,
    thumbs: str | Path | None = None,
) -> int:
    """Write the report of the groups in ``out`` to ``dest``; returns the number of groups.

    ``catalog``: the run's catalog if not OUT/catalog.sqlite; ``thumbs``: the local folder the
    catalog's thumbnail paths start from, if not OUT (local copies of an object store's).
    """
    dest = Path(dest)
    source = catalog_path(out, catalog)
    with Catalog(source, readonly=True) as catalog_:
        if catalog_.get_meta("dedup") is None:
            raise DedupError(f"no duplicate groups in {out} yet: run `pipeline dedup {out}` first")
        groups = _groups(catalog_, Path(thumbs if thumbs is not None else out), dest.resolve().parent)
    out = Path(str(out).rstrip("/"))
    images = sum(len(g["m"]) for g in groups)
    # "</" cannot end the script element early once escaped; JSON stays valid.
    data = json.dumps({"groups": groups, "pageSize": page_size}, separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace(
        "__TITLE__", html.escape(f"Duplicates in {out.name}: {len(groups):,} groups, {images:,} images")
    )
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page.replace("__DATA__", data), encoding="utf-8")
        tmp.replace(dest)
    except OSError as exc:
        raise StorageError(f"cannot write the report {dest}: {exc}") from exc
    return len(groups)


def _groups(catalog: Catalog, out: Path, page_dir: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    current = None
    verify = bool((catalog.get_meta("dedup") or {}).get("verify", True))
    shas: list[str] = []
    for r in iter_grouped(catalog):
        if r["group_id"] != current:
            current = r["group_id"]
            groups.append({"id": current, "m": []})
            shas = []
        shas.append(r["sha256"])
        thumbs = json.loads(r["thumbnails"]) if r["thumbnails"] else []
        thumb = min(thumbs, key=lambda t: t["width"] * t["height"])["path"] if thumbs else None
        groups[-1]["m"].append({
            "k": r["key"], "w": r["width"], "h": r["height"], "f": r["format"], "b": r["bytes"],
            "d": r["distance"], "x": r["kind"], "r": int(r["is_rep"]),
            "t": _src(os.path.relpath(out.resolve() / thumb, page_dir).replace(os.sep, "/")) if thumb else None,
        })  # fmt: skip
        if r["kind"] == "near":
            groups[-1]["m"][-1]["p"] = _why(catalog, r["sha256"], shas[0], shas, verify)
    return groups


def _why(catalog: Catalog, sha: str, rep: str, members: list[str], verify: bool) -> str:
    """How a near member was matched: the path of the check on its pair with the
    representative (else with the member it matched best) and what that check found;
    "hash" when the groups were made on the hashes alone (``--no-verify``)."""
    if not verify:
        return "hash"
    others = [o for o in dict.fromkeys(members) if o != sha]
    if not others:
        return ""
    try:
        found = catalog.db.execute(
            f"SELECT CASE WHEN a = ? THEN b ELSE a END AS other, path, found, similarity FROM dedup_pairs "
            f"WHERE version = ? AND path IS NOT NULL AND ((a = ? AND b IN ({','.join('?' * len(others))})) "
            f"OR (b = ? AND a IN ({','.join('?' * len(others))}))) ORDER BY (other = ?) DESC, similarity DESC LIMIT 1",
            (sha, VERSION, sha, *others, sha, *others, rep),
        ).fetchone()
    except sqlite3.OperationalError:  # a catalog from before the path was kept (schema 2)
        return ""
    return f"{found[1]}: {found[2]}" if found else ""


def _src(rel: str) -> str:
    """A relative path as a URL: a name after its source (``--layout mirror``) may hold
    ``%``, ``#``, ``?`` or spaces, which a browser would read as URL syntax."""
    return quote(rel, safe="/")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
nav { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; }
.group { border: 1px solid #ddd; border-radius: 6px; margin: 1em 0; padding: .5em; }
.group h2 { font-size: 15px; margin: 0 0 .5em; }
.members { display: flex; flex-wrap: wrap; gap: .75em; }
figure { margin: 0; width: 200px; }
figure img { max-width: 200px; max-height: 200px; display: block; background: #eee; }
figure.rep { outline: 3px solid #2a7; }
figcaption { font-size: 12px; word-break: break-all; }
.kind-exact { color: #777; } .kind-near { color: #b60; }
</style></head>
<body>
<h1>__TITLE__</h1>
<nav><button id="prev">&larr; previous</button> page <span id="page">1</span> of <span id="pages">1</span>
<button id="next">next &rarr;</button>
<span id="summary"></span></nav>
<main id="groups"></main>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
window.addEventListener("error", function (e) { document.body.dataset.error = String(e.message); });
const data = JSON.parse(document.getElementById("data").textContent);
const groups = data.groups, size = data.pageSize;
const pages = Math.max(1, Math.ceil(groups.length / size));
const images = groups.reduce(function (n, g) { return n + g.m.length; }, 0);
function kb(b) { return b >= 1048576 ? (b / 1048576).toFixed(1) + " MB" : (b / 1024).toFixed(1) + " KB"; }
function member(m) {
  const fig = document.createElement("figure");
  if (m.r) fig.className = "rep";
  if (m.t) {
    const img = document.createElement("img");
    img.loading = "lazy"; img.src = m.t; img.alt = m.k;
    fig.appendChild(img);
  }
  const cap = document.createElement("figcaption");
  cap.textContent = m.k + " \\u2014 " + m.w + "\\u00d7" + m.h + " " + m.f + ", " + kb(m.b) + ", ";
  const kind = document.createElement("span");
  kind.className = "kind-" + m.x;
  kind.textContent = m.r ? "kept" : (m.x + ", distance " + m.d);
  cap.appendChild(kind);
  if (m.p) {
    const why = document.createElement("div");
    why.className = "path"; why.textContent = "matched by " + m.p;
    cap.appendChild(why);
  }
  fig.appendChild(cap);
  return fig;
}
function show(page) {
  page = Math.min(Math.max(1, page), pages);
  const main = document.getElementById("groups");
  main.textContent = "";
  for (const g of groups.slice((page - 1) * size, page * size)) {
    const sec = document.createElement("section");
    sec.className = "group"; sec.dataset.group = g.id;
    const h = document.createElement("h2");
    h.textContent = "Group " + g.id + ": " + g.m.length + " images";
    sec.appendChild(h);
    const row = document.createElement("div");
    row.className = "members";
    g.m.forEach(function (m) { row.appendChild(member(m)); });
    sec.appendChild(row);
    main.appendChild(sec);
  }
  document.getElementById("page").textContent = page;
  document.getElementById("prev").disabled = page === 1;
  document.getElementById("next").disabled = page === pages;
  if (location.hash !== "#page=" + page) history.replaceState(null, "", "#page=" + page);
  window.scrollTo(0, 0);
  current = page;
}
let current = 1;
document.getElementById("pages").textContent = pages;
document.getElementById("summary").textContent = " \\u2014 " + groups.length + " groups, " + images + " images";
document.body.dataset.groups = groups.length;
document.body.dataset.images = images;
document.getElementById("prev").onclick = function () { show(current - 1); };
document.getElementById("next").onclick = function () { show(current + 1); };
const m = /^#page=(\\d+)$/.exec(location.hash);
show(m ? parseInt(m[1], 10) : 1);
document.body.dataset.ready = "1";
</script>
</body></html>
"""
