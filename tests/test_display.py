"""Snippets and the HTML view: what is shown is exactly the result's spans.

The HTML page is checked twice against the results' ``char_spans``: by Python's own
HTML parser, and (where a Chromium binary exists) by rendering it in headless Chromium
and reading back, from the live DOM, which characters each result's shading covers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from agrame_vdb.display import render_html, snippet

PASSAGE = ("Paris <b>&</b> \"its\" tower 😀 stand tall. The tower, built in 1889, is 330 m high. "
           "It was the tallest structure in the world until 1930; café visitors climb it.")


def _result(rank, spans, score, matches=(), passage_id="p1", text=PASSAGE):
    return {
        "rank": rank, "passage_id": passage_id, "doc_id": passage_id.upper(), "passage_index": 0,
        "granularity": "sentence", "score": score, "char_spans": [list(s) for s in spans],
        "passage_text": text, "text": " ".join(text[s:e] for s, e in spans),
        "matches": [{"char_span": list(m), "position": 0, "query_tokens": [0], "query_texts": ["x"], "score": 0.5}
                    for m in matches],
    }


def _results():
    s1 = (0, PASSAGE.index(" The tower"))
    s2 = (s1[1] + 1, PASSAGE.index(" It was"))
    prop = ((s2[1] + 1, s2[1] + 7), (PASSAGE.index("tallest"), PASSAGE.index(" structure")))  # non-contiguous
    other = "A second passage, with < and > in it."
    return [
        _result(1, [s2], 3.0, matches=[(s2[0] + 4, s2[0] + 9), (PASSAGE.index("1889"), PASSAGE.index("1889") + 4)]),
        _result(2, prop, 2.5, matches=[prop[1]]),
        _result(3, [(0, len(other))], 1.0, passage_id="p2", text=other),
        _result(4, [s1], 0.5),
    ]


def _expected(results):
    want = {}
    for r in results:
        want[r["rank"]] = sorted(i for s, e in r["char_spans"] for i in range(s, e))
    return want


def _expected_marks(results):
    marks = {}
    for r in results:
        marks.setdefault(r["passage_id"], set()).update(i for m in r["matches"] for i in range(*m["char_span"]))
    return {k: v for k, v in marks.items() if v}


class _Segments(HTMLParser):
    """Per result rank, the characters its shaded segments cover (data-start + text length),
    and per passage the characters inside <mark class="match">."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.covered, self.marked, self.stack, self.passage = {}, {}, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "data-passage-id" in a:
            self.passage = a["data-passage-id"]
        self.stack.append((tag, a))

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        seg = next((a for t, a in reversed(self.stack) if t == "span" and "data-start" in a), None)
        if seg is None:
            return
        start = int(seg["data-start"])
        chars = range(start, start + len(data))
        for rank in seg.get("data-results", "").split():
            self.covered.setdefault(int(rank), []).extend(chars)
        if any(t == "mark" for t, _ in self.stack):
            self.marked.setdefault(self.passage, set()).update(chars)


def test_snippet_keeps_the_unit_whole_and_cuts_at_words():
    text = "alpha beta gamma delta epsilon. The tower is tall. zeta eta theta iota kappa lambda"
    unit = (text.index("The"), text.index(" zeta"))
    s = snippet(text, [unit], width=12)
    assert s.unit == "The tower is tall."
    assert s.cut_start and s.cut_end
    assert str(s) == "…epsilon. The tower is tall. zeta eta…"
    assert text.find(s.before + s.unit + s.after) >= 0
    whole = snippet(text, [unit], width=500)
    assert str(whole) == text and not whole.cut_start and not whole.cut_end
    assert snippet(text, [], width=5).unit == text


def test_html_segments_cover_exactly_each_results_spans():
    results = _results()
    page = render_html([{"query": "how tall is the <tower>?", "granularity": "sentence", "results": results}])
    assert "<script" not in page and "&lt;tower&gt;" in page and "&lt;b&gt;&amp;&lt;/b&gt;" in page
    parser = _Segments()
    parser.feed(page)
    assert {k: sorted(v) for k, v in parser.covered.items()} == _expected(results)
    assert parser.marked == _expected_marks(results)
    # each passage once, in the order of its best result
    assert page.index('data-passage-id="p1"') < page.index('data-passage-id="p2"')
    assert page.count('data-passage-id="p1"') == 1


def test_html_shading_follows_the_score():
    results = _results()
    page = render_html([{"query": "q", "granularity": "sentence", "results": results}])
    def alpha(rank):
        key = f'data-results="{rank}" '
        i = page.index(key)
        return float(page[page.index("rgba(255, 196, 0, ", i) + 18:].split(")")[0])
    assert alpha(1) > alpha(2) > alpha(4)


_PROBE = """<script>
const out = {covered: {}, marked: {}};
for (const el of document.querySelectorAll('span[data-start]')) {
  const start = Number(el.dataset.start), n = Array.from(el.textContent).length;
  const chars = Array.from({length: n}, (_, i) => start + i);
  for (const r of (el.dataset.results || '').split(' ').filter(Boolean)) (out.covered[r] ||= []).push(...chars);
  if (el.querySelector('mark.match')) {
    const pid = el.closest('[data-passage-id]').dataset.passageId;
    (out.marked[pid] ||= []).push(...chars);
  }
}
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script></body>"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_html_in_headless_chromium_highlights_each_results_char_spans(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium)")
    results = _results()
    page = render_html([{"query": "how tall is the tower?", "granularity": "sentence", "results": results}])
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", _PROBE, 1), encoding="utf-8")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    probe = dom[dom.index('<pre id="probe">') + len('<pre id="probe">'):]
    data = json.loads(probe[: probe.index("</pre>")].replace("&quot;", '"').replace("&amp;", "&"))
    assert {int(k): sorted(v) for k, v in data["covered"].items()} == _expected(results)
    assert {k: set(v) for k, v in data["marked"].items()} == _expected_marks(results)
