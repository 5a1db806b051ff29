"""Milvus behind the repository protocol: Milvus Lite (embedded) or a Milvus server.

``connect("milvus-lite:///data/agrame.db")`` opens Milvus Lite in process (its
"file" is a directory; one process at a time); ``connect("milvus://host:19530")``
a server (``?secure=1`` for TLS, token from ``?token=`` or ``MILVUS_TOKEN``,
``?db_name=`` or ``milvus://host:19530/db_name``). Options (URL query or keyword
arguments; :class:`.url.MilvusOptions`):

==================  =========================================================  ================
option              meaning                                                    default
==================  =========================================================  ================
``layout``          ``tokens`` (portable) or ``struct`` (Array of Structs,     ``tokens``
                    Milvus >= 2.6.4) for collections created from now on
``first_stage``     ``pooled``, or ``tokens``: per-token ANN aggregated per    ``pooled``
                    passage when ``candidates()`` gets query tokens
``pooled_index``    index of the pooled vector: FLAT (exact), HNSW, AUTOINDEX  FLAT (Lite),
                                                                               HNSW (server)
``token_index``     index of the token vectors (``tokens`` layout)             FLAT
``token_k``         hits per query token of the ``tokens`` first stage         64
``consistency``     read consistency on a server (Session: read your writes)   Session
``retries``         attempts of a server call on transient errors              3
``timeout``         seconds per server call                                    60
``shards_num``      shards of the collections created (a server; Milvus's      the server's (1)
                    ``create_collection(shards_num=)``)
``replica_number``  in-memory replicas of the collections loaded (a server     the server's (1)
                    with as many query nodes; ``load_collection``)
==================  =========================================================  ================

``shards_num`` and ``replica_number`` place the data on the nodes of a cluster
(docs/cluster.md): ints >= 1, checked before any call; Milvus Lite refuses them.

Portable layout (``layout=tokens``; :mod:`.layout`), two Milvus collections per agrame
collection ``name``: ``name`` holds one row per passage (``id``, the UUID string, as
primary key; its number ``pnum``; ``tok_base`` and ``n_tokens``, where its current token
rows are; ``doc_id``, ``passage_index``, ``text``, ``units`` as compact JSON,
``metadata``, the filter document ``fx`` of :mod:`.._milvus_filter`,
``schema_version`` and the ``pooled`` vector with a COSINE index, the first stage;
the agrame schema is the collection property ``agrame``), and ``name__tokens`` one
row per token vector (``pk`` INT64 primary key, ``pnum`` with an INVERTED/STL_SORT
index, ``vec`` with an IP index).

Ids. A passage's number is a 49-bit BLAKE2b hash of its id (``pnum_candidates``);
when another id owns it (probability ~n²/2⁵⁰ for n passages) the next hash (``id/1``,
``id/2``, …) is tried, and the number in use is stored in the passage row, so readers
never recompute it. A token's key is ``pk = pnum·2¹⁴ + gen·2¹³ + t`` for its position
``t < 8192`` and a generation bit ``gen``: each passage owns the key block
``[pnum·2¹⁴, (pnum+1)·2¹⁴)``.

Writes (:mod:`.write`), one ``upsert`` batch: read the batch's existing rows; write the
token rows into the *other* generation (the visible version's rows are not touched);
write the passage rows, each the atomic commit marker of its passage, naming the new
generation and token count; for a rewritten passage, delete the rest of its key block
(the old generation, anything past the new count). A failure before the passage rows
leaves the old version whole and visible (the new token rows are unreachable; the
next write overwrites or deletes them); after them the new version is complete.
Readers (:mod:`.read`) see a passage only through its row and read exactly the
``n_tokens`` rows from ``tok_base`` it names; one that finds fewer (a concurrent
rewrite committed and cleaned in between) reads the row again. ``delete`` removes the
passage row first, then its token rows. ``collect_garbage()`` (:mod:`.gc`) removes
token rows no passage row reaches; it reads every token key, so it is not part of
``optimize()``, which flushes and builds indexes.

First stage. ``candidates(pooled)`` searches the pooled vectors (COSINE).
``candidates(pooled, tokens=q)`` takes the pooled top ``prefetch`` and ranks it by
exact MaxSim over the stored token rows (float64, in numpy; ``maxsim_rerank`` is True
on every layout). With ``first_stage=tokens`` the candidates come from an ANN search
of every query token over the token rows, aggregated per passage as in colbert-live
(sum over query tokens of the best hit; a query token without a hit in a passage
counts its lowest hit), filtered on the passage rows, completed by the pooled stage
when too few pass the filter.

Lexical first stage (:mod:`.lexical`; Milvus Lite and servers >= 2.4, which have
sparse vectors; Milvus 2.3 reports ``lexical=False``): a collection created with
``lexical`` holds in each passage row, in the same upsert, the BM25 term-frequency
sparse vector of its text (SPARSE_INVERTED_INDEX, IP) and the array of its term ids;
a query's IDF weights come from ``count(*)`` of the passages holding each term, over
the whole collection, so scores equal BM25 under the collection's own tokenisation
(Milvus's BM25 function is not used). ``d + 3`` requests for ``d`` distinct query
terms; hybrid is the library's RRF of the pooled and lexical branches.

Struct layout (``layout=struct``, Milvus >= 2.6.4): one collection; the token vectors
are an ``ARRAY<STRUCT{vec}>`` field with a ``MAX_SIM_IP`` HNSW index, so writes are
single-row atomic and ``candidates(tokens=...)`` reranks by the engine's MAX_SIM.
Milvus Lite and 2.3 servers *silently drop* such a field: it is checked by reading the
schema back (:mod:`.ddl`), and UnsupportedOperationError says so where it is missing.

Storage dtypes: float16 and int8 collections are stored as float32
(``storage_options_honoured`` is False); fetch returns what was written. Reads on a
server are ``Session`` (they wait for this process's writes); a delete answers no
usable timestamp on Milvus 2.3, so reads of a collection in the seconds after this
client deleted from it are ``Strong``. Aliases are Milvus aliases of the passages
collection.

Limits of a Milvus server are enforced before any write, also on Milvus Lite (which
accepts more): dim <= 32768, units <= 65535 UTF-8 bytes, the metadata's filter
document <= 65536 bytes as JSON, at most 8192 token vectors per passage (4096 in the
struct layout), at most 16384 hits per search; text, doc id and metadata are held to
a server's limits by the shared checks, on every engine. Long ``in`` lists and large
requests are split into chunks.

Milvus Lite (:mod:`.lite`): a collection with an index reopens released, so it is
loaded on open; index specs are created on the empty collection and built by
``load`` or after a flush, never inside a long ``create_index`` call (which times out).

Server calls are retried with tenacity on transient errors (:mod:`.calls`). pymilvus
logs every failed call at ERROR on its own stderr handler before raising; the calls
this repository makes become typed errors, so a filter on the ``pymilvus`` loggers
drops the records logged *during this repository's calls* and hands them to the
``agrame_vdb.repositories.milvus`` logger at DEBUG; pymilvus's levels and handlers are
left alone, and what it logs during a caller's own pymilvus calls still shows.
What leans on private pymilvus attributes, for speed, is in :mod:`.request`.
"""

