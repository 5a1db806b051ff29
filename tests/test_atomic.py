"""The one helper for crash-safe files: atomic replaces (modes as promised, nothing left
behind on a failure) and locks between lock holders."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from agrame_vdb import CollectionSchema, connect
from agrame_vdb.atomic import Timeout, atomic_open, atomic_write_bytes, atomic_write_text, file_lock
from agrame_vdb.errors import MigrationError
from agrame_vdb.migrate import upgrade


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_and_is_private(tmp_path):
    path = tmp_path / "new" / "state.json"
    atomic_write_text(path, "one")
    assert path.read_text() == "one" and _mode(path) == 0o600
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and _mode(path) == 0o600
    assert os.listdir(path.parent) == ["state.json"]


def test_a_shared_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "collection.json", "{}", private=False)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "collection.json") == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_open_writes_whole_files_only(tmp_path):
    with pytest.raises(ValueError), atomic_open(tmp_path / "x", "a"):
        pass


def test_a_held_lock_refuses_another_holder_at_once(tmp_path):
    path = tmp_path / ".docs.lock"
    with file_lock(path):
        with pytest.raises(Timeout):
            file_lock(path, wait=False).acquire()
        got: list[str] = []

        def other_thread() -> None:
            try:
                with file_lock(path, wait=False):
                    got.append("acquired")
            except Timeout:
                got.append("refused")

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert got == ["refused"]
    with file_lock(path, wait=False):  # released: free again
        pass
    assert path.exists()  # the lock file stays, so waiters share one inode


def test_waiting_holders_take_turns(tmp_path):
    path = tmp_path / ".aliases.lock"
    inside: list[int] = []
    overlaps: list[int] = []

    def worker(i: int) -> None:
        for _ in range(20):
            with file_lock(path):
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(i)
                inside.remove(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps


def test_a_migration_refuses_a_collection_another_holder_migrates(tmp_path):
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("docs", dim=4, schema_version=1))
    states = tmp_path / "states"
    states.mkdir()
    with file_lock(states / ".docs.lock"):  # as a second process running a migration holds it
        with pytest.raises(MigrationError, match="another process is migrating collection 'docs'"):
            upgrade(repo, "docs", state_dir=states)
    assert repo.open_collection("docs").schema_version == 1
    assert upgrade(repo, "docs", state_dir=states).to_version == 2  # free again
