"""What goes around pymilvus's public API, for speed, isolated here: each function
leans on a private attribute of pymilvus and falls back (or is skipped) where it is
missing, so a pymilvus release that changes one slows a call down, never breaks it.

- :func:`_handler`: ``MilvusClient._get_connection()``, the connection handler whose
  ``upsert`` takes a prepared request (None where it is missing: row dicts are sent).
- :func:`_token_upsert_request`: a hand-built protobuf ``UpsertRequest`` of token rows
  (``pymilvus.grpc_gen.milvus_pb2``), the vectors packed as one little-endian float32
  block instead of one Python float each.
- :func:`_columns`: a query answer's ``_lazy_field_data``, read column-wise (the answer's
  rows are materialised instead where it is missing or does not fit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymilvus import DataType

from .layout import TOK

def _handler(client: Any) -> Any:
    """pymilvus's connection handler, whose ``upsert`` takes a prepared request (or None)."""
    get = getattr(client, "_get_connection", None)
    try:
        conn = get() if get is not None else None
    except Exception:
        return None
    return conn if conn is not None and hasattr(conn, "upsert") else None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _token_upsert_request(name: str, pks: np.ndarray, pnums: np.ndarray, vecs: np.ndarray) -> Any:
    """An UpsertRequest of token rows, built column-wise: the vectors go in as one packed
    little-endian float32 block instead of one Python float each."""
    from pymilvus.grpc_gen import milvus_pb2

    req = milvus_pb2.UpsertRequest(collection_name=name, num_rows=len(pks))
    for field, values in ((TOK.PK, pks), (TOK.PNUM, pnums)):
        f = req.fields_data.add()
        f.type = DataType.INT64
        f.field_name = field
        f.scalars.long_data.data.extend(values.tolist())
    f = req.fields_data.add()
    f.type = DataType.FLOAT_VECTOR
    f.field_name = TOK.VEC
    f.vectors.dim = int(vecs.shape[1])
    raw = np.ascontiguousarray(vecs, dtype="<f4").tobytes()
    f.vectors.float_vector.MergeFromString(b"\x0a" + _varint(len(raw)) + raw)  # FloatArray.data, packed
    return req


def _columns(res: Any, key: str, vec: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and vectors of a query answer without per-float Python objects where possible."""
    rows = list.__getitem__(res, slice(None)) if isinstance(res, list) else list(res)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    for fd in getattr(res, "_lazy_field_data", ()) or ():
        if getattr(fd, "field_name", None) == vec and len(fd.valid_data) == 0:
            data = fd.vectors.float_vector.data
            if len(data) == len(rows) * dim:
                pks = np.fromiter((r[key] for r in rows), dtype=np.int64, count=len(rows))
                return pks, np.asarray(data, dtype=np.float32).reshape(len(rows), dim)
    full = list(res)  # materialises the vectors as Python lists
    pks = np.fromiter((r[key] for r in full), dtype=np.int64, count=len(full))
    return pks, np.asarray([r[vec] for r in full], dtype=np.float32).reshape(len(full), dim)
