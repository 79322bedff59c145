"""What the web-like crawl serves: the plan (hosts, faults, formats), the image files and the TLS CA.

Everything is a pure function of ``(seed, rows, faults)`` so the driver (``bench/web.py``),
the server (``bench/webserver.py``) and the scoring agree on the truth without passing it
around. The image of row ``i`` depends only on ``(seed, i)``, so a 300-row development run
reuses the first 300 files of a 5,000-row corpus; files are generated once, in parallel,
into ``CORPUS_ROOT/v{VERSION}-s{seed}/`` and reused by every later session.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the pictures or their sizes change: it names the cache directory
CORPUS_ROOT = Path(os.environ.get("BENCH_WEB_CORPUS", "/tmp/pipeline-web-corpus"))
HOST_NET = "127.0.1."  # hosts are 127.0.1.1 ... 127.0.1.N: loopback, no /etc/hosts needed

# Format mix of a crawl of photo URLs (share of rows). Extension is what the URL ends with.
FORMAT_MIX = {
    "jpeg": 0.50, "jpeg-progressive": 0.15, "png": 0.10, "png-alpha": 0.05,
    "webp": 0.12, "avif": 0.04, "gif": 0.04,
}  # fmt: skip
EXTENSION = {"jpeg": "jpg", "jpeg-progressive": "jpg", "png": "png", "png-alpha": "png",
             "webp": "webp", "avif": "avif", "gif": "gif"}  # fmt: skip
MIME = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
}
ASPECTS = ((4, 3), (3, 2), (16, 9), (1, 1), (3, 4), (2, 3), (9, 16))
ASPECT_WEIGHTS = (0.30, 0.20, 0.12, 0.10, 0.12, 0.10, 0.06)
MEDIAN_MP, SIGMA_MP, MIN_MP, MAX_MP = 0.74, 0.65, 0.03, 6.0

# Fault shares (of rows). "good" kinds end with an image for a client that retries and
# follows redirects; the others must end as an error of the class in EXPECTED.
FAULT_SHARES = {"404": 0.03, "500": 0.01, "503-then-200": 0.01, "hang": 0.005, "reset": 0.005,
                "redirect": 0.01, "html": 0.01}  # fmt: skip
GOOD_KINDS = frozenset({"ok", "503-then-200", "redirect", "429-first"})
EXPECTED = {  # fault kind -> acceptable error classes (pipeline's names)
    "404": frozenset({"http_4xx"}),
    "500": frozenset({"http_5xx"}),
    "hang": frozenset({"timeout"}),
    "reset": frozenset({"truncated", "connect"}),  # a body cut by RST: either is honest
    "html": frozenset({"not_image", "decode_error"}),
}
HTTPS_SHARE = 0.80  # of rows, by whole hosts
CAPPED_HOST_SHARE = 0.25  # hosts whose every connection is bandwidth-capped
CAP_MBPS = (1.0, 4.0)  # per connection, uniform
THROTTLE_HOST_RANKS = (4, 19)  # 0-based Zipf ranks of the two hosts answering 429 (~150 and ~45 URLs)
THROTTLE_SHARE = 0.10  # of their URLs: the first request gets 429 + Retry-After
RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class Host:
    index: int  # 0-based; address is HOST_NET + str(index + 1)
    https: bool
    cap_bytes_per_s: float | None  # per connection; None = uncapped
    throttles: bool  # answers 429 + Retry-After to THROTTLE_SHARE of its URLs' first requests

    @property
    def address(self) -> str:
        return f"{HOST_NET}{self.index + 1}"


@dataclass(frozen=True, slots=True)
class Row:
    row: int
    host: int
    kind: str  # "ok", a fault in FAULT_SHARES, or "429-first"
    fmt: str  # the picture's format (also for fault rows: what the URL looks like)
    width: int
    height: int

    @property
    def ext(self) -> str:
        return EXTENSION[self.fmt]

    @property
    def good(self) -> bool:
        return self.kind in GOOD_KINDS


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    faults: bool
    hosts: tuple[Host, ...]
    rows: tuple[Row, ...]

    def path(self, row: Row) -> str:
        """URL path; the redirect fault answers at /r/ and sends to /i/ (the same picture)."""
        prefix = "r" if row.kind == "redirect" else "i"
        return f"/{prefix}/{row.row}.{row.ext}"


def url(plan: Plan, ports: dict[str, int], row: Row, path: str | None = None) -> str:
    """The row's URL once the server has its ports (``path`` overrides the plan's)."""
    host = plan.hosts[row.host]
    scheme = "https" if host.https else "http"
    return f"{scheme}://{host.address}:{ports[host.address]}{path or plan.path(row)}"


# -- the plan ------------------------------------------------------------------------------


def zipf_counts(rows: int, hosts: int, s: float = 1.0) -> list[int]:
    """URLs per host, rank 0 first, weights 1/k^s, at least one each (largest remainder)."""
    weights = [1.0 / (k + 1) ** s for k in range(hosts)]
    total = sum(weights)
    raw = [max(1.0, rows * w / total) for w in weights]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(hosts), key=lambda k: raw[k] - counts[k], reverse=True)
    i = 0
    while sum(counts) < rows:
        counts[by_remainder[i % hosts]] += 1
        i += 1
    while sum(counts) > rows:  # only when rows < hosts-ish: trim the largest
        counts[counts.index(max(counts))] -= 1
    return counts


def picture(seed: int, row: int) -> tuple[str, int, int]:
    """(format, width, height) of row ``row``: depends on (seed, row) only."""
    rng = np.random.default_rng([seed, row, 1])
    fmt = str(rng.choice(list(FORMAT_MIX), p=list(FORMAT_MIX.values())))
    mp = float(np.clip(MEDIAN_MP * math.exp(rng.normal(0.0, SIGMA_MP)), MIN_MP, MAX_MP))
    aw, ah = ASPECTS[int(rng.choice(len(ASPECTS), p=ASPECT_WEIGHTS))]
    height = max(16, round(math.sqrt(mp * 1e6 * ah / aw)))
    width = max(16, round(height * aw / ah))
    return fmt, width, height


def make_plan(seed: int, rows: int, n_hosts: int = 150, faults: bool = True) -> Plan:
    rng = np.random.default_rng([seed, 0])
    n_hosts = min(n_hosts, rows)
    counts = zipf_counts(rows, n_hosts)
    # HTTPS by whole hosts, ~HTTPS_SHARE of rows: hosts in random order go plain HTTP
    # while the plain share stays under 1 - HTTPS_SHARE.
    plain, plain_rows = set(), 0
    for k in rng.permutation(n_hosts):
        if plain_rows + counts[k] <= (1 - HTTPS_SHARE) * rows:
            plain.add(int(k))
            plain_rows += counts[k]
    capped = {int(k) for k in rng.choice(n_hosts, size=round(CAPPED_HOST_SHARE * n_hosts), replace=False)}
    caps = rng.uniform(*CAP_MBPS, size=n_hosts) * 1e6
    throttling = {k for k in THROTTLE_HOST_RANKS if k < n_hosts} if faults else set()
    hosts = tuple(
        Host(k, k not in plain, float(caps[k]) if k in capped else None, k in throttling)
        for k in range(n_hosts)
    )
    host_of = rng.permutation(np.repeat(np.arange(n_hosts), counts))  # rows of every host interleaved
    kinds = ["ok"] * rows
    if faults:
        order = iter(rng.permutation(rows))
        for kind, share in FAULT_SHARES.items():
            for _ in range(round(share * rows)):
                kinds[int(next(order))] = kind
        for r in range(rows):
            if kinds[r] == "ok" and int(host_of[r]) in throttling and rng.random() < THROTTLE_SHARE:
                kinds[r] = "429-first"
    out = []
    for r in range(rows):
        fmt, w, h = picture(seed, r)
        out.append(Row(r, int(host_of[r]), kinds[r], fmt, w, h))
    return Plan(seed, faults, hosts, tuple(out))


# -- the files -----------------------------------------------------------------------------


def corpus_dir(seed: int) -> Path:
    return CORPUS_ROOT / f"v{VERSION}-s{seed}"


def image_file(seed: int, row: int, ext: str) -> Path:
    return corpus_dir(seed) / f"{row:06d}.{ext}"


def _generate(args: tuple[int, int]) -> int:
    from bench.photos import encode, photo

    seed, row = args
    fmt, w, h = picture(seed, row)
    path = image_file(seed, row, EXTENSION[fmt])
    if path.exists():
        return 0
    # Seed of the pixels: distinct per (seed, row), so every URL has its own bytes.
    data = encode(photo(seed * 1_000_003 + row, w, h), fmt)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.rename(path)  # atomic: an interrupted generation never leaves a half file
    return len(data)


def missing_rows(seed: int, rows: Iterable[int]) -> list[int]:
    return [r for r in rows if not image_file(seed, r, EXTENSION[picture(seed, r)[0]]).exists()]


def ensure_corpus(seed: int, rows: Iterable[int], procs: int | None = None) -> int:
    """Encode every missing picture; returns how many were made."""
    corpus_dir(seed).mkdir(parents=True, exist_ok=True)
    missing = [(seed, r) for r in missing_rows(seed, rows)]
    if not missing:
        return 0
    print(f"web corpus: encoding {len(missing):,} photographs into {corpus_dir(seed)} (once)", flush=True)
    with ProcessPoolExecutor(procs or os.cpu_count() or 1) as pool:
        for i, _ in enumerate(pool.map(_generate, missing, chunksize=8), 1):
            if i % 500 == 0:
                print(f"  {i:,}/{len(missing):,}", flush=True)
    return len(missing)


# -- the local CA --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path  # what clients trust (SSL_CERT_FILE / REQUESTS_CA_BUNDLE)
    cert: Path  # the servers' chain: leaf + CA
    key: Path


def ensure_certs(directory: Path, n_hosts: int) -> Certs:
    """A local CA and one leaf certificate whose IP SANs are every host (EC P-256: cheap handshakes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certs = Certs(
        directory / f"ca-{n_hosts}.pem",
        directory / f"hosts-{n_hosts}.pem",
        directory / f"hosts-{n_hosts}.key",
    )
    if certs.ca.exists() and certs.cert.exists() and certs.key.exists():
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    later = now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline bench local CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(f"{HOST_NET}{k + 1}")) for k in range(n_hosts)]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline bench hosts")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(later)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    certs.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    certs.cert.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    certs.ca.write_bytes(ca.public_bytes(pem))
    return certs
