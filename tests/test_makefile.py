"""The README's two entry points: what `make demo` and `make test` would install (dry runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(target: str, venv: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    out = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_demo_installs_only_the_package_and_pinned_torch(tmp_path):
    installs = [line for line in _dry_run("demo", tmp_path / "venv") if " pip install " in line]
    assert any("torch==2.13.0" in line for line in installs)
    assert any(line.rstrip().endswith("-e .") for line in installs), installs
    assert not any("[" in line for line in installs), f"the demo installs extras: {installs}"


def test_tests_install_the_test_extras_under_the_torch_pin(tmp_path):
    lines = _dry_run("test", tmp_path / "venv")
    installs = [line for line in lines if " pip install " in line]
    torch = next(i for i, line in enumerate(installs) if "torch==2.13.0" in line)
    package = next(i for i, line in enumerate(installs) if '-e ".[test,milvus]"' in line)
    assert torch < package and "-c constraints.txt" in installs[package]
    assert any("pytest" in line for line in lines)
