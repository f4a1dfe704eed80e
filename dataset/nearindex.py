"""Near-duplicate lookup over 64-bit perceptual hashes in sublinear time, kept in flat arrays that a
file beside the index holds, so a million hashes open in a fraction of a second.

**Multi-index hashing.** Each hash is cut into :data:`NHASH` substrings of :data:`SUBSTRING_BITS`
bits (the 64th bit is left out of the tables, not out of the distance). Two hashes within d bits
agree within ``d // NHASH`` bits on at least one substring (pigeonhole), so probing every table
with every key within that many flipped bits finds every hash within d -- exactly, not
approximately -- while looking at a few hundred candidates instead of every hash. Radii above
:data:`MAX_HASHED_RADIUS` (3 flipped bits of 21 would probe thousands of keys) are answered by a
full XOR + popcount scan.

**Flat tables** (:class:`Tables`, a CSR layout): per table, the positions of the hashes sorted by
their substring (``order``) and where each of the 2**21 substrings' run begins (``offsets``); a
probe is two array reads, a lookup a dozen numpy calls. Flat arrays are what a file can hold as
is: :func:`write_tables` writes them with a header (the watermark of the last database row they
hold, a SHA-256 of the content), :func:`read_tables` maps them back (``mmap``: nothing is parsed
or built, the kernel pages in what the lookups touch).

**Growth.** Hashes added after the tables were built (the *tail*) are scanned in full until
:data:`TAIL_MERGE_ROWS` have gathered; then :func:`merge` makes new tables, linear in the size
(each table's sorted runs get the new positions at their ends; nothing is sorted again but the
tail), and the caller writes them out (dataset/index.py). Hashes are never removed: a deleted
row's sequence number goes into :attr:`NearIndex.dead` and is never reported again.

Entries are keyed by the index row's ``seq`` (the caller maps a hit to its image id with one
query), so the memory per hash is 8 bytes of hash, 8 of seq and 12 of tables: ~280 MB at 10M.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataset.errors import NearFileInvalid

NHASH = 3
SUBSTRING_BITS = 21
BUCKETS = 1 << SUBSTRING_BITS
MAX_HASHED_RADIUS = 8  # 2 flipped bits per 21-bit table; beyond that the scan is as fast
TAIL_MERGE_ROWS = 65_536  # hashes scanned in full before new tables are made (~0.1 ms a lookup)
_MASK = np.uint64(BUCKETS - 1)
_SHIFTS = np.array([SUBSTRING_BITS * t for t in range(NHASH)], dtype=np.uint64)


def _flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every ``bits``-bit value with at most ``flips`` bits set, fewest first."""
    values = np.arange(1 << bits, dtype=np.uint32)
    counts = np.bitwise_count(values)
    return np.concatenate([values[counts == f] for f in range(flips + 1)])


