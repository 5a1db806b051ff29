"""The storage layout: field names, the passage numbers and token keys, a server's
limits, and the small helpers every part of the repository shares (no engine calls)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType

from ...errors import InvalidInputError, InvalidMetadataError, InvalidVectorError
from ...records import Capabilities, StoredPassage
from ...validation import MAX_STRING_BYTES
from .._codec import units_to_json
from .._milvus_filter import filter_document

T = TypeVar("T")

TOKEN_BITS = 13
#: token vectors per passage in the portable layout
MAX_TOKENS = 1 << TOKEN_BITS
#: token vectors per passage in the struct layout (a server's ARRAY max_capacity)
STRUCT_MAX_TOKENS = 4096
_BLOCK_BITS = TOKEN_BITS + 1  # a generation bit above the token index
PNUM_BITS = 63 - _BLOCK_BITS
_PNUM_ATTEMPTS = 64
TOKENS_SUFFIX = "__tokens"
PROPERTY = "agrame"
LAYOUT_FORMAT = 1

# server limits (Milvus Lite accepts more; we hold everything to these)
MAX_DIM = 32768
MAX_VARCHAR = MAX_STRING_BYTES  # 65535, for text and doc id on every engine
MAX_JSON = 65536
MAX_TOPK = 16384


class F:
    """Fields of the passages collection."""

    ID = "id"
    PNUM = "pnum"
    BASE = "tok_base"
    NTOK = "n_tokens"
    DOC = "doc_id"
    INDEX = "passage_index"
    TEXT = "text"
    UNITS = "units"
    META = "metadata"
    FX = "fx"
    VERSION = "schema_version"
    POOLED = "pooled"
    #: a lexical collection's sparse vector, the term ids it holds and their number (:mod:`.lexical`)
    LEX = "lexical"
    TERMS = "lex_terms"
    NTERMS = "lex_n"
    #: the struct layout's ARRAY<STRUCT{vec}> of token vectors, and those vectors as a search names them
    STRUCT = "tokens"
    SVEC = "vec"
    STRUCT_ANNS = f"{STRUCT}[{SVEC}]"


class TOK:
    """Fields of the token collection (portable layout)."""

    PK = "pk"
    PNUM = "pnum"
    VEC = "vec"


_READ_FIELDS = [F.ID, F.BASE, F.NTOK, F.DOC, F.INDEX, F.TEXT, F.UNITS, F.META, F.VERSION, F.POOLED]


def token_pk(pnum: int, gen: int, t: int) -> int:
    """The primary key of token ``t`` of generation ``gen`` of passage number ``pnum``."""
    return (pnum << _BLOCK_BITS) | (gen << TOKEN_BITS) | t


def pnum_candidates(pid: str) -> Iterable[int]:
    """The passage numbers ``pid`` may take, in order of preference (49-bit hashes).

    >>> next(iter(pnum_candidates("00000000-0000-4000-8000-000000000000"))) < 2**49
    True
    """
    for attempt in range(_PNUM_ATTEMPTS):
        h = hashlib.blake2b(f"{pid}/{attempt}".encode("ascii"), digest_size=8).digest()
        yield int.from_bytes(h, "big") & ((1 << PNUM_BITS) - 1)


@dataclass(frozen=True, slots=True)
class MilvusCapabilities(Capabilities):
    """Capabilities plus what is particular to Milvus.

    ``layout``: the layout new collections get (``tokens`` or ``struct``);
    ``struct_maxsim``: the server is new enough for Array of Structs with MAX_SIM
    (>= 2.6.4; the field itself is checked by reading the schema back);
    ``first_stage``: ``pooled`` or ``tokens``; ``server_version`` as reported.
    """

    layout: str = "tokens"
    struct_maxsim: bool = False
    first_stage: str = "pooled"
    server_version: str = ""


def _hit_key(hit: Any, pk: str) -> Any:
    """The primary key of a search hit (keyed by the field's name, or ``id``)."""
    for key in (pk, "id"):
        try:
            return hit[key]
        except (KeyError, TypeError):
            pass
    return hit.id


def _state_name(state: Any) -> str:
    s = state.get("state") if isinstance(state, dict) else state
    return getattr(s, "name", str(s))


def _parse_version(text: str) -> tuple[int, int, int]:
    """``v2.3.5-lite`` -> (2, 3, 5); Milvus Lite (``milvus_lite-3.2.2``) -> (0, 0, 0)."""
    if text.startswith("milvus_lite"):
        return (0, 0, 0)
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def _has_struct_field(desc: dict[str, Any]) -> bool:
    for f in desc.get("fields", []):
        if f.get("name") == F.STRUCT and f.get("element_type") == DataType.STRUCT:
            return True
    return False


def _has_lexical_fields(desc: dict[str, Any]) -> bool:
    types = {f.get("name"): f.get("type") for f in desc.get("fields", [])}
    return (
        types.get(F.LEX) == DataType.SPARSE_FLOAT_VECTOR
        and types.get(F.TERMS) == DataType.ARRAY
        and types.get(F.NTERMS) == DataType.INT64
    )


def _vector_index(kind: str, metric: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if kind == "HNSW":
        params = {"M": 16, "efConstruction": 128}
    elif kind == "IVF_FLAT":
        params = {"nlist": 1024}
    return {"index_type": kind, "metric_type": metric, "params": params}


def _units_json(p: StoredPassage) -> str:
    return json.dumps(units_to_json(p.units), separators=(",", ":")) if p.units else ""


def _row_bytes(row: dict[str, Any], dim: int, vectors: int) -> int:
    """An estimate of a passage row's bytes in a request."""
    size = 256 + dim * 4 * vectors
    for key in (F.TEXT, F.DOC, F.UNITS):
        size += _utf8_len(row[key])
    for key in (F.META, F.FX):
        size += len(json.dumps(row[key], separators=(",", ":")))
    return size + 24 * len(row.get(F.TERMS, ()))  # a sparse entry and an array element per term


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def _check_limits(p: StoredPassage, max_tokens: int) -> None:
    """A Milvus server's limits on one passage (InvalidInputError children)."""
    what = f"passage {p.id}"
    if not isinstance(p.tokens, np.ndarray) or p.tokens.ndim != 2:
        return  # the shared checks report it
    if p.tokens.shape[0] > max_tokens:
        raise InvalidVectorError(
            f"{what} has {p.tokens.shape[0]} token vectors; a Milvus passage holds at most {max_tokens} "
            "(split the passage)"
        )
    # text, doc id and metadata sizes: the shared checks (the same limits on every engine)
    units = _units_json(p)
    if _utf8_len(units) > MAX_VARCHAR:
        raise InvalidInputError(
            f"{what}: its units take {_utf8_len(units)} UTF-8 bytes; Milvus strings hold at most {MAX_VARCHAR}"
        )
    try:
        fx = json.dumps(filter_document(p.doc_id, p.index, p.metadata), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"{what}: metadata is not JSON: {exc}") from exc
    if _utf8_len(fx) > MAX_JSON:
        raise InvalidMetadataError(
            f"{what}: the filter index of its metadata takes {_utf8_len(fx)} bytes (long lists of numbers take "
            f"~350 bytes per number); Milvus holds at most {MAX_JSON}: drop or shorten list-valued metadata"
        )


def _chunks(seq: Sequence[T] | list[T], size: int) -> Iterable[list[T]]:
    seq = list(seq)
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _id_bound(prefix: int) -> str:
    """The id-string bound for a 48-bit prefix: ``xxxxxxxx-xxxx``."""
    h = f"{prefix:012x}"
    return f"{h[:8]}-{h[8:]}"
