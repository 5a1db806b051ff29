"""Bad input about secrets and job state (issue 14): generated credentials in every
position of a store URL, and hand-edited job checkpoints.

Every case ends in a typed AgrameError with a message, or a clean result (see
:func:`harness.typed_or_ok`); no credential appears in an error, a repr or a
redacted URL; a refused checkpoint loses nothing already written.
"""

from __future__ import annotations

import json
import socket
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agrame_vdb import connect
from agrame_vdb.errors import CheckpointMismatchError
from agrame_vdb.indexer import index_documents
from agrame_vdb.redact import redact_url
from agrame_vdb.repositories import parse_url

from ..indexing_helpers import FakeEncoder, make_docs, write_jsonl
from . import report
from .harness import typed_or_ok

EXAMPLES = 200 if report.FULL else 30
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not report.FULL, database=None,
                    suppress_health_check=list(HealthCheck))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _closed_port()

#: a credential: distinctive (so it cannot occur in a message by chance), URL-safe or not
secrets = st.builds(lambda body: "Zq9" + body, st.text(string.ascii_letters + string.digits + "-._~!$*+,;=%", min_size=6,
                                                        max_size=24))
#: the places a credential can take; {s} is the secret
TEMPLATES = [
    "memory://?api_key={s}",
    f"http://user:{{s}}@127.0.0.1:{PORT}?retries=1&retry_wait_max=0",
    f"https://{{s}}@127.0.0.1:{PORT}?retries=1&retry_wait_max=0",
    f"http://127.0.0.1:{PORT}?api_key={{s}}&retries=1&retry_wait_max=0",
    f"https://127.0.0.1:{PORT}?api-key={{s}}",
    f"http://127.0.0.1:{PORT}?password={{s}}",
    "milvus://root:{s}@127.0.0.1:19530",
    "milvus://127.0.0.1:99999?token=root:{s}",
    "milvus-lite:///tmp/agrame-never.db?token={s}",
    "qdrant-edge://user:{s}@somewhere",
    "qdrant-local://u:{s}@x",
    "qdrant-edge:///tmp/agrame-never?password={s}",
    "nope://user:{s}@host",
]


@SETTINGS
@given(secret=secrets, template=st.sampled_from(TEMPLATES))
def test_credentials_never_appear_in_errors_or_reprs(secret, template):
    url = template.format(s=secret)
    shown = redact_url(url)
    assert secret not in shown, shown

    def attempt():
        repo = connect(url)
        try:
            return repo.count("c")  # a server URL connects lazily: the first call fails
        finally:
            repo.close()

    out = typed_or_ok(attempt, f"connect({shown!r})")
    assert out.error is not None  # none of these stores is reachable or valid here
    assert secret not in str(out.error), str(out.error)
    try:
        parsed = parse_url(url)
    except Exception as exc:  # noqa: BLE001 - refused: its message is checked above
        assert secret not in str(exc)
    else:
        assert secret not in repr(parsed)


# --------------------------------------------------------------------------- hand-edited checkpoints

KEYS = ["job", "position", "line", "counts", "rejects_path", "rejects_bytes", "last_passage_id", "done", "updated",
        "version"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6,
)
edits = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), json_values),
    st.tuples(st.just("drop"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("count"), st.sampled_from(["passages", "documents", "records"]), json_values),
    st.tuples(st.just("bytes"), st.none(), st.binary(max_size=40)),
)


@pytest.fixture(scope="module")
def clean_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    src = write_jsonl(root / "docs.jsonl", make_docs(5))
    return root, src


@SETTINGS
@given(edit=edits)
def test_hand_edited_checkpoints_are_refused_or_harmless(clean_job, edit):
    root, src = clean_job
    ck = root / "ck.json"
    repo = connect("memory://")
    opts = dict(encoder=FakeEncoder(), checkpoint=ck, batch_size=2)
    index_documents(src, repo, "docs", restart=True, **opts)
    written = set(repo.iter_ids("docs"))
    state = json.loads(ck.read_text())
    kind, key, value = edit
    if kind == "set":
        state[key] = value
    elif kind == "drop":
        state.pop(key, None)
    elif kind == "count":
        state["counts"][key] = value
    if kind == "bytes":
        ck.write_bytes(value)
    else:
        ck.write_text(json.dumps(state))
    out = typed_or_ok(lambda: index_documents(src, repo, "docs", **opts), f"checkpoint edited: {edit!r}")
    if out.error is not None:
        assert isinstance(out.error, CheckpointMismatchError), repr(out.error)
        assert str(ck) in str(out.error)
    lost = len(written - set(repo.iter_ids("docs")))
    report.add(passages_lost=lost)
    assert lost == 0
