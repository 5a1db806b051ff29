"""Results a person can read: a snippet around the best unit, and a self-contained HTML page.

Both work from a result's JSON form (``SearchResult.to_json()``: ``passage_text``,
``char_spans``, ``score``, ``granularity``, and ``matches`` when the search asked for
them), so they read what ``search --json`` prints as well as live results.

>>> s = snippet("One. The tower is tall and old. Three.", [(5, 31)], width=20)
>>> s.before, s.unit, s.after
('One. ', 'The tower is tall and old.', ' Three.')
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .units import Span

__all__ = ["Snippet", "snippet", "render_html"]


@dataclass(frozen=True, slots=True)
class Snippet:
    """A passage cut around a unit: ``before`` + ``unit`` + ``after``, with ``…`` where
    the passage was cut (``cut_start``/``cut_end``). A unit of several spans shows
    from its first span's start to its last span's end."""

    before: str
    unit: str
    after: str
    cut_start: bool
    cut_end: bool

    def __str__(self) -> str:
        return ("…" if self.cut_start else "") + self.before + self.unit + self.after + ("…" if self.cut_end else "")


def _word_start(text: str, pos: int) -> int:
    """The start of the first whole word at or after ``pos``."""
    if pos <= 0 or text[pos - 1].isspace():
        return max(pos, 0)
    while pos < len(text) and not text[pos].isspace():
        pos += 1
    return min(pos + 1, len(text))


def _word_end(text: str, pos: int) -> int:
    """The end of the last whole word at or before ``pos``."""
    if pos >= len(text) or text[pos].isspace():
        return min(pos, len(text))
    while pos > 0 and not text[pos - 1].isspace():
        pos -= 1
    return max(pos - 1, 0)


def snippet(passage_text: str, char_spans: Sequence[Sequence[int]], width: int = 160) -> Snippet:
    """``passage_text`` cut to about ``width`` characters of context on each side of the
    unit at ``char_spans`` (whole words); the unit itself is never cut."""
    if not char_spans:
        return Snippet("", passage_text, "", False, False)
    start, end = int(char_spans[0][0]), int(char_spans[-1][1])
    lo = 0 if start <= width else min(start, _word_start(passage_text, start - width))
    hi = len(passage_text) if len(passage_text) - end <= width else max(end, _word_end(passage_text, end + width))
    return Snippet(passage_text[lo:start], passage_text[start:end], passage_text[end:hi], lo > 0, hi < len(passage_text))


_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
h1 { font-size: 1.3rem; } .query { background: #f3f3f3; padding: .5rem .8rem; border-radius: 4px; }
.passage { border: 1px solid #ddd; border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.meta { color: #666; font-size: .85rem; margin-bottom: .4rem; }
.unit { border-radius: 3px; } .match { border-bottom: 2px solid #c0392b; background: none; }
.rank { font-weight: 600; color: #333; }
"""


def _boundaries(n: int, *span_lists: Sequence[Span]) -> list[int]:
    cuts = {0, n}
    for spans in span_lists:
        for s, e in spans:
            cuts.update((max(0, min(n, s)), max(0, min(n, e))))
    return sorted(cuts)


def _covering(spans: Sequence[Span], a: int, b: int) -> bool:
    return any(s <= a and b <= e for s, e in spans)


def _passage_html(passage_text: str, results: Sequence[Mapping[str, Any]], top: float, bottom: float) -> str:
    """The passage text cut into segments at every unit and match boundary; a segment
    inside units is shaded by the best of their scores and lists them in ``data-results``;
    inside a matched token it is underlined (``<mark class="match">``)."""
    units = [(r["rank"], [tuple(s) for s in r["char_spans"]], float(r["score"])) for r in results]
    matches = [tuple(m["char_span"]) for r in results for m in (r.get("matches") or []) if m.get("char_span")]
    cuts = _boundaries(len(passage_text), *(spans for _, spans, _ in units), matches)
    out = []
    for a, b in zip(cuts, cuts[1:]):
        piece = html.escape(passage_text[a:b])
        inside = [(rank, score) for rank, spans, score in units if _covering(spans, a, b)]
        if any(_covering([m], a, b) for m in matches):
            piece = f'<mark class="match">{piece}</mark>'
        if inside:
            best = max(score for _, score in inside)
            shade = 0.25 + 0.6 * ((best - bottom) / (top - bottom) if top > bottom else 1.0)
            ranks = " ".join(str(rank) for rank, _ in inside)
            piece = (f'<span class="unit" data-results="{ranks}" data-start="{a}" '
                     f'style="background: rgba(255, 196, 0, {shade:.2f})">{piece}</span>')
        else:
            piece = f'<span class="text" data-start="{a}">{piece}</span>'
        out.append(piece)
    return "".join(out)


def render_html(responses: Sequence[Mapping[str, Any]], *, title: str = "agrame-vdb results") -> str:
    """A self-contained HTML page (no script, no external file) for the JSON form of one
    or more search responses (``SearchResponse.to_json()``): for each query, the query on
    top, then each result passage once, in the order of its best result, with the units
    of its results shaded by score (darker is higher) and matched tokens underlined."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>"]
    for qi, response in enumerate(responses):
        results = list(response.get("results") or [])
        query = response.get("query")
        parts.append(f'<section class="response" data-query="{qi}"><h1>Query</h1>'
                     f'<p class="query">{html.escape(str(query) if query is not None else "(vectors)")}</p>'
                     f'<p class="meta">{html.escape(str(response.get("granularity", "")))} granularity, '
                     f"{len(results)} results</p>")
        scores = [float(r["score"]) for r in results]
        top, bottom = (max(scores), min(scores)) if scores else (0.0, 0.0)
        by_passage: dict[str, list[Mapping[str, Any]]] = {}
        for r in sorted(results, key=lambda r: r["rank"]):
            by_passage.setdefault(r["passage_id"], []).append(r)
        for pid, group in by_passage.items():
            head = group[0]
            ranks = ", ".join(f'#{r["rank"]} {float(r["score"]):.2f}' for r in group)
            parts.append(
                f'<div class="passage" data-passage-id="{html.escape(pid)}">'
                f'<div class="meta"><span class="rank">{html.escape(ranks)}</span> · doc {html.escape(str(head["doc_id"]))}'
                f' · passage {int(head["passage_index"])}</div>'
                f'<div class="passage-text">{_passage_html(head["passage_text"], group, top, bottom)}</div></div>'
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "".join(parts)
