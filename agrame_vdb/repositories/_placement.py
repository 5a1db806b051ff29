"""Where a server puts a collection's data: shard and replica counts, checked before any
engine call.

These are options of a store URL on a server (``http://qdrant-0:6333?shard_number=6``,
``milvus://proxy:19530?shards_num=4``); they apply to the collections that connection
creates (Milvus: ``replica_number`` to the collections it loads) and leave existing
ones as they are. Embedded engines (Qdrant Edge, qdrant-local, Milvus Lite) are one
process on one machine: they have no shards or replicas to place and refuse the options.

>>> counts({"shard_number": 6, "replication_factor": None})
{'shard_number': 6}
>>> counts({"shards_num": 0})
Traceback (most recent call last):
...
agrame_vdb.errors.InvalidInputError: shards_num must be an int >= 1, got 0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidInputError

__all__ = ["QDRANT", "MILVUS", "QDRANT_SERVER", "MILVUS_SERVER", "counts", "refuse_embedded"]

#: a Qdrant server's collection placement: the names of ``create_collection``'s arguments
QDRANT = ("shard_number", "replication_factor", "write_consistency_factor")
#: a Milvus server's: ``create_collection(shards_num=)``, ``load_collection(replica_number=)``
MILVUS = ("shards_num", "replica_number")
#: what takes them, as the messages of the embedded engines name it
QDRANT_SERVER = "Qdrant server (http://qdrant-0:6333?shard_number=6&replication_factor=2)"
MILVUS_SERVER = "Milvus server (milvus://milvus-proxy:19530?shards_num=4&replica_number=2)"


def counts(values: Mapping[str, Any]) -> dict[str, int]:
    """The counts given (None: not given), each checked to be an int >= 1."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be an int >= 1, got {value!r}")
        out[name] = value
    return out


def refuse_embedded(given: Iterable[str], names: tuple[str, ...], engine: str, server: str) -> None:
    """InvalidInputError when any of ``names`` is among the options ``given`` to the
    embedded ``engine``; the message names the server URL that takes them."""
    found = [n for n in names if n in set(given)]
    if found:
        raise InvalidInputError(
            f"{', '.join(found)}: {engine} is embedded (one process, one machine) and has no shards or replicas; "
            f"{', '.join(names)} are options of a {server} (see docs/cluster.md)"
        )
