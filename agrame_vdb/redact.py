"""Credentials out of store URLs and messages: the one place that knows what a secret is.

A store URL may carry credentials: a user and password before the host
(``http://user:pass@host:6333``; a user alone, ``https://TOKEN@host``, is taken as
a token) or a query parameter such as ``?token=``, ``?api_key=``, ``?api-key=``,
``?password=``. Everything this library shows or keeps of a URL (summaries,
checkpoints, migration state directories, error messages, log lines) goes through
:func:`redact_url`, which replaces them with ``***`` and leaves the rest of the URL
as written, so what identifies the store (scheme, host, port, path, database,
other options) is still there:

>>> redact_url("milvus://h:19530/db?token=root:SECRET&layout=tokens")
'milvus://h:19530/db?token=***&layout=tokens'
>>> redact_url("http://user:pass@qdrant:6333?api-key=abc")
'http://user:***@qdrant:6333?api-key=***'
>>> redact_url("https://TOKEN@qdrant")
'https://***@qdrant'
>>> redact_url("qdrant-edge:///data?token_copy=0")
'qdrant-edge:///data?token_copy=0'

The URL is cut as :func:`agrame_vdb.repositories.parse_url` cuts it (scheme before
the first ``:``, options after the first ``?``, ``&``-separated, read with
:func:`urllib.parse.parse_qsl`'s rules), so a part the engine reads as a secret is
always a part redacted here. :func:`url_secrets` lists the secrets themselves (as
written and percent-decoded), for :func:`scrub`, which takes them out of any text
(an engine's error message that quotes what it was given).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

__all__ = [
    "MASK", "is_secret_option", "redact_url", "url_secrets", "secret_parts", "scrub", "scrub_exception",
    "split_userinfo",
]

MASK = "***"

#: query parameters (lower case, ``-`` read as ``_``) whose value is a credential
_SECRET_OPTIONS = frozenset({
    "token", "api_key", "apikey", "key", "password", "passwd", "pwd", "pass", "secret", "auth",
    "authorization", "credential", "credentials", "access_token", "refresh_token", "id_token",
    "session_token", "bearer", "jwt", "signature", "sig",
})
_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password", "_passwd", "_credentials")

#: shorter secrets are not scrubbed out of free text (every "a" of a message would go)
MIN_SCRUB_LENGTH = 4


def is_secret_option(name: str) -> bool:
    """Whether a URL query parameter holds a credential (``token``, ``api_key``, ``api-key``,
    ``password``, ``*_token``, …; not ``token_copy`` or ``token_k``)."""
    n = unquote_plus(name).strip().lower().replace("-", "_")
    return n in _SECRET_OPTIONS or n.endswith(_SECRET_SUFFIXES)


def split_userinfo(head: str) -> tuple[str | None, str]:
    """``(userinfo, rest)`` of the part of a URL between ``scheme:`` and ``?``.

    Only a URL with an authority (``//host``, not ``///path``) has userinfo: what lies
    before the *last* ``@`` (a password with a ``/`` or ``@`` in it stays inside).
    ``rest`` is ``head`` without ``userinfo@``; userinfo is None when there is none.
    """
    if not head.startswith("//") or head.startswith("///"):
        return None, head
    at = head.rfind("@")
    if at < 0:
        return None, head
    return head[2:at], "//" + head[at + 1 :]


def _cut(url: str) -> tuple[str, str, str, str] | None:
    scheme, colon, rest = url.partition(":")
    if not colon:
        return None
    head, q, query = rest.partition("?")
    return scheme, head, q, query


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (see the module docs); a value
    that is not a string comes back as it is."""
    if not isinstance(url, str):
        return url
    cut = _cut(url)
    if cut is None:
        return url
    scheme, head, q, query = cut
    userinfo, rest = split_userinfo(head)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        head = f"//{user}:{MASK}@{rest[2:]}" if colon else f"//{MASK}@{rest[2:]}"
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            pairs.append(f"{name}={MASK}" if eq and value and is_secret_option(name) else pair)
        query = "&".join(pairs)
    return f"{scheme}:{head}{q}{query}"


def url_secrets(url: str) -> set[str]:
    """The credentials in ``url``, each as written and percent-decoded (for :func:`scrub`)."""
    cut = _cut(url) if isinstance(url, str) else None
    if cut is None:
        return set()
    _, head, _, query = cut
    found: list[str] = []
    userinfo, _ = split_userinfo(head)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        found += [userinfo, password] if colon else [userinfo]
    for pair in query.split("&") if query else ():
        name, eq, value = pair.partition("=")
        if eq and value and is_secret_option(name):
            found.append(value)
    out: set[str] = set()
    for s in found:
        out.update((s, unquote(s), unquote_plus(s)))
    return {s for s in out if s}


def secret_parts(secret: str | None) -> set[str]:
    """A credential and, for a ``user:password`` token (Milvus), its password alone."""
    if not secret:
        return set()
    _, colon, password = secret.partition(":")
    return {secret, password} if colon and password else {secret}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret of at least :data:`MIN_SCRUB_LENGTH` characters
    replaced by ``***`` (the longest first, so one inside another goes whole).

    >>> scrub("auth failed for root:hunter22", {"root:hunter22", "hunter22"})
    'auth failed for ***'
    """
    for s in sorted({s for s in secrets if s and len(s) >= MIN_SCRUB_LENGTH}, key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


def scrub_exception(exc: BaseException, secrets: Iterable[str]) -> BaseException:
    """``exc`` with the secrets scrubbed out of its string arguments (in place); returned."""
    secrets = set(secrets)
    if secrets:
        exc.args = tuple(scrub(a, secrets) if isinstance(a, str) else a for a in exc.args)
    return exc
