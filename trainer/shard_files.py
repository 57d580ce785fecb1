"""The id tables of a checkpoint as per-rank pieces (issue 12): no rank ever holds a whole table.

Gathering the tables on rank 0 for every checkpoint (what :func:`trainer.sharded.gather_state` does)
needs the whole of every table, and its optimizer state, in one process: at 1B users x 48-d that is
192 GB of weights on a rank that holds a few GB of its own shards. Instead each rank writes the pieces
it holds, one file per piece, and the checkpoint names the directory::

    <checkpoint>/shards/<tag>/r<rank>-<n>.npy   the piece's values (numpy's format, memory-mappable)
    <checkpoint>/shards/<tag>/r<rank>-<n>.json  {"kind": "model" | "sparse", "key": canonical table key,
                                                 "name": optimizer state name (sparse only),
                                                 "offsets": [row, column]}, written after the values

A piece is written from the rank's own tensor (a view into TorchRec's fused buffer) into a
``.npy`` file a block of rows at a time: saving adds no copy of the shard to the rank's memory.

``checkpoint.pt`` (written by rank 0 after every rank has written its pieces, then atomically
replaced) holds the dense parameters, the dense optimizer, the progress pointer and ``shards``:
``{"dir": "shards/<tag>", "sizes": {"model/<key>" | "sparse/<key>/<name>": [whole shape]}}``. A run
killed while pieces are being written leaves the previous ``checkpoint.pt`` naming the previous tag,
whose files are only removed once the new ``checkpoint.pt`` is in place. Every rank must see the same
checkpoint directory (one machine, or a shared file system), as for reading a gathered checkpoint.

Readers get a :class:`PiecedTable` per table: a rank resuming reads only the region of its own shards
(the pieces are memory-mapped), whatever the world size that wrote them; ``keep export`` and the other
whole-model readers ask for :meth:`PiecedTable.whole`.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARDS = "shards"
#: Rows copied at a time when a piece is written or a table read by region is copied out (bounds the
#: memory a save, a resume or a load adds to one block).
CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class Piece:
    """One rank's piece of a table: its offsets in the whole table and its values."""

    offsets: tuple[int, ...]
    values: np.ndarray

    def window(self, offsets: Sequence[int], sizes: Sequence[int]) -> tuple[tuple[slice, ...], ...] | None:
        """``(slices into the region, slices into this piece)`` of their overlap, or None."""
        into_region, into_piece = [], []
        for o, n, po, pn in zip(offsets, sizes, self.offsets, self.values.shape, strict=True):
            lo, hi = max(o, po), min(o + n, po + pn)
            if lo >= hi:
                return None
            into_region.append(slice(lo - o, hi - o))
            into_piece.append(slice(lo - po, hi - po))
        return tuple(into_region), tuple(into_piece)


@dataclass(frozen=True)
class PiecedTable:
    """A table (or one optimizer state of it) kept as pieces; read by region."""

    size: tuple[int, ...]
    pieces: tuple[Piece, ...]
    dtype: np.dtype[Any]

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    def region(self, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        """The values of ``[offsets, offsets + sizes)``; raises if a part of it is in no piece."""
        out = np.empty(tuple(sizes), dtype=self.dtype)
        covered = 0
        for piece in self.pieces:
            overlap = piece.window(offsets, sizes)
            if overlap is None:
                continue
            into_region, into_piece = overlap
            out[into_region] = piece.values[into_piece]
            covered += out[into_region].size
        if covered != out.size:
            raise ValueError(f"the pieces cover {covered} of {out.size} values of the region asked")
        return torch.from_numpy(out)

    def whole(self) -> torch.Tensor:
        return self.region([0] * len(self.size), self.size)

    def release(self) -> None:
        """Unmap the pages read so far (they stay in the page cache): a reader copying a table block by
        block holds one block of it, not every page it has touched."""
        for piece in self.pieces:
            mapping = getattr(piece.values, "_mmap", None)
            if mapping is not None:
                mapping.madvise(mmap.MADV_DONTNEED)


def read_region(table: Any, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    """``[offsets, offsets + sizes)`` of a whole tensor or of a table read by region (a
    :class:`PiecedTable`, a :class:`trainer.models.growth.GrownTable`)."""
    if isinstance(table, torch.Tensor):
        return table[tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))]
    return table.region(offsets, sizes)


def release(table: Any) -> None:
    """Let go of the pages a table read by region has mapped (nothing for a tensor)."""
    if hasattr(table, "release"):
        table.release()


