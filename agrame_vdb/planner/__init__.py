"""Query planning: encode → first-stage candidates → token vectors → granular MaxSim.

A :class:`Planner` answers a query at any granularity from one passage-level index:

1. encode the query with ``[Q]`` (and with ``[Q']`` for sub-passage granularity),
   in one forward pass (:func:`agrame_vdb.encoder.encode_queries`);
2. ask the repository for first-stage candidates: the pooled vector's nearest
   passages (``first_stage="pooled"``), or a pooled prefetch reranked by the
   engine's own MaxSim (``first_stage="maxsim"``, to shrink what is fetched);
3. get the candidates' token vectors and units (from the optional
   :class:`TokenCache` on the scoring device, else one ``fetch_tokens``: one
   contiguous array, no text or metadata);
4. score passages (``S(q,p)``) and units (``S(q',u)``) in one pass
   (:func:`agrame_vdb.maxsim.granular_maxsim`) and rank units across passages by
   ``S(q',u) + alpha * S(q,p)``;
5. read the top ``k`` passages whole (``fetch``: text, metadata), and check that
   they hold the token vectors and units that were scored (a passage rewritten
   between the two reads is scored again).

Results carry the passage and document ids, the unit kind and index, the score and
its parts, the unit's text and character spans in the passage (for highlighting),
optionally the matched token positions mapped to characters, and the metadata; all
of it serialises to JSON. Every response has a :class:`Timings` breakdown.

A planner is safe to share between threads (its only mutable state, the cache and
the tokenizer, are locked), and has asyncio variants (:meth:`Planner.asearch`) that
run the search in a worker thread.

The modules, in the order of the data flow: ``plan`` (a search's checked settings),
``results`` (the records returned), ``cache`` (:class:`TokenCache`), ``fetch`` (the
repository reads), ``rank`` (scoring), ``explain`` (matched tokens), ``pipeline``
(the steps of one search), ``search`` (:class:`Planner`).

>>> import numpy as np
>>> from agrame_vdb import connect, CollectionSchema, StoredPassage, Unit
>>> repo = connect("memory://")
>>> _ = repo.create_collection(CollectionSchema("demo", dim=2))
>>> tokens = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
>>> units = (Unit("sentence", 0, ((0, 3),), ((0, 1),)), Unit("sentence", 1, ((4, 7),), ((1, 3),)))
>>> _ = repo.upsert("demo", [StoredPassage.create("d", 0, tokens, units=units, text="One two")])
>>> planner = Planner(repo, "demo")   # no encoder: search with query vectors
>>> q = np.array([[0.0, 1.0]], dtype=np.float32)
>>> [(r.unit_index, r.text, r.char_spans, round(r.score, 2)) for r in planner.search_vectors(q, q, granularity="sentence", k=1)]
[(1, 'two', ((4, 7),), 2.0)]
"""

from __future__ import annotations

from ..encoder import encode_queries, encoder_lock
from .cache import TokenCache
from .plan import FIRST_STAGES, PASSAGE, check_granularity, pool_query
from .results import SearchResponse, SearchResult, Timings, TokenMatch
from .search import Planner

__all__ = [
    "PASSAGE",
    "FIRST_STAGES",
    "Planner",
    "SearchResult",
    "SearchResponse",
    "TokenMatch",
    "Timings",
    "TokenCache",
    "check_granularity",
    "pool_query",
    "encoder_lock",
    "encode_queries",
]
