"""An engine from outside the package, as a third party would write one: a thin
subclass of the memory repository, served under a scheme of its own."""

from __future__ import annotations

from typing import Any

from agrame_vdb.errors import InvalidInputError
from agrame_vdb.repositories import StoreURL
from agrame_vdb.repositories.memory import MemoryRepository

SCHEME = "thirdparty-memory"


class ThirdPartyRepository(MemoryRepository):
    engine = SCHEME


def from_url(url: StoreURL, **options: Any) -> ThirdPartyRepository:
    if url.location or options:
        raise InvalidInputError(f"{SCHEME}:// takes no path or options, got {url.shown!r}")
    return ThirdPartyRepository()