def copy_region(target: torch.Tensor, table: Any, offsets: Sequence[int]) -> None:
    """Fill ``target`` with the region of ``table`` (a tensor, or a table read by region) that starts at
    ``offsets`` and has ``target``'s shape, :data:`CHUNK_ROWS` rows at a time, unmapping the pages read
    after each block: the copy never holds more of ``table`` than one block."""
    sizes = target.shape
    for lo in range(0, sizes[0], CHUNK_ROWS):
        hi = min(sizes[0], lo + CHUNK_ROWS)
        target[lo:hi].copy_(read_region(table, [offsets[0] + lo, *offsets[1:]], [hi - lo, *sizes[1:]]))
        release(table)


def readable(table: torch.Tensor | PiecedTable, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows ``rows`` = ``[lo, hi)`` of ``table`` (all of it by default) as one tensor to read from
    (inference): a tensor, sliced; a table kept in one piece, that piece memory-mapped (no copy: its
    pages are the page cache's, read as touched); else (a table split by columns or rows) one copy of
    those rows alone, filled by :func:`copy_region`."""
    lo, hi = rows if rows is not None else (0, table.shape[0])
    if not 0 <= lo <= hi <= table.shape[0]:
        raise ValueError(f"rows [{lo}, {hi}) are not within the table's {table.shape[0]}")
    if isinstance(table, torch.Tensor):
        return table[lo:hi]
    if len(table.pieces) == 1 and table.pieces[0].values.shape == table.size:
        return torch.from_numpy(table.pieces[0].values[lo:hi])
    out = torch.from_numpy(np.empty((hi - lo, *table.size[1:]), dtype=table.dtype))
    copy_region(out, table, [lo] + [0] * (len(table.size) - 1))
    return out


def new_tag(step: int) -> str:
    """A directory name for one checkpoint's pieces (from ``os.urandom``: drawing from torch's global
    generator would make training depend on how often it checkpoints)."""
    return f"{step:012d}-{os.getpid()}-{os.urandom(4).hex()}"


def write_pieces(root: Path, tag: str, rank: int, pieces: Iterable[dict[str, Any]]) -> int:
    """This rank's pieces under ``root/shards/tag/``; the number written."""
    directory = root / SHARDS / tag
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, piece in enumerate(pieces, start=1):
        values = piece["tensor"].detach().numpy()
        stem = f"r{rank}-{n}"
        tmp = directory / f".{stem}.npy.tmp"
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(values))
            for lo in range(0, len(values), CHUNK_ROWS):  # a strided view: a block of rows at a time
                f.write(np.ascontiguousarray(values[lo : lo + CHUNK_ROWS]).data)
        os.replace(tmp, directory / f"{stem}.npy")
        meta = {k: piece[k] for k in ("kind", "key", "name", "offsets")}
        (directory / f".{stem}.json.tmp").write_text(json.dumps(meta))
        os.replace(directory / f".{stem}.json.tmp", directory / f"{stem}.json")
    return n


def read_pieces(root: Path, meta: dict[str, Any]) -> dict[str, PiecedTable]:
    """``{"model/<key>" | "sparse/<key>/<name>": PiecedTable}`` of a checkpoint's ``shards`` entry."""
    directory = root / meta["dir"]
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: the table pieces this checkpoint names are missing")
    found: dict[str, list[Piece]] = {}
    for file in sorted(directory.glob("r*-*.json")):
        entry = json.loads(file.read_text())
        # copy-on-write: a tensor over the mapping is writable (no warning) and never writes the file
        values = np.load(file.with_suffix(".npy"), mmap_mode="c")
        name = _name(entry["kind"], entry["key"], entry.get("name"))
        found.setdefault(name, []).append(Piece(tuple(entry["offsets"]), values))
    sizes = meta["sizes"]
    missing = sorted(set(sizes) - set(found))
    if missing:
        raise FileNotFoundError(f"{directory}: no pieces of {missing}")
    return {
        name: PiecedTable(tuple(size), tuple(found[name]), found[name][0].values.dtype)
        for name, size in sizes.items()
    }


def remove_others(root: Path, keep: str) -> None:
    """Drop the piece directories of earlier checkpoints (after the new one is in place)."""
    base = root / SHARDS
    if not base.is_dir():
        return
    for directory in base.iterdir():
        if directory.name != keep:
            shutil.rmtree(directory, ignore_errors=True)


def _name(kind: str, key: str, name: str | None) -> str:
    return f"{kind}/{key}" if kind == "model" else f"{kind}/{key}/{name}"


def model_name(key: str) -> str:
    return _name("model", key, None)


def sparse_name(key: str, name: str) -> str:
    return _name("sparse", key, name)
