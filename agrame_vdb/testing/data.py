"""Small deterministic passages for the conformance suite, and the references the
suite checks engines against (exact cosine, brute-force MaxSim)."""

from __future__ import annotations

import numpy as np

from agrame_vdb.repository import StoredPassage
from agrame_vdb.units import Unit

DIM = 16
LANGS = ("en", "fr", "de")
TAGS = ("a", "b", "c", "d")


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def metadata(i: int) -> dict:
    m = {
        "lang": LANGS[i % 3],
        "year": 2000 + i % 12,
        "score": round((i * 37 % 100) / 100, 2),
        "published": i % 4 == 0,
        "tags": [TAGS[i % 4], TAGS[(i + 1) % 4]] if i % 5 else [],
        "source": {"name": "wiki" if i % 2 else "news", "rank": i % 3},
    }
    if i % 3 == 0:
        m["optional"] = i
    return m


def make_passages(n: int = 30, *, seed: int = 0, dim: int = DIM, docs: int = 6) -> list[StoredPassage]:
    """``n`` passages over ``docs`` documents, 3 to 12 unit-norm tokens each, with units."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_tok = int(rng.integers(3, 13))
        text = f"Passage {i} first sentence. Second one here."
        half = text.index("Second")
        units = (
            Unit("sentence", 0, ((0, half - 1),), ((0, n_tok // 2),)),
            Unit("sentence", 1, ((half, len(text)),), ((n_tok // 2, n_tok),)),
            Unit("proposition", 0, ((0, 7), (half, half + 6)), ((0, 1), (n_tok // 2, n_tok // 2 + 1))),
        )
        out.append(
            StoredPassage.create(
                f"doc-{i % docs}",
                i // docs,
                unit_vectors(rng, n_tok, dim),
                units=units,
                text=text,
                metadata=metadata(i),
            )
        )
    return out


def cosine_order(query: np.ndarray, passages: list[StoredPassage]) -> list[tuple[str, float]]:
    """Exact cosine of pooled vectors, best first (the first-stage reference)."""
    q = query.astype(np.float64) / np.linalg.norm(query)
    scored = []
    for p in passages:
        v = p.pooled.astype(np.float64)
        scored.append((p.id, float(v @ q / np.linalg.norm(v))))
    return sorted(scored, key=lambda t: -t[1])


def maxsim(query_tokens: np.ndarray, tokens: np.ndarray) -> float:
    """Brute-force MaxSim: sum over query tokens of the best dot product."""
    return float((query_tokens.astype(np.float64) @ tokens.astype(np.float64).T).max(axis=1).sum())