from __future__ import annotations

from typing import Any

try:
    from pymilvus import DataType, MilvusClient  # noqa: F401
    from pymilvus.exceptions import MilvusException  # noqa: F401
except ImportError as exc:  # pragma: no cover - connect() turns this into StoreUnavailableError
    raise ModuleNotFoundError(str(exc), name="pymilvus") from exc

from ...errors import InvalidInputError
from .. import StoreURL, _placement
from .._options import parse_options
from .calls import is_transient
from .ddl import Collections
from .gc import Maintenance
from .layout import (
    MAX_TOKENS,
    PNUM_BITS,
    STRUCT_MAX_TOKENS,
    TOKEN_BITS,
    TOKENS_SUFFIX,
    MilvusCapabilities,
    _has_struct_field,  # noqa: F401 - tests and benchmarks import these three from here
    _parse_version,  # noqa: F401
    _vector_index,  # noqa: F401
    pnum_candidates,
    token_pk,
)
from .url import SERVER_ONLY, MilvusOptions, server_uri

__all__ = [
    "MilvusRepository",
    "MilvusCapabilities",
    "MilvusOptions",
    "from_url",
    "is_transient",
    "pnum_candidates",
    "token_pk",
    "TOKEN_BITS",
    "PNUM_BITS",
    "TOKENS_SUFFIX",
    "MAX_TOKENS",
    "STRUCT_MAX_TOKENS",
]

class MilvusRepository(Maintenance, Collections):
    """Milvus Lite (``path=``) or a Milvus server (``uri=``); see the package docs."""


def from_url(url: StoreURL, **options: Any) -> MilvusRepository:
    kwargs = parse_options(MilvusOptions, options, "Milvus")
    secure = kwargs.pop("secure", False)
    if url.scheme == "milvus-lite":
        if not url.location:
            raise InvalidInputError(f"milvus-lite needs a path, as in milvus-lite:///data/agrame.db; got {url.shown!r}")
        _placement.refuse_embedded(kwargs, _placement.MILVUS, "Milvus Lite", _placement.MILVUS_SERVER)
        if secure or any(name in kwargs for name in SERVER_ONLY):
            raise InvalidInputError("secure, token and db_name are server options; Milvus Lite takes none")
        return MilvusRepository(path=url.location, **kwargs)
    return MilvusRepository(uri=server_uri(url, secure), **kwargs)
