"""Damage to the Qdrant Edge token copy never changes a search result.

The token copy (``repositories/_token_store.py``: a data file of raw vector bytes
and a SQLite index) is only a copy: the engine is the source of truth. Hypothesis
chooses damage to either file (an offset, anywhere or at a spot that holds rows:
vector bytes, units blobs, kind names, the data file's name; a length; zero bytes,
random bytes or one flipped bit), then a search at every granularity must equal
the one over the undamaged store read with no token copy at all
(``?token_copy=0``), and every passage must still read back whole. The data file
is damaged under the open store (its memory map sees it), the index with the
store closed (then opened again).
"""

from __future__ import annotations

import shutil
import sqlite3
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agrame_vdb import CollectionSchema, connect

from ..conformance._data import DIM, make_passages
from ..test_qdrant_edge import _results  # every unit's search result: the reference the damaged store must match
from . import report
from .harness import typed_or_ok

EXAMPLES = 300 if report.FULL else 30
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not report.FULL, database=None,
                    suppress_health_check=list(HealthCheck))
PASSAGES = make_passages(12)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """An undamaged store (its index checkpointed into the main file), the reference
    results read from the engine alone, and the spots in each file that hold rows."""
    root = tmp_path_factory.mktemp("tokencopy") / "store"
    repo = connect(f"qdrant-edge://{root}")
    repo.create_collection(CollectionSchema("c", DIM))
    repo.upsert("c", PASSAGES)
    repo.optimize("c")
    repo.close()
    repo = connect(f"qdrant-edge://{root}?token_copy=0")
    reference = _results(repo)
    repo.close()
    d = root / "c"
    index = (d / "tokens.sqlite").read_bytes()
    (data_file,) = d.glob("tokens.sqlite.*.bin")
    con = sqlite3.connect(d / "tokens.sqlite")
    rows = con.execute("SELECT pos, n, units FROM tokens").fetchall()
    con.close()
    hot = {
        "data": sorted(p + k for p, n, _ in rows for k in (0, n * DIM * 2)),  # a row's start and middle
        "index": sorted(
            {index.find(u) for *_, u in rows}
            | {index.find(name) for name in (b"sentence", b"proposition", data_file.name.encode())}
            | {0, 16, 28, 40}  # the header's page size, page count, schema cookie
        ),
    }
    assert -1 not in hot["index"]
    return root, reference, hot


damages = st.fixed_dictionaries({
    "target": st.sampled_from(["data", "index"]),
    "where": st.one_of(st.floats(0, 1, exclude_max=True), st.integers(0, 10**6)),  # anywhere, or a hot spot
    "shift": st.integers(-16, 16),
    "length": st.integers(1, 4096),
    "kind": st.sampled_from(["zero", "random", "bit"]),
    "seed": st.integers(0, 2**32 - 1),
})


def _damage(path, hot, damage) -> None:
    data = bytearray(path.read_bytes())
    where = damage["where"]
    if isinstance(where, float):
        offset = int(where * len(data))
    else:
        offset = min(max(hot[where % len(hot)] + damage["shift"], 0), len(data) - 1)
    rng = np.random.default_rng(damage["seed"])
    end = min(offset + damage["length"], len(data))
    if damage["kind"] == "zero":
        data[offset:end] = bytes(end - offset)
    elif damage["kind"] == "random":
        data[offset:end] = rng.bytes(end - offset)
    else:
        data[offset] ^= 1 << int(rng.integers(8))
    with path.open("r+b") as out:  # in place: an open memory map sees it
        out.write(data)


@SETTINGS
@given(damage=damages)
def test_damaged_token_copy_searches_equal_the_engine(pristine, tmp_path_factory, damage):
    source, reference, hot = pristine
    root = tmp_path_factory.mktemp("damaged") / "store"
    shutil.copytree(source, root)
    d = root / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an index damaged past reading is set aside with a warning
        if damage["target"] == "index":
            _damage(d / "tokens.sqlite", hot["index"], damage)
        repo = connect(f"qdrant-edge://{root}")
        try:
            repo.open_collection("c")
            if damage["target"] == "data":
                (data_file,) = d.glob("tokens.sqlite.*.bin")
                _damage(data_file, hot["data"], damage)
            out = typed_or_ok(lambda: _results(repo), f"search after {damage}")
            assert out.error is None, f"{damage}: {out.error!r}"
            assert out.value == reference, f"{damage}: results differ from the engine's"
            stored = {p.id: p for p in repo.fetch("c", [p.id for p in PASSAGES]).passages}
            lost = sum(
                1 for p in PASSAGES
                if p.id not in stored or not np.array_equal(stored[p.id].tokens, p.tokens)
                or stored[p.id].units != p.units
            )
            report.add(passages_lost=lost)
            assert lost == 0, f"{damage}: {lost} passages read back wrong"
        finally:
            repo.close()
    shutil.rmtree(root.parent)
