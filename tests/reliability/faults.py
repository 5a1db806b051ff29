"""A fault-injecting repository wrapper for the reliability suite.

:class:`FaultyRepository` wraps any repository and, with a seeded RNG, makes some
calls of the operations it is told about fail the way a real store fails:

- ``transient``: the call raises :class:`TransientRepositoryError` before it reaches
  the store (connection refused, a restart);
- ``timeout``: the call *does* reach the store, then raises a timeout
  (:class:`TransientRepositoryError` "timed out"): the caller cannot know whether it
  was applied, as with a lost reply;
- ``partial``: for ``upsert``, a random prefix of the batch is written and then the
  call fails (a batch split across requests, the connection dropping half-way);
  for ``delete``, a prefix of the ids is deleted, then the failure.

Every injected fault is counted in :attr:`injected` by kind and operation.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from agrame_vdb.errors import TransientRepositoryError

DEFAULT_OPS = ("upsert", "delete", "delete_where", "count", "fetch", "fetch_tokens", "list_ids")
KINDS = ("transient", "timeout", "partial")


class FaultyRepository:
    """Wraps ``inner``; each call of an op in ``ops`` fails with probability ``rate``."""

    def __init__(self, inner: Any, *, seed: int, rate: float = 0.3, ops: tuple[str, ...] = DEFAULT_OPS,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.rate = rate
        self.ops = frozenset(ops)
        self.kinds = kinds
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.enabled = True

    @property
    def faults(self) -> int:
        return sum(self.injected.values())

    def _wrap(self, name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if not self.enabled or self.rng.random() >= self.rate:
                return fn(*args, **kwargs)
            kind = self.rng.choice(self.kinds)
            if kind == "partial" and name in ("upsert", "delete"):
                collection, items, *rest = args
                items = list(items)
                if len(items) > 1:
                    cut = self.rng.randrange(1, len(items))
                    fn(collection, items[:cut], *rest, **kwargs)
                    self.injected[f"partial:{name}"] += 1
                    raise TransientRepositoryError(
                        f"fault injected: {name} wrote {cut} of {len(items)} then the connection dropped")
                kind = "timeout"
            if kind == "timeout" and name not in ("fetch", "count", "fetch_tokens", "list_ids"):
                fn(*args, **kwargs)  # applied, but the reply is lost
                self.injected[f"timeout:{name}"] += 1
                raise TransientRepositoryError(f"fault injected: {name} timed out (it may have been applied)")
            self.injected[f"transient:{name}"] += 1
            raise TransientRepositoryError(f"fault injected: {name}: connection refused")

        return call

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in self.ops and callable(attr):
            return self._wrap(name, attr)
        return attr

    def __enter__(self) -> FaultyRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()
