"""dtype="auto": bfloat16 only where the hardware does it fast, detected from its flags."""

from __future__ import annotations

import pytest
import torch

from agrame_vdb import hardware
from agrame_vdb.checkpoints import dtype_name, resolve_dtype


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(names))
    return set_flags


@pytest.mark.parametrize(
    ("names", "expected"),
    [(("avx2", "avx512f", "amx_bf16", "amx_tile"), torch.bfloat16),  # a Xeon with AMX
     (("avx2", "avx512f", "avx512_bf16"), torch.bfloat16),  # AMD Zen 4
     (("avx2", "avx512f", "avx512_vnni"), torch.float32),  # an EPYC without bfloat16 instructions
     ((), torch.float32)],  # nothing to read
)
def test_auto_is_bfloat16_only_where_the_cpu_has_bfloat16_instructions(flags, names, expected):
    flags(*names)
    assert resolve_dtype("auto") == expected
    assert resolve_dtype("AUTO", "cpu") == expected
    assert dtype_name("auto", torch.device("cpu")) == str(expected).removeprefix("torch.")


def test_explicit_dtypes_are_kept_whatever_the_cpu(flags):
    flags()
    assert resolve_dtype("bfloat16") == torch.bfloat16 and resolve_dtype("fp32") == torch.float32


def test_cuda_without_a_gpu_is_not_fast_bfloat16():
    if torch.cuda.is_available():
        assert hardware.fast_bfloat16("cuda") == torch.cuda.is_bf16_supported()
    else:
        assert hardware.fast_bfloat16("cuda") is False


def test_the_cpu_flags_are_read_from_proc_cpuinfo():
    flags = hardware.cpu_flags()
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        assert flags == frozenset()
        return
    line = next((ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("flags", "Features")), None)
    assert flags == (frozenset(line.split(":", 1)[1].split()) if line else frozenset())
    assert hardware.cpu_model()


def test_an_encoder_and_an_index_job_resolve_auto(flags, plain_encoder, tmp_path):
    from agrame_vdb.encoder import MultiVectorEncoder
    from agrame_vdb.indexer import IndexJob
    from agrame_vdb.repositories import connect

    flags("avx512_bf16")
    enc = MultiVectorEncoder(plain_encoder.checkpoint, device="cpu", dtype="auto")
    assert enc.dtype == torch.bfloat16
    (tmp_path / "docs.jsonl").write_text('{"id": "d", "text": "One sentence."}\n')
    job = IndexJob(tmp_path / "docs.jsonl", connect("memory://"), "c", device="cpu", dtype="auto", dry_run=True)
    assert job.dtype == "bfloat16"  # what the job's checkpoint records, not "auto"
    flags()
    assert IndexJob(tmp_path / "docs.jsonl", connect("memory://"), "c", device="cpu", dtype="auto", dry_run=True).dtype == "float32"
