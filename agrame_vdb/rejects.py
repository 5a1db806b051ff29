"""An indexing job's rejects file: one JSON line per refused record, cut back to its
checkpoint's size on resume (so a record re-read after a crash is not listed twice)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .atomic import private_opener

__all__ = ["RejectsFile"]

log = logging.getLogger("agrame_vdb.indexer")


class RejectsFile:
    """The rejects file (JSON Lines), cut back to a checkpoint's size on resume."""

    SAMPLE = 20

    def __init__(self, path: Path | None, keep_bytes: int | None) -> None:
        self.path = path
        self.sample: list[dict[str, Any]] = []
        self._file = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_bytes is not None and path.exists() and path.stat().st_size < keep_bytes:
            log.warning("the rejects file %s is shorter than its checkpoint says; appending to it", path)
            self._file = path.open("ab")
        elif keep_bytes is not None and path.exists():
            self._file = path.open("r+b")
            self._file.truncate(keep_bytes)
            self._file.seek(keep_bytes)
        else:
            self._file = open(path, "wb", opener=private_opener)  # noqa: SIM115 - closed by close()
        if keep_bytes is not None:
            os.fchmod(self._file.fileno(), 0o600)  # one an older version created readable by all

    def add(self, line: int, doc_id: str | None, reason: str) -> None:
        row = {"line": line, "id": doc_id, "reason": reason}
        if len(self.sample) < self.SAMPLE:
            self.sample.append(row)
        if self._file is not None:
            self._file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    def sync(self) -> int:
        if self._file is None:
            return 0
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
