"""The BatchGet answer on the wire, for both sides: :class:`Packed` (what the read path builds),
:func:`to_proto` (the servicer) and :func:`lookup_from_proto` / :func:`unpack` (clients, in-process
callers) turning the packed bytes into a :class:`gkc.lookup.Lookup`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.knowledge import Dims
from gkc.lookup import Lookup
from protos import gkc_pb2
from services.errors import KeepError

F32 = np.dtype("<f4")
F16 = np.dtype("<f2")


class CorruptData(KeepError):
    """Stored or received vectors do not match the manifest dims (INTERNAL / 500)."""


@dataclass(frozen=True)
class Packed:
    """A lookup answer as packed bytes (the wire layout of ``keep.gkc.v1.BatchGetResponse``)."""

    version: int
    publish_id: str
    checksum: str
    float16: bool
    dims: Dims
    user: bytes
    user_found: bool
    items: bytes
    item_rows: int
    item_found: bytes
    item_index: bytes
    ucs: bytes
    uc_rows: int
    uc_found: bytes
    uc_index: bytes

    def to_lookup(self) -> Lookup:
        return unpack(
            (self.version, self.publish_id, self.checksum),
            self.float16,
            self.dims,
            (self.user, self.user_found),
            (self.items, self.item_rows, self.item_found, self.item_index),
            (self.ucs, self.uc_rows, self.uc_found, self.uc_index),
        )


def unpack(
    identity: tuple[int, str, str],
    float16: bool,
    dims: Dims,
    user: tuple[bytes, bool],
    items: tuple[bytes, int, bytes, bytes],
    ucs: tuple[bytes, int, bytes, bytes],
) -> Lookup:
    """Bytes → :class:`Lookup` (float32 arrays). ``identity`` = (version, publish id, checksum)."""
    dtype = F16 if float16 else F32

    def block(data: bytes, rows: int, dim: int) -> np.ndarray:
        arr = np.frombuffer(data, dtype=dtype)
        if arr.size != rows * dim:
            raise CorruptData(f"block has {arr.size} values, expected {rows} x {dim}")
        return arr.reshape(rows, dim).astype(np.float32)

    return Lookup(
        version=identity[0],
        user=block(user[0], 1, dims.user)[0],
        user_found=user[1],
        items=block(items[0], items[1], dims.item),
        item_found=np.frombuffer(items[2], dtype=np.uint8).astype(bool),
        item_index=np.frombuffer(items[3], dtype="<i4").astype(np.int32),
        ucs=block(ucs[0], ucs[1], dims.uc),
        uc_found=np.frombuffer(ucs[2], dtype=np.uint8).astype(bool),
        uc_index=np.frombuffer(ucs[3], dtype="<i4").astype(np.int32),
        publish_id=identity[1],
        checksum=identity[2],
    )


def to_proto(p: Packed) -> gkc_pb2.BatchGetResponse:
    return gkc_pb2.BatchGetResponse(
        version=p.version,
        format=gkc_pb2.WIRE_FORMAT_FLOAT16 if p.float16 else gkc_pb2.WIRE_FORMAT_FLOAT32,
        user=p.user,
        user_dim=p.dims.user,
        user_found=p.user_found,
        items=gkc_pb2.Block(
            data=p.items, rows=p.item_rows, dim=p.dims.item, found=p.item_found, index=p.item_index
        ),
        user_categories=gkc_pb2.Block(
            data=p.ucs, rows=p.uc_rows, dim=p.dims.uc, found=p.uc_found, index=p.uc_index
        ),
        publish_id=p.publish_id,
        checksum=p.checksum,
    )


def lookup_from_proto(resp: gkc_pb2.BatchGetResponse) -> Lookup:
    dims = Dims(user=resp.user_dim, item=resp.items.dim, uc=resp.user_categories.dim)
    it, uc = resp.items, resp.user_categories
    return unpack(
        (resp.version, resp.publish_id, resp.checksum),
        resp.format == gkc_pb2.WIRE_FORMAT_FLOAT16,
        dims,
        (resp.user, resp.user_found),
        (it.data, it.rows, it.found, it.index),
        (uc.data, uc.rows, uc.found, uc.index),
    )
