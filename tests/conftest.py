"""Shared fixtures: the real data sets beside the checkout, one loaded encoder, and the
embedded Milvus server stopped when the session ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import milvus_servers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AGRAME_DATA", ROOT.parent / "shared" / "data"))


def data_file(*parts: str) -> Path:
    """A file of ../shared/data, or a skip naming what is missing."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"data set file {path} is not present (set AGRAME_DATA to the data folder)")
    return path


@pytest.fixture(scope="session")
def encoder():
    """The packaged model with markers and query augmentation (minilm-frozen-128):
    what the marker, [Q'] and augmentation machinery is tested with."""
    from agrame_vdb.encoder import MultiVectorEncoder

    return MultiVectorEncoder.load("minilm-frozen-128", device="cpu")


@pytest.fixture(scope="session")
def plain_encoder():
    """The plain base (no markers, no augmentation, 384-d): the baseline, whose passages
    and [Q] queries the default model shares."""
    from agrame_vdb.encoder import MultiVectorEncoder

    return MultiVectorEncoder.load("plain-base", device="cpu")


@pytest.fixture(scope="session")
def untrained_encoder(tmp_path_factory):
    """The untrained starting point (MiniLM + seeded orthonormal projection), as
    scripts/make_untrained_default.py writes it: tests whose hand-made cases were
    calibrated on it stay independent of the shipped, trained weights."""
    import runpy

    from agrame_vdb.encoder import MultiVectorEncoder

    out = tmp_path_factory.mktemp("untrained-model")
    runpy.run_path(str(ROOT / "scripts" / "make_untrained_default.py"))["main"](str(out))
    return MultiVectorEncoder.load(out, device="cpu")


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_milvus() -> Iterator[None]:
    """Stop the embedded Milvus server (if a test started it) when the session ends."""
    yield
    milvus_servers.stop_embedded()
