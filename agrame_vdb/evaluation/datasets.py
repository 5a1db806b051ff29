"""Data set readers: the data sets in ``shared/data`` as an :class:`EvalDataset`.

An :class:`EvalDataset` holds passages, the units to rank inside them, and queries
with graded relevance at passage and unit level.

- :func:`read_scifact`: abstract = passage, sentence = unit; a claim's rationale
  sentences (``evidence``) are relevant units (grade 1); an abstract with evidence
  is a grade-2 passage, a cited abstract without evidence a grade-1 passage. Claims
  are split by a hash of their id into ``train`` and ``heldout``.
- :func:`read_wikiqa`: all sentences of a ``DocumentID`` in ``SentenceID`` order =
  passage, sentence = unit, answer sentences (``Label`` 1) grade 1.
- :func:`read_propsegment`: Wikipedia document = passage, reference proposition =
  unit (non-contiguous token sets); a query is a hypothesis proposition, relevant
  are the premise documents the raters say entail it (grade = votes) and the
  reference propositions best matching the raters' supporting propositions.
- :func:`read_squad`: paragraph = passage, sentence = unit (the training set).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..documents import read_json_lines
from ..errors import InvalidInputError
from ..repository import Eq, Filter, Not
from ..units import PROPOSITION, SENTENCE, Passage, Unit, proposition_from_word_indices, split_sentences, units_from_char_spans

__all__ = [
    "UnitKey",
    "EvalQuery",
    "EvalDataset",
    "DATASETS",
    "read_dataset",
    "read_scifact",
    "read_wikiqa",
    "read_propsegment",
    "read_squad",
    "scifact_split",
    "propsegment_split",
]

#: A unit's key in the unit-level relevance: (passage id, unit index).
UnitKey = tuple[str, int]


@dataclass(frozen=True)
class EvalQuery:
    """A query with graded relevance: passage id → grade, (passage id, unit index) → grade.

    ``filter`` restricts the candidates (e.g. PropSegmEnt leaves out the
    hypothesis's own document); ``excluded`` names the passages it leaves out, so
    training never takes them as negatives.
    """

    id: str
    text: str
    passage_qrels: Mapping[str, int]
    unit_qrels: Mapping[UnitKey, int]
    filter: Filter | None = None
    excluded: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EvalDataset:
    """Passages, the units ranked inside them (``units[i]`` for ``passages[i]``) and queries."""

    name: str
    passages: tuple[Passage, ...]
    units: tuple[tuple[Unit, ...], ...]
    queries: tuple[EvalQuery, ...]
    unit_kind: str = SENTENCE
    stats: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.units) != len(self.passages):
            raise InvalidInputError(f"{self.name}: {len(self.passages)} passages but {len(self.units)} unit lists")

    def passage_by_id(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.passages)}


def _join(sentences: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Sentences joined by one space, and each sentence's character span."""
    spans, pos = [], 0
    for s in sentences:
        spans.append((pos, pos + len(s)))
        pos += len(s) + 1
    return " ".join(sentences), spans


def _bucket(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (sha1), for deterministic splits."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def _freeze(qrels: Mapping[Any, int]) -> Mapping[Any, int]:
    return MappingProxyType(dict(qrels))


def _reader(what: str) -> Any:
    """Turn a reader's KeyError/TypeError on a malformed file into an InvalidInputError."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def read(path: str | Path, **options: Any) -> EvalDataset:
            try:
                return fn(path, **options)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:
                raise InvalidInputError(f"{path} is not in the {what} format ({type(exc).__name__}: {exc})") from exc

        return read

    return wrap


# --------------------------------------------------------------------------- SciFact


def scifact_split(claim_id: int | str, heldout_fraction: float = 0.2) -> str:
    """``"heldout"`` or ``"train"`` for a SciFact claim, by a hash of its id."""
    return "heldout" if _bucket(f"scifact-claim-{claim_id}") < heldout_fraction else "train"


def _scifact_files(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    claims = path if path.is_file() else folder / "claims_train.jsonl"
    corpus = folder / "corpus.jsonl"
    for f in (claims, corpus):
        if not f.is_file():
            raise InvalidInputError(f"SciFact file {f} does not exist; pass the scifact folder (corpus.jsonl + claims_train.jsonl)")
    return claims, corpus


@_reader("SciFact (corpus.jsonl: doc_id, abstract; claims: id, claim, evidence, cited_doc_ids)")
def read_scifact(
    path: str | Path,
    *,
    split: str = "heldout",
    heldout_fraction: float = 0.2,
    corpus: str = "cited",
    distractors: int = 300,
    require_evidence: bool = True,
    seed: int = 0,
) -> EvalDataset:
    """SciFact claims of ``split`` (``train``, ``heldout`` or ``all``) over abstracts.

    ``corpus="cited"``: the abstracts the selected claims cite, plus ``distractors``
    other abstracts drawn with ``seed``; ``corpus="full"``: all 5,183 abstracts.
    Claims without rationale sentences are left out unless ``require_evidence`` is
    False (their cited abstracts are then grade-1 passages with no relevant unit).
    """
    if split not in ("train", "heldout", "all"):
        raise InvalidInputError(f"SciFact split must be train, heldout or all, got {split!r}")
    if corpus not in ("cited", "full"):
        raise InvalidInputError(f"SciFact corpus must be 'cited' or 'full', got {corpus!r}")
    claims_file, corpus_file = _scifact_files(Path(path))
    claims = [row for _, row in read_json_lines(claims_file, what="SciFact file")]
    abstracts = [row for _, row in read_json_lines(corpus_file, what="SciFact file")]
    selected = [c for c in claims if split == "all" or scifact_split(c["id"], heldout_fraction) == split]
    if require_evidence:
        selected = [c for c in selected if c.get("evidence")]
    cited = {str(d) for c in selected for d in c.get("cited_doc_ids", [])} | {d for c in selected for d in c.get("evidence", {})}
    by_id = {str(a["doc_id"]): a for a in abstracts}
    if corpus == "full":
        keep = [str(a["doc_id"]) for a in abstracts]
    else:
        others = sorted(d for d in by_id if d not in cited)
        random.Random(seed).shuffle(others)
        keep = [d for d in by_id if d in cited or d in set(others[:distractors])]
    passages, units, pid = [], [], {}
    for doc in keep:
        row = by_id[doc]
        text, spans = _join([s.strip() for s in row["abstract"]])
        passage = Passage.create(doc, 0, text, {"title": row.get("title", "")})
        pid[doc] = passage.id
        passages.append(passage)
        units.append(tuple(units_from_char_spans(text, spans, kind=SENTENCE)))
    queries = []
    for c in selected:
        p_qrels: dict[str, int] = {}
        u_qrels: dict[UnitKey, int] = {}
        for doc in c.get("cited_doc_ids", []):
            if str(doc) in pid:
                p_qrels[pid[str(doc)]] = 1
        for doc, sets in c.get("evidence", {}).items():
            if doc not in pid:
                continue
            p_qrels[pid[doc]] = 2
            for s in {i for entry in sets for i in entry["sentences"]}:
                u_qrels[(pid[doc], int(s))] = 1
        queries.append(EvalQuery(f"scifact-{c['id']}", c["claim"], _freeze(p_qrels), _freeze(u_qrels)))
    stats = {"claims": len(claims), "abstracts": len(abstracts), "queries": len(queries), "passages": len(passages)}
    return EvalDataset(f"scifact-{split}", tuple(passages), tuple(units), tuple(queries), SENTENCE, stats)


# --------------------------------------------------------------------------- WikiQA


@_reader("WikiQA tsv")
def read_wikiqa(path: str | Path, *, include_unanswered: bool = False) -> EvalDataset:
    """A WikiQA ``.tsv`` split: paragraphs (all sentences of a ``DocumentID``) and questions.

    Questions without an answer sentence are left out unless ``include_unanswered``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"WikiQA file {path} does not exist (e.g. wikiqa/WikiQA-dev.tsv)")
    docs: dict[str, dict[int, str]] = {}
    titles: dict[str, str] = {}
    questions: dict[str, tuple[str, str]] = {}
    answers: dict[str, set[tuple[str, int]]] = defaultdict(set)
    rows = 0
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                rows += 1
                number = int(row["SentenceID"].rsplit("-", 1)[1])
                docs.setdefault(row["DocumentID"], {})[number] = row["Sentence"]
                titles[row["DocumentID"]] = row["DocumentTitle"]
                questions.setdefault(row["QuestionID"], (row["Question"], row["DocumentID"]))
                if row["Label"] == "1":
                    answers[row["QuestionID"]].add((row["DocumentID"], number))
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise InvalidInputError(f"{path} is not a WikiQA tsv (QuestionID, Question, DocumentID, ..., Label): {exc}") from exc
    passages, units, pid, position = [], [], {}, {}
    for doc, by_number in docs.items():
        numbers = sorted(by_number)
        text, spans = _join([by_number[k].strip() for k in numbers])
        passage = Passage.create(doc, 0, text, {"title": titles[doc]})
        pid[doc] = passage.id
        position[doc] = {n: i for i, n in enumerate(numbers)}
        passages.append(passage)
        units.append(tuple(units_from_char_spans(text, spans, kind=SENTENCE)))
    queries = []
    for qid, (question, doc) in questions.items():
        gold = answers.get(qid, set())
        if not gold and not include_unanswered:
            continue
        u_qrels = {(pid[d], position[d][n]): 1 for d, n in gold}
        p_qrels = {pid[d]: 1 for d, _ in gold}
        queries.append(EvalQuery(f"wikiqa-{qid}", question, _freeze(p_qrels), _freeze(u_qrels)))
    stats = {
        "questions": len(questions),
        "rows": rows,
        "positive_rows": sum(len(v) for v in answers.values()),
        "answered_questions": len(answers),
        "documents": len(docs),
        "queries": len(queries),
    }
    return EvalDataset(f"wikiqa-{path.stem.removeprefix('WikiQA-')}", tuple(passages), tuple(units), tuple(queries), SENTENCE, stats)


# --------------------------------------------------------------------------- PropSegmEnt


def _jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def propsegment_split(cluster_id: int | str, heldout_fraction: float = 0.5) -> str:
    """``"heldout"`` or ``"train"`` for a PropSegmEnt document cluster, by a hash of its id."""
    return "heldout" if _bucket(f"propsegment-cluster-{cluster_id}") < heldout_fraction else "train"


@_reader("PropSegmEnt dev")
def read_propsegment(
    path: str | Path, *, split: str = "all", heldout_fraction: float = 0.5, min_votes: int = 2, min_overlap: float = 0.5
) -> EvalDataset:
    """PropSegmEnt dev: Wikipedia documents with their reference propositions as units.

    A query is a hypothesis proposition (its words joined by spaces) that at least
    ``min_votes`` raters say a premise document entails. That document is a relevant
    passage (grade = votes); each rater's supporting proposition counts one vote for
    the reference proposition of that sentence it overlaps most (Jaccard of token
    sets at least ``min_overlap``). The query's own document is filtered out.

    ``split`` keeps the document clusters of one part (``train`` or ``heldout``, by
    :func:`propsegment_split`, half each by default) or ``all``: queries and their
    premises always share a cluster, so the parts share no document.
    """
    if split not in ("train", "heldout", "all"):
        raise InvalidInputError(f"PropSegmEnt split must be train, heldout or all, got {split!r}")
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    files = {name: folder / f"{name}.dev.json" for name in ("propositions", "document_clusters", "relationships")}
    for f in files.values():
        if not f.is_file():
            raise InvalidInputError(f"PropSegmEnt file {f} does not exist; pass the propsegment folder")
    try:
        segmentations = json.loads(files["propositions"].read_text(encoding="utf-8"))
        clusters = json.loads(files["document_clusters"].read_text(encoding="utf-8"))
        relationships = json.loads(files["relationships"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read PropSegmEnt in {folder}: {exc}") from exc
    reference: dict[tuple[str, int], list[list[int]]] = {}
    n_reference = 0
    for entry in segmentations:
        ref = [r for r in entry["segmentation_responses"] if r.get("is_reference_response")]
        props = [sorted(p["token_indices"]) for p in ref[0]["propositions"]] if ref else []
        n_reference += len(props)
        key = (str(entry["sentence_id"]["document_id"]), int(entry["sentence_id"]["sentence_index"]))
        reference[key] = props
    passages, units, pid = [], [], {}
    sentence_words: dict[tuple[str, int], tuple[str, list[tuple[int, int]]]] = {}
    unit_index: dict[tuple[str, int, int], int] = {}  # (doc, sentence, proposition) → unit index
    n_sentences = 0
    for cluster in clusters:
        if split != "all" and propsegment_split(cluster["cluster_id"], heldout_fraction) != split:
            continue
        for doc in cluster["documents"]:
            doc_id = str(doc["document_id"])
            texts = [s["sentence_text"] for s in doc["sentences"]]
            text, spans = _join(texts)
            passage = Passage.create(doc_id, 0, text, {"cluster": str(cluster["cluster_id"])})
            doc_units: list[Unit] = []
            for si, s in enumerate(doc["sentences"]):
                n_sentences += 1
                words = [
                    (t["character_offset_of_token_in_sentence"], t["character_offset_of_token_in_sentence"] + len(t["text"]))
                    for t in s["tokens"]
                ]
                sentence_words[(doc_id, si)] = (s["sentence_text"], words)
                for pi, tokens in enumerate(reference.get((doc_id, si), [])):
                    unit_index[(doc_id, si, pi)] = len(doc_units)
                    doc_units.append(
                        proposition_from_word_indices(
                            s["sentence_text"], tokens, index=len(doc_units), offset=spans[si][0], words=words, kind=PROPOSITION
                        )
                    )
            if not doc_units:
                continue
            pid[doc_id] = passage.id
            passages.append(passage)
            units.append(tuple(doc_units))
    grouped: dict[tuple[str, int, tuple[int, ...]], dict[str, Any]] = {}
    for rel in relationships:
        premise = str(rel["premise_document_id"])
        hyp = rel["hypothesis_proposition"]
        hyp_key = (str(hyp["document_id"]), int(hyp["sentence_index"]))
        if premise not in pid or hyp_key not in sentence_words:
            continue
        votes = [r for r in rel["relationship_responses"] if r.get("relationship") == "RELATIONSHIP_ENTAILS"]
        if len(votes) < min_votes:
            continue
        tokens = tuple(sorted(hyp["proposition"]["token_indices"]))
        entry = grouped.setdefault((*hyp_key, tokens), {"passages": {}, "units": Counter()})
        entry["passages"][pid[premise]] = len(votes)
        for vote in votes:
            support = vote.get("supporting_premise_proposition")
            if not support:
                continue
            si = int(support["sentence_index"])
            wanted = set(support["proposition"]["token_indices"])
            scored = [(_jaccard(wanted, set(p)), pi) for pi, p in enumerate(reference.get((premise, si), []))]
            if scored and max(scored)[0] >= min_overlap:
                entry["units"][(pid[premise], unit_index[(premise, si, max(scored)[1])])] += 1
    queries = []
    for (doc_id, si, tokens), entry in grouped.items():
        sentence, words = sentence_words[(doc_id, si)]
        text = " ".join(sentence[words[i][0] : words[i][1]] for i in tokens if i < len(words))
        if not text.strip():
            continue
        qid = f"propsegment-{doc_id}-{si}-{hashlib.sha1(str(tokens).encode()).hexdigest()[:8]}"
        own = frozenset({pid[doc_id]} if doc_id in pid else ())
        queries.append(EvalQuery(qid, text, _freeze(entry["passages"]), _freeze(dict(entry["units"])), Not(Eq("doc_id", doc_id)), own))
    stats = {
        "segmented_sentences": len(segmentations),
        "reference_propositions": n_reference,
        "sentences_with_text": n_sentences,
        "documents": len(passages),
        "queries": len(queries),
    }
    name = "propsegment-dev" if split == "all" else f"propsegment-dev-{split}"
    return EvalDataset(name, tuple(passages), tuple(units), tuple(queries), PROPOSITION, stats)


# --------------------------------------------------------------------------- SQuAD (training)


@_reader("SQuAD v1.1 json")
def read_squad(path: str | Path) -> EvalDataset:
    """A SQuAD v1.1 file (``data[].paragraphs[].context/qas``): paragraph = passage,
    sentence (the splitter's) = unit; a question's relevant unit is the sentence
    holding its first answer's ``answer_start`` (grade 1), its paragraph the relevant
    passage (grade 2). Questions whose answer falls outside every sentence are left out."""
    file = Path(path)
    if file.is_dir():
        found = sorted(file.glob("*.json"))
        if not found:
            raise InvalidInputError(f"no SQuAD .json file in {file}")
        file = found[0]
    try:
        articles = json.loads(file.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"cannot read SQuAD file {file}: {exc}") from exc
    passages, units, queries = [], [], []
    skipped = 0
    for a_i, article in enumerate(articles):
        for p_i, paragraph in enumerate(article["paragraphs"]):
            text = paragraph["context"]
            passage = Passage.create(f"squad-{a_i}-{p_i}", 0, text, {"title": article.get("title", "")})
            sentences = tuple(split_sentences(text))
            passages.append(passage)
            units.append(sentences)
            for qa in paragraph["qas"]:
                start = int(qa["answers"][0]["answer_start"]) if qa.get("answers") else -1
                hit = next((u.index for u in sentences if any(a <= start < b for a, b in u.char_spans)), None)
                if hit is None:
                    skipped += 1
                    continue
                queries.append(EvalQuery(f"squad-{qa['id']}", qa["question"], _freeze({passage.id: 2}),
                                         _freeze({(passage.id, hit): 1})))
    stats = {"articles": len(articles), "passages": len(passages), "queries": len(queries), "skipped": skipped}
    return EvalDataset("squad-train", tuple(passages), tuple(units), tuple(queries), SENTENCE, stats)


#: The readers ``agrame-vdb eval --dataset`` knows.
DATASETS = ("wikiqa", "scifact", "propsegment", "squad")


def read_dataset(name: str, path: str | Path, **options: Any) -> EvalDataset:
    """Read data set ``name`` (one of :data:`DATASETS`) from ``path``."""
    readers = {"wikiqa": read_wikiqa, "scifact": read_scifact, "propsegment": read_propsegment, "squad": read_squad}
    if name not in readers:
        raise InvalidInputError(f"unknown data set {name!r}; use one of {DATASETS}")
    return readers[name](path, **options)
