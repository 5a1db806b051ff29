"""Which documents a shard of an indexing job takes, and where a job keeps its files.

``shard=(i, n)`` keeps the documents whose id hashes to ``i`` mod ``n`` (BLAKE2b of
the id, the same in every process), so ``n`` workers index one input together.
``"env/N"`` takes ``i`` from ``JOB_COMPLETION_INDEX``, the index a Kubernetes Indexed
Job gives each of its pods (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import InvalidInputError

__all__ = ["shard_of", "parse_shard", "default_job_paths", "INDEX_VARIABLE"]

#: where ``env/N`` reads the shard: the completion index of a Kubernetes Indexed Job's pod
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"


def shard_of(doc_id: str, shards: int) -> int:
    """The shard (``0 <= s < shards``) of a document id: BLAKE2b of its UTF-8, mod ``shards``.

    >>> shard_of("doc-1", 1), shard_of("doc-1", 4) == shard_of("doc-1", 4)
    (0, True)
    """
    if shards == 1:
        return 0
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def parse_shard(value: str | tuple[int, int], environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"i/N"`` (or ``(i, N)``) as ``(i, N)`` with ``0 <= i < N``; ``"env/N"`` reads
    ``i`` from ``JOB_COMPLETION_INDEX`` in ``environ`` (default: the process's).

    >>> parse_shard("2/8")
    (2, 8)
    >>> parse_shard("env/8", {"JOB_COMPLETION_INDEX": "5"})
    (5, 8)
    """
    if isinstance(value, str) and value.partition("/")[0] == "env":
        index = (os.environ if environ is None else environ).get(INDEX_VARIABLE)
        if index is None:
            raise InvalidInputError(
                f"a shard {value!r} takes its index from {INDEX_VARIABLE}, which is not set (a Kubernetes "
                "Indexed Job sets it in each pod); elsewhere give the shard as 'i/N'"
            )
        try:
            return parse_shard(f"{index}/{value.partition('/')[2]}", {})
        except InvalidInputError:
            raise InvalidInputError(
                f"a shard {value!r} with {INDEX_VARIABLE}={index!r} is no shard: 'i/N' with 0 <= i < N"
            ) from None
    try:
        if isinstance(value, str):
            i_text, n_text = value.split("/")
            i, n = int(i_text), int(n_text)
        else:
            i, n = (int(x) for x in value)
    except (ValueError, TypeError):
        raise InvalidInputError(f"a shard is 'i/N' with 0 <= i < N (e.g. 0/4), got {value!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidInputError(f"a shard is 'i/N' with 0 <= i < N (e.g. 0/4), got {value!r}")
    return i, n


def default_job_paths(
    store: str, collection: str, source: str | Path, shard: tuple[int, int] = (0, 1)
) -> tuple[Path | None, Path]:
    """Where the CLI keeps a job's checkpoint and rejects file by default.

    In ``<store root>/.agrame-jobs/`` for Qdrant Edge (the checkpoint lives and dies
    with the data it describes), else in ``./.agrame-jobs/``; no checkpoint for
    ``memory://`` (nothing outlives the process). The name holds the collection,
    the input's name and a hash of its absolute path, and the shard.
    """
    from .repositories import DEFAULT_EDGE_PATH, parse_url

    url = parse_url(store)
    root = Path(url.location or DEFAULT_EDGE_PATH) if url.scheme == "qdrant-edge" else Path(".")
    directory = root / ".agrame-jobs"
    src = Path(source)
    tag = hashlib.sha1(str(src.resolve()).encode("utf-8")).hexdigest()[:8]
    name = f"{collection}-{src.stem}-{tag}" + (f"-shard-{shard[0]}-of-{shard[1]}" if shard[1] > 1 else "")
    checkpoint = None if url.scheme == "memory" else directory / f"{name}.checkpoint.json"
    return checkpoint, directory / f"{name}.rejects.jsonl"
