"""Shared by the indexing tests: a corpus maker, a fake encoder, a flaky repository, snapshots."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from agrame_vdb.encoder import EncodedPassage
from agrame_vdb.errors import TransientRepositoryError
from agrame_vdb.checkpoints import load_tokenizer
from agrame_vdb.units import align_units, segment

TOPICS = ["towers", "rivers", "proteins", "vaccines", "glaciers", "bridges", "enzymes", "comets"]


def make_docs(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    """``n`` short documents of 2 to 5 sentences, with titles and metadata."""
    docs = []
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        sentences = [f"Document {i} is about {topic}."]
        for k in range(1 + i % 4):
            sentences.append(f"Fact {k} says that {topic} number {i * 7 + k} changed in {1900 + i + k}.")
        docs.append({"id": f"doc-{i}", "text": " ".join(sentences), "title": f"On {topic} {i}",
                     "metadata": {"topic": topic, "n": i}})
    return docs


def write_jsonl(path: Path, records: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


class FakeEncoder:
    """Deterministic token vectors looked up from the token ids, no transformer.

    Only for tests where the encoder is not what is tested: it tokenizes, marks and
    aligns units exactly as :class:`~agrame_vdb.encoder.MultiVectorEncoder` does, so
    passages, units and token counts are the real ones; only the vectors are not.
    """

    dim = 16

    def __init__(self) -> None:
        self.tokenizer, config = load_tokenizer("minilm-frozen-128")  # its [CLS] [D] text [SEP] layout, as below
        self.config = dataclasses.replace(config, dim=self.dim)
        self.dtype = "float32"
        self.device = "cpu"
        self.calls = 0
        table = np.random.default_rng(0).standard_normal((self.tokenizer.vocab_size, self.dim)).astype(np.float32)
        self._table = table / np.linalg.norm(table, axis=1, keepdims=True)

    def encode_passages(self, passages, units=None, *, sentences=True, batch_size=32):
        self.calls += 1
        budget = self.config.doc_maxlen - 3
        enc = self.tokenizer([p.text for p in passages], add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)
        out = []
        for i, p in enumerate(passages):
            ids, offsets = enc["input_ids"][i], [tuple(o) for o in enc["offset_mapping"][i]]
            kept, kept_offsets = ids[:budget], offsets[:budget]
            encoded_chars = len(p.text) if len(ids) <= budget else kept_offsets[-1][1]
            full = [101, 2, *kept, 102]
            offs = (None, None, *kept_offsets, None)
            found = segment(p, sentences=sentences, units=units[i] if units is not None else ())
            aligned = align_units(found, offs, encoded_chars)
            vectors = np.ascontiguousarray(self._table[full])
            out.append(EncodedPassage(p, vectors, aligned.units, tuple(full), offs, encoded_chars, aligned.truncated))
        return out


class FlakyRepository:
    """A repository wrapper whose upserts fail with TransientRepositoryError.

    The first ``fail_first`` upserts fail; after ``down_after`` successful upserts
    every later one fails (the store went away for good).
    """

    def __init__(self, inner: Any, *, fail_first: int = 0, down_after: int | None = None) -> None:
        self.inner = inner
        self.fail_first = fail_first
        self.down_after = down_after
        self.attempts = 0
        self.upserts = 0

    def upsert(self, collection, passages, **kwargs):
        self.attempts += 1
        if self.fail_first > 0:
            self.fail_first -= 1
            raise TransientRepositoryError("qdrant at localhost:6333 is restarting (connection refused)")
        if self.down_after is not None and self.upserts >= self.down_after:
            raise TransientRepositoryError("qdrant at localhost:6333: connection refused")
        self.upserts += 1
        return self.inner.upsert(collection, passages, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def snapshot(repo: Any, collection: str) -> dict[str, Any]:
    """Every stored passage by id: doc id, index, text, units, metadata, token vectors."""
    ids = list(repo.iter_ids(collection))
    out = {}
    for p in repo.fetch(collection, ids, strict=True):
        out[p.id] = SimpleNamespace(
            doc_id=p.doc_id, index=p.index, text=p.text, metadata=dict(p.metadata),
            units=[(u.kind, u.index, u.char_spans, u.token_ranges) for u in p.units],
            tokens=np.array(p.tokens), pooled=np.array(p.pooled),
        )
    return out


def assert_same_collection(a: dict[str, Any], b: dict[str, Any], *, atol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    for pid in a:
        x, y = a[pid], b[pid]
        assert (x.doc_id, x.index, x.text, x.units, x.metadata) == (y.doc_id, y.index, y.text, y.units, y.metadata), pid
        assert x.tokens.shape == y.tokens.shape, pid
        np.testing.assert_allclose(x.tokens, y.tokens, atol=atol, rtol=0)
        np.testing.assert_allclose(x.pooled, y.pooled, atol=max(atol, 1e-6), rtol=0)
