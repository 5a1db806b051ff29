"""The reliability suite: faults, kills, bad input and load (issue 10).

Default (CI): a short seeded subset. ``AGRAME_RELIABILITY=full`` runs the long
parts too (tests marked ``reliability_full``) and the larger seeded sweeps.
The figures are printed at the end and written to ``reliability-report.json``
(``AGRAME_RELIABILITY_REPORT`` to put it elsewhere).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from . import report


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the reliability suite (tests/reliability)")
    config.addinivalue_line(
        "markers", "reliability_full: a long reliability test, run only with AGRAME_RELIABILITY=full")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="a long reliability test: set AGRAME_RELIABILITY=full to run it")
    for item in items:
        if "tests/reliability" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.reliability)
            if not report.FULL and item.get_closest_marker("reliability_full"):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not report.FIGURES and not report.LATENCIES_MS:
        return
    figures = report.summary()
    terminalreporter.section("agrame-vdb reliability figures")
    for key, value in figures.items():
        terminalreporter.write_line(f"{key:>28}: {value}")
    path = Path(os.environ.get("AGRAME_RELIABILITY_REPORT", config.rootpath / "reliability-report.json"))
    try:
        path.write_text(json.dumps(figures, indent=2) + "\n")
        terminalreporter.write_line(f"written to {path}")
    except OSError as exc:
        terminalreporter.write_line(f"could not write {path}: {exc}")