# Probe keys per number of flipped bits: 1, 22 and 232 per table.
_FLIPS = [_flip_masks(SUBSTRING_BITS, f) for f in range(MAX_HASHED_RADIUS // NHASH + 1)]


@dataclass(frozen=True, eq=False)
class Tables:
    """The immutable, sorted part: ``n`` hashes, their seqs, and the NHASH tables over them.

    ``offsets[t * (BUCKETS + 1) + key]`` is where substring ``key`` of table ``t`` begins in
    ``order`` (already counting the ``t * n`` entries of the tables before it), so one gather
    reads the candidates of every table.
    """

    hashes: np.ndarray  # uint64 [n]
    seqs: np.ndarray  # int64 [n]
    offsets: np.ndarray  # uint32 [NHASH * (BUCKETS + 1)]
    order: np.ndarray  # uint32 [NHASH * n]: positions in hashes, by substring within each table

    @property
    def n(self) -> int:
        return len(self.hashes)

    def within(self, phash: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, distances) of the hashes within ``max_distance`` bits (unordered)."""
        if self.n == 0:
            return _EMPTY_POS, _EMPTY_POS
        q = np.uint64(phash)
        if max_distance > MAX_HASHED_RADIUS:
            dist = np.bitwise_count(self.hashes ^ q)
            pos = np.flatnonzero(dist <= max_distance)
            return pos, dist[pos].astype(np.int64)
        keys = (q >> _SHIFTS) & _MASK
        probes = (keys[:, None] ^ _FLIPS[max_distance // NHASH][None, :]).astype(np.int64)
        probes += (np.arange(NHASH, dtype=np.int64) * (BUCKETS + 1))[:, None]
        probes = probes.ravel()
        starts = self.offsets[probes].astype(np.int64)
        lengths = self.offsets[probes + 1].astype(np.int64) - starts
        hit = lengths > 0
        starts, lengths = starts[hit], lengths[hit]
        if len(lengths) == 0:
            return _EMPTY_POS, _EMPTY_POS
        ends = np.cumsum(lengths)
        index = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)
        candidates = self.order[index]
        dist = np.bitwise_count(self.hashes[candidates] ^ q)
        near = dist <= max_distance
        pos, first = np.unique(candidates[near], return_index=True)  # found by several tables
        return pos.astype(np.int64), dist[near][first].astype(np.int64)


_EMPTY_POS = np.zeros(0, dtype=np.int64)


def empty_tables() -> Tables:
    return Tables(
        np.zeros(0, dtype=np.uint64),
        np.zeros(0, dtype=np.int64),
        np.zeros(NHASH * (BUCKETS + 1), dtype=np.uint32),
        np.zeros(0, dtype=np.uint32),
    )


class NearIndex:
    """Tables plus a tail of hashes added since they were built; see the module docstring."""

    def __init__(self, tables: Tables | None = None, dead: Iterable[int] = ()) -> None:
        self.tables = tables if tables is not None else empty_tables()
        self._tail_hashes = np.zeros(1024, dtype=np.uint64)
        self._tail_seqs = np.zeros(1024, dtype=np.int64)
        self.tail_size = 0
        self.dead: set[int] = {int(s) for s in dead}  # seqs of rows known to be gone

    def __len__(self) -> int:
        return self.tables.n + self.tail_size

    def __contains__(self, seq: object) -> bool:
        """Whether a row is held (and not known to be gone): a linear scan, for tests and checks."""
        if not isinstance(seq, int) or seq in self.dead:
            return False
        return bool((self.tables.seqs == seq).any() or (self.tail_seqs == seq).any())

    @property
    def tail_hashes(self) -> np.ndarray:
        return self._tail_hashes[: self.tail_size]

    @property
    def tail_seqs(self) -> np.ndarray:
        return self._tail_seqs[: self.tail_size]

    def add(self, seqs: np.ndarray, hashes: np.ndarray) -> None:
        """Append rows (int64 seqs, uint64 hashes) to the tail."""
        k = len(seqs)
        if k == 0:
            return
        need = self.tail_size + k
        if need > len(self._tail_hashes):
            size = max(2 * len(self._tail_hashes), need)
            self._tail_hashes = _grown(self._tail_hashes, size, self.tail_size)
            self._tail_seqs = _grown(self._tail_seqs, size, self.tail_size)
        self._tail_hashes[self.tail_size : need] = hashes
        self._tail_seqs[self.tail_size : need] = seqs
        self.tail_size = need

    def forget(self, seq: int) -> None:
        self.dead.add(int(seq))

    def within(self, phash: int, max_distance: int) -> list[tuple[int, int]]:
        """(distance, seq) of every live hash within ``max_distance`` bits, nearest first (then the
        earliest row)."""
        if max_distance < 0 or len(self) == 0:
            return []
        pos, dist = self.tables.within(phash, max_distance)
        found = list(zip(dist.tolist(), self.tables.seqs[pos].tolist(), strict=True))
        if self.tail_size:
            tail_dist = np.bitwise_count(self.tail_hashes ^ np.uint64(phash))
            hits = np.flatnonzero(tail_dist <= max_distance)
            found += zip(tail_dist[hits].tolist(), self.tail_seqs[hits].tolist(), strict=True)
        if self.dead:
            found = [f for f in found if f[1] not in self.dead]
        return sorted(found)

    def snapshot(self) -> tuple[Tables, np.ndarray, np.ndarray]:
        """What :func:`merge` needs, safe to hand to another thread: the tail is copied."""
        return self.tables, self.tail_hashes.copy(), self.tail_seqs.copy()

    def adopt(self, tables: Tables, merged_rows: int) -> None:
        """Take tables that hold the old ones plus the first ``merged_rows`` of the tail."""
        rest = self.tail_size - merged_rows
        self._tail_hashes[:rest] = self._tail_hashes[merged_rows : self.tail_size]
        self._tail_seqs[:rest] = self._tail_seqs[merged_rows : self.tail_size]
        self.tail_size = rest
        self.tables = tables


def _grown(array: np.ndarray, size: int, used: int) -> np.ndarray:
    out = np.zeros(size, dtype=array.dtype)
    out[:used] = array[:used]
    return out


def _substrings(hashes: np.ndarray, table: int) -> np.ndarray:
    return ((hashes >> _SHIFTS[table]) & _MASK).astype(np.int64)


def merge(
    tables: Tables, hashes: np.ndarray, seqs: np.ndarray, out: dict[str, np.ndarray] | None = None
) -> Tables:
    """New tables holding ``tables`` and the rows (``hashes``, ``seqs``) after them, in time linear in
    the total: each table's runs keep their order and get the new positions appended (only the new
    rows are sorted). ``out``: arrays to write into (a file's memory map, :func:`write_tables`)."""
    n, k = tables.n, len(hashes)
    total = n + k
    if total >= 1 << 32:
        raise ValueError(f"{total} hashes: the tables address at most 2**32 - 1")
    arrays = out or {
        "hashes": np.empty(total, dtype=np.uint64),
        "seqs": np.empty(total, dtype=np.int64),
        "offsets": np.empty(NHASH * (BUCKETS + 1), dtype=np.uint32),
        "order": np.empty(NHASH * total, dtype=np.uint32),
    }
    arrays["hashes"][:n], arrays["hashes"][n:] = tables.hashes, hashes
    arrays["seqs"][:n], arrays["seqs"][n:] = tables.seqs, seqs
    new_positions = np.arange(n, total, dtype=np.uint64)
    for t in range(NHASH):
        span = slice(t * (BUCKETS + 1), (t + 1) * (BUCKETS + 1))
        old = tables.offsets[span].astype(np.int64) - t * n  # this table's own offsets
        keys = _substrings(hashes, t)
        # the new rows by substring, then position: one sort of (key << 32 | position)
        by_key = np.sort((keys.astype(np.uint64) << np.uint64(32)) | new_positions)
        sorted_keys = (by_key >> np.uint64(32)).astype(np.int64)
        sorted_positions = (by_key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        added = np.zeros(BUCKETS + 1, dtype=np.int64)
        added[1:] = np.cumsum(np.bincount(keys, minlength=BUCKETS))
        arrays["offsets"][span] = old + added + t * total
        # each new position goes at the end of its substring's run (after every older position)
        arrays["order"][t * total : (t + 1) * total] = np.insert(
            tables.order[t * n : (t + 1) * n], old[sorted_keys + 1], sorted_positions
        )
    return Tables(arrays["hashes"], arrays["seqs"], arrays["offsets"], arrays["order"])


# ---- the file --------------------------------------------------------------------------------

MAGIC = b"EXPNEAR1"
FORMAT_VERSION = 1
HEADER_BYTES = 4096  # magic, the header's length, the SHA-256, the header as JSON; then the arrays
_TEXT_AT = len(MAGIC) + 4 + 32
_ALIGN = 64


def _layout(n: int, dead: int, gaps: int) -> tuple[list[tuple[str, np.dtype, int, int]], int]:
    """(name, dtype, count, offset) of each array, and the file's size."""
    specs: list[tuple[str, np.dtype, int]] = [
        ("hashes", np.dtype(np.uint64), n),
        ("seqs", np.dtype(np.int64), n),
        ("offsets", np.dtype(np.uint32), NHASH * (BUCKETS + 1)),
        ("order", np.dtype(np.uint32), NHASH * n),
        ("dead", np.dtype(np.int64), dead),
        ("gaps", np.dtype(np.int64), gaps),
    ]
    out: list[tuple[str, np.dtype, int, int]] = []
    pos = HEADER_BYTES
    for name, dtype, count in specs:
        out.append((name, dtype, count, pos))
        pos += -(-count * dtype.itemsize // _ALIGN) * _ALIGN
    return out, pos


def _digest(text: bytes, handle, start: int, end: int) -> bytes:
    """SHA-256 of the header's text and of the arrays: no byte of the file goes unchecked."""
    sha = hashlib.sha256(text)
    handle.seek(start)
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    left = end - start
    while left > 0:
        got = handle.readinto(view[: min(len(buf), left)])
        if not got:
            raise NearFileInvalid(f"the file ends {left} bytes early")
        sha.update(view[:got])
        left -= got
    return sha.digest()


def write_tables(
    path: Path,
    tables: Tables,
    tail_hashes: np.ndarray,
    tail_seqs: np.ndarray,
    *,
    dead: Iterable[int],
    gaps: Iterable[int],
    meta: dict[str, Any],
) -> Tables:
    """Merge the tail into the tables straight into a new file at ``path`` (written to a temp file,
    flushed, then renamed over it: readers see the old file or the new one, never a part), and
    return the new tables mapped from it. ``meta`` goes into the header (the caller's watermark)."""
    dead_seqs = np.array(sorted(dead), dtype=np.int64)
    gap_seqs = np.array(sorted(gaps), dtype=np.int64)
    n = tables.n + len(tail_hashes)
    specs, size = _layout(n, len(dead_seqs), len(gap_seqs))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with open(temp, "w+b") as handle:
            handle.truncate(size)
            with mmap.mmap(handle.fileno(), size) as mapped:
                arrays = {
                    name: np.frombuffer(mapped, dtype=dtype, count=count, offset=offset)
                    for name, dtype, count, offset in specs
                }
                merge(tables, tail_hashes, tail_seqs, out=arrays)
                arrays["dead"][:] = dead_seqs
                arrays["gaps"][:] = gap_seqs
                del arrays  # the views must go before the map closes
                mapped.flush()
            header = {
                "version": FORMAT_VERSION,
                "n": n,
                "dead": len(dead_seqs),
                "gaps": len(gap_seqs),
                "nhash": NHASH,
                "bits": SUBSTRING_BITS,
                "meta": meta,
            }
            text = json.dumps(header, sort_keys=True).encode()
            if _TEXT_AT + len(text) > HEADER_BYTES:
                raise ValueError("the near-duplicate file's header does not fit")
            digest = _digest(text, handle, HEADER_BYTES, size)
            handle.seek(0)
            handle.write(MAGIC + struct.pack("<I", len(text)) + digest + text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_dir(path.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return read_tables(path, verify=False)[0]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class NearFile:
    tables: Tables
    dead: list[int]
    gaps: list[int]
    meta: dict[str, Any]


def read_header(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """The header of a near-duplicate file, its text and the file's SHA-256 as written;
    NearFileInvalid if there is none to read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
    except FileNotFoundError as exc:
        raise NearFileInvalid("no file") from exc
    except OSError as exc:
        raise NearFileInvalid(f"unreadable: {exc}") from exc
    if len(head) < HEADER_BYTES or head[: len(MAGIC)] != MAGIC:
        raise NearFileInvalid("not a near-duplicate file of this format")
    (length,) = struct.unpack_from("<I", head, len(MAGIC))
    text, digest = head[_TEXT_AT : _TEXT_AT + length], head[_TEXT_AT - 32 : _TEXT_AT]
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise NearFileInvalid(f"its header is damaged ({exc})") from exc
    if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
        raise NearFileInvalid(f"format version {header.get('version') if isinstance(header, dict) else '?'}")
    if header.get("nhash") != NHASH or header.get("bits") != SUBSTRING_BITS:
        raise NearFileInvalid("made with other table sizes")
    return header, text, digest


def read_tables(path: Path, *, verify: bool = True) -> tuple[Tables, NearFile]:
    """Map a file written by :func:`write_tables`. ``verify``: its SHA-256 is checked (every byte
    read once) and the tables' shape too; a file that fails is NearFileInvalid, never used."""
    header, text, digest = read_header(path)
    try:
        n, dead, gaps = int(header["n"]), int(header["dead"]), int(header["gaps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NearFileInvalid(f"its header lacks {exc}") from exc
    specs, size = _layout(n, dead, gaps)
    with open(path, "rb") as handle:
        actual = os.fstat(handle.fileno()).st_size
        if actual != size:
            raise NearFileInvalid(f"{actual} bytes where its header says {size}")
        if verify and _digest(text, handle, HEADER_BYTES, size) != digest:
            raise NearFileInvalid("its content does not match its checksum")
        # MAP_POPULATE: every page mapped now (from the page cache the checksum just filled), so no
        # lookup pays a page fault later: the latency is flat from the first image on, and the RSS
        # counts the whole file from the start (what the lookups would touch over time anyway).
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(handle.fileno(), size, flags=flags, prot=mmap.PROT_READ)
    arrays = {
        name: np.frombuffer(mapped, dtype=dtype, count=count, offset=offset)
        for name, dtype, count, offset in specs
    }
    tables = Tables(arrays["hashes"], arrays["seqs"], arrays["offsets"], arrays["order"])
    if verify:
        _check_shape(tables)
    near = NearFile(tables, arrays["dead"].tolist(), arrays["gaps"].tolist(), dict(header.get("meta") or {}))
    return tables, near


def _check_shape(tables: Tables) -> None:
    n = tables.n
    for t in range(NHASH):
        offsets = tables.offsets[t * (BUCKETS + 1) : (t + 1) * (BUCKETS + 1)]
        if (
            int(offsets[0]) != t * n
            or int(offsets[-1]) != (t + 1) * n
            or (np.diff(offsets.astype(np.int64)) < 0).any()
        ):
            raise NearFileInvalid(f"table {t} is not a sorted table of {n} hashes")
    if n and int(tables.order.max()) >= n:
        raise NearFileInvalid("a table points past the hashes")
