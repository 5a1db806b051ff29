"""The options of a Milvus store URL and the server URI a ``milvus://`` URL names."""

from __future__ import annotations

import ipaddress
import string
from typing import Any
from urllib.parse import urlsplit

from ...errors import InvalidInputError
from .. import StoreURL
from .._options import Bool, EngineOptions, Float, Int

_DB_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_IPV6_CHARS = frozenset(string.hexdigits + ":.")


class MilvusOptions(EngineOptions):
    """The options of ``milvus-lite://`` and ``milvus://`` (the repository checks the values)."""

    layout: Any = None
    first_stage: Any = None
    pooled_index: Any = None
    token_index: Any = None
    token_k: Int = None
    consistency: Any = None
    retries: Int = None
    timeout: Float = None
    token: Any = None
    db_name: Any = None
    secure: Bool = None
    shards_num: Int = None
    replica_number: Int = None


#: options of a server only
SERVER_ONLY = ("secure", "token", "db_name")


def server_uri(url: StoreURL, secure: bool) -> str:
    """``http(s)://host[:port][/db_name]`` of a ``milvus://host[:port][/db_name]`` URL.

    The host is a name or a bracketed IPv6 address, the port in 1..65535, the database
    name letters, digits and ``_``; credentials go in ``?token=`` or ``MILVUS_TOKEN``.
    Anything else (a ``user:password@``, white space, a fragment) is refused with a
    message that shows the URL redacted.

    >>> server_uri(StoreURL("milvus://[::1]:19530/db", "milvus", "[::1]:19530/db", "milvus://[::1]:19530/db"), True)
    'https://[::1]:19530/db'
    """
    loc = url.location.rstrip("/")
    if not _valid_server_location(loc):
        raise InvalidInputError(
            f"a Milvus server URL looks like milvus://host:19530[/db_name], got {url.shown!r} "
            "(credentials go in ?token=user:password or MILVUS_TOKEN, not before the host)"
        )
    return f"{'https' if secure else 'http'}://{loc}"


def _valid_server_location(loc: str) -> bool:
    # urlsplit would drop white space and control characters, and cut at '#'
    if not loc.isprintable() or any(c.isspace() or c in "#?@" for c in loc):
        return False
    try:
        parts = urlsplit("//" + loc)  # ValueError: unbalanced brackets, a bracketed host that is no IPv6
    except ValueError:
        return False
    if parts.netloc.startswith("["):
        host, bracket, after = parts.netloc.partition("]")
        if not bracket or not set(host[1:]) <= _IPV6_CHARS or not _is_ipv6(host[1:]):
            return False
    else:
        host, colon, port = parts.netloc.partition(":")
        after = colon + port
        if not host or "[" in host or "]" in host:
            return False
    port = after[1:]
    if after and not (after[0] == ":" and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return False
    return parts.path == "" or (parts.path[0] == "/" and set(parts.path[1:]) <= _DB_CHARS)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
