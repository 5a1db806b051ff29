"""Documents an indexing job reads: the record format, its checks, and the readers.

One record is one document. In JSON Lines (one object a line) or Parquet (one row
a record, the same field names as columns)::

    {"id": "doc-1",                       # string (an integer is taken as its decimal string)
     "text": "The tower is tall. It was built in 1889.",
     "title": "Eiffel Tower",             # optional; kept in metadata["title"]
     "metadata": {"lang": "en"},          # optional JSON object, stored with every passage
     "units": [                           # optional; char offsets into "text"
        {"kind": "sentence", "spans": [0, 18]},               # one span: [start, end)
        {"kind": "sentence", "spans": [19, 40]},
        {"kind": "claim", "spans": [[0, 9], [19, 40]]}],      # a non-contiguous unit
     "propositions": [                    # optional; kind "proposition"
        {"spans": [[0, 9], [13, 17]]},                        # char spans, or
        {"sentence": 1, "words": [0, 1, 2, 5, 6]}]}           # PropSegmEnt word indices

- ``text`` or ``passages`` (not both). ``passages`` is a list of pre-split
  passages, each a string or ``{"text": ..., "units": [...], "propositions": [...],
  "metadata": {...}}`` whose offsets are into that passage's text; such passages
  are indexed as given (passage ``i`` of the list is passage index ``i``).
- A unit is ``{"kind": K, "spans": S}``: ``K`` a lower-case identifier (default
  ``"custom"``), ``S`` one ``[start, end)`` pair or a list of them (a
  non-contiguous unit), half-open character offsets. Units of one kind are
  numbered in the order given. Units of kind ``"sentence"`` replace the automatic
  sentence splitter for that text.
- A proposition in word form is ``{"sentence": i, "words": [...]}``: word-token
  indices (PropSegmEnt's tokens, :func:`~agrame_vdb.units.word_spans`) of sentence
  ``i`` of the text: the given ``"sentence"`` units when there are any, else the
  splitter's sentences. ``"sentence"`` may also be the sentence's ``[start, end)``.
- Unknown top-level fields are refused (put them under ``metadata``), so a typo
  such as ``"txt"`` is a rejected record, not a silently empty one.

Two other record schemas are read by ``format=``: ``scifact`` (``doc_id``,
``title``, ``abstract`` as a list of sentences: the text is the sentences joined by
one space, and each is a ``sentence`` unit numbered as in the list, so SciFact's
evidence sentence ids are unit indices) and ``beir`` (``_id``, ``title``, ``text``,
``metadata``). The container is Parquet for ``.parquet``/``.pq`` files and JSON
Lines otherwise (``format="jsonl"`` or ``"parquet"`` forces it).

>>> doc = Document.from_json({"id": 7, "text": "Paris, in France. It is big.",
...                           "propositions": [{"sentence": 0, "words": [0, 3]}]})
>>> doc.id, [(u.kind, u.index, u.text_in(doc.text)) for u in doc.units]
('7', [('proposition', 0, 'Paris France')])
>>> Document.from_json({"id": "x", "txt": "typo"})
Traceback (most recent call last):
...
agrame_vdb.errors.InvalidRecordError: unknown field 'txt'; known fields: id, metadata, passages, propositions, text, title, units (put other fields under "metadata")
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from .errors import InvalidInputError, InvalidRecordError
from .units import PROPOSITION, SENTENCE, Unit, proposition_from_word_indices, split_sentences, units_from_char_spans

__all__ = [
    "FORMATS",
    "Document",
    "PassageInput",
    "SourceRecord",
    "read_documents",
    "records_from_iterable",
    "container_of",
    "JsonLine",
    "iter_json_lines",
    "read_json_lines",
]

#: ``format=`` values: the record schema and/or the container.
FORMATS: tuple[str, ...] = ("auto", "jsonl", "parquet", "scifact", "beir")

_FIELDS = ("id", "text", "title", "metadata", "passages", "units", "propositions")
_PASSAGE_FIELDS = ("text", "units", "propositions", "metadata")
_UNIT_FIELDS = ("kind", "spans")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


def _has_surrogate(value: Any) -> bool:
    """True when a string somewhere in ``value`` is not encodable as UTF-8 (a lone surrogate).

    Walks with a stack, not recursion: a record's metadata may nest hundreds of levels
    (it is refused later, with a typed error, for nesting too deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, Mapping):
            for k, v in item.items():
                stack.append(k)
                stack.append(v)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise InvalidRecordError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidRecordError(f"{where} is empty")
    if _has_surrogate(text):
        raise InvalidRecordError(f"{where} holds a lone surrogate (not valid Unicode, cannot be UTF-8)")
    return text


def _check_metadata(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return _frozen(None)
    if not isinstance(value, Mapping):
        raise InvalidRecordError(f"{where} must be an object, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidRecordError(f"{where} keys must be strings, got {key!r}")
    if _has_surrogate(value):
        raise InvalidRecordError(f"{where} holds a lone surrogate (not valid Unicode)")
    return _frozen(value)


def _check_units(units: Any, text: str, where: str) -> tuple[Unit, ...]:
    if not isinstance(units, (list, tuple)):
        raise InvalidRecordError(f"{where} must be a list of Unit records, got {type(units).__name__}")
    seen: set[tuple[str, int]] = set()
    for u in units:
        if not isinstance(u, Unit):
            raise InvalidRecordError(f"{where} must hold Unit records, got {type(u).__name__}")
        if u.char_spans[-1][1] > len(text):
            raise InvalidRecordError(
                f"{where}: {u.kind} {u.index} ends at char {u.char_spans[-1][1]}, past the text's {len(text)} chars"
            )
        if not any(text[s:e].strip() for s, e in u.char_spans):
            raise InvalidRecordError(f"{where}: {u.kind} {u.index} covers only whitespace")
        if (u.kind, u.index) in seen:
            raise InvalidRecordError(f"{where}: two units are {u.kind} {u.index}")
        seen.add((u.kind, u.index))
    return tuple(units)


@dataclass(frozen=True, slots=True)
class PassageInput:
    """A pre-split passage of a :class:`Document`: indexed as given."""

    text: str
    units: tuple[Unit, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _check_text(self.text, "passage text")
        object.__setattr__(self, "units", _check_units(self.units, self.text, "passage units"))
        object.__setattr__(self, "metadata", _check_metadata(self.metadata, "passage metadata"))


@dataclass(frozen=True, slots=True)
class Document:
    """One document to index: ``text`` (chunked into passages) or given ``passages``.

    ``units`` are extra units with character spans into ``text`` (sentences given
    here replace the splitter's). Checked when built; bad input raises
    :class:`~agrame_vdb.errors.InvalidRecordError`.
    """

    id: str
    text: str | None = None
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    passages: tuple[PassageInput, ...] | None = None
    units: tuple[Unit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _check_id(self.id))
        if (self.text is None) == (self.passages is None):
            raise InvalidRecordError("a document needs 'text' or 'passages' (exactly one of them)")
        if self.text is not None:
            _check_text(self.text, "'text'")
            object.__setattr__(self, "units", _check_units(self.units, self.text, "'units'"))
        else:
            if isinstance(self.passages, (str, bytes)) or not isinstance(self.passages, (list, tuple)):
                raise InvalidRecordError(f"'passages' must be a list, got {type(self.passages).__name__}")
            if not self.passages:
                raise InvalidRecordError("'passages' is empty")
            for i, p in enumerate(self.passages):
                if not isinstance(p, PassageInput):
                    raise InvalidRecordError(f"passages[{i}] must be a PassageInput, got {type(p).__name__}")
            object.__setattr__(self, "passages", tuple(self.passages))
            if self.units:
                raise InvalidRecordError("units of a document with 'passages' are given per passage")
        if self.title is not None:
            if not isinstance(self.title, str):
                raise InvalidRecordError(f"'title' must be a string, got {type(self.title).__name__}")
            if _has_surrogate(self.title):
                raise InvalidRecordError("'title' holds a lone surrogate (not valid Unicode)")
            if not self.title.strip():
                object.__setattr__(self, "title", None)
        object.__setattr__(self, "metadata", _check_metadata(self.metadata, "'metadata'"))

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_json(cls, obj: Any) -> Document:
        """A document from its JSON record (see the module docs for the format)."""
        if not isinstance(obj, Mapping):
            raise InvalidRecordError(f"a record must be a JSON object, got {_json_type(obj)}")
        unknown = sorted(str(k) for k in obj if k not in _FIELDS)
        if unknown:
            raise InvalidRecordError(
                f"unknown field {unknown[0]!r}; known fields: {', '.join(sorted(_FIELDS))} "
                '(put other fields under "metadata")'
            )
        if "id" not in obj or obj["id"] is None:
            raise InvalidRecordError("missing 'id'")
        doc_id = _check_id(obj["id"])
        has_text = obj.get("text") is not None
        has_passages = obj.get("passages") is not None
        if has_text and has_passages:
            raise InvalidRecordError("give 'text' or 'passages', not both")
        if not has_text and not has_passages:
            raise InvalidRecordError("missing 'text' (or 'passages')")
        metadata = obj.get("metadata")
        title = obj.get("title")
        if has_passages:
            if obj.get("units") or obj.get("propositions"):
                raise InvalidRecordError(
                    "a record with 'passages' gives units per passage: "
                    '{"passages": [{"text": ..., "units": [...]}]}'
                )
            raw = obj["passages"]
            if not isinstance(raw, list):
                raise InvalidRecordError(f"'passages' must be a list, got {_json_type(raw)}")
            if not raw:
                raise InvalidRecordError("'passages' is empty")
            passages = tuple(_passage_from_json(p, f"passages[{i}]") for i, p in enumerate(raw))
            return cls(doc_id, None, title, metadata, passages)
        text = _check_text(obj["text"], "'text'")
        units = _units_from_json(text, obj.get("units"), obj.get("propositions"), "")
        return cls(doc_id, text, title, metadata, None, units)

    @classmethod
    def from_scifact(cls, obj: Any) -> Document:
        """A SciFact corpus record: ``doc_id``, ``title``, ``abstract`` (a list of sentences)."""
        if not isinstance(obj, Mapping):
            raise InvalidRecordError(f"a record must be a JSON object, got {_json_type(obj)}")
        if obj.get("doc_id") is None:
            raise InvalidRecordError("missing 'doc_id'")
        doc_id = _check_id(obj["doc_id"], "'doc_id'")
        abstract = obj.get("abstract")
        if not isinstance(abstract, list) or not all(isinstance(s, str) for s in abstract):
            raise InvalidRecordError(f"'abstract' must be a list of sentence strings, got {_json_type(abstract)}")
        parts: list[str] = []
        units: list[Unit] = []
        pos = 0
        for i, sentence in enumerate(abstract):
            s = sentence.strip()
            if not s:
                continue  # an empty sentence keeps its number free: unit i is SciFact's sentence i
            if parts:
                pos += 1
            units.append(Unit(SENTENCE, i, ((pos, pos + len(s)),)))
            parts.append(s)
            pos += len(s)
        text = " ".join(parts)
        if not text:
            raise InvalidRecordError("'abstract' is empty")
        metadata = {k: v for k, v in obj.items() if k not in ("doc_id", "title", "abstract")}
        return cls(doc_id, text, obj.get("title"), metadata, None, tuple(units))

    @classmethod
    def from_beir(cls, obj: Any) -> Document:
        """A BEIR corpus record: ``_id``, ``title``, ``text``, ``metadata``."""
        if not isinstance(obj, Mapping):
            raise InvalidRecordError(f"a record must be a JSON object, got {_json_type(obj)}")
        if obj.get("_id") is None:
            raise InvalidRecordError("missing '_id'")
        doc_id = _check_id(obj["_id"], "'_id'")
        text = _check_text(obj.get("text"), "'text'") if obj.get("text") is not None else None
        if text is None:
            raise InvalidRecordError("missing 'text'")
        return cls(doc_id, text, obj.get("title") or None, obj.get("metadata"))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _check_id(value: Any, where: str = "'id'") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecordError(f"{where} must be a string or an integer, got {_json_type(value)}")
    doc_id = str(value)
    if not doc_id.strip():
        raise InvalidRecordError(f"{where} is empty")
    if _has_surrogate(doc_id):
        raise InvalidRecordError(f"{where} holds a lone surrogate (not valid Unicode)")
    return doc_id


def _passage_from_json(item: Any, where: str) -> PassageInput:
    if isinstance(item, str):
        return PassageInput(_check_text(item, where))
    if not isinstance(item, Mapping):
        raise InvalidRecordError(f"{where} must be a string or an object, got {_json_type(item)}")
    unknown = sorted(str(k) for k in item if k not in _PASSAGE_FIELDS)
    if unknown:
        raise InvalidRecordError(f"{where} has unknown field {unknown[0]!r}; known: {', '.join(_PASSAGE_FIELDS)}")
    text = _check_text(item.get("text"), f"{where}.text")
    units = _units_from_json(text, item.get("units"), item.get("propositions"), f"{where}.")
    return PassageInput(text, units, _check_metadata(item.get("metadata"), f"{where}.metadata"))


def _spans_from_json(raw: Any, where: str) -> list[tuple[int, int]]:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(raw, (list, tuple)) and len(raw) == 2 and all(is_int(x) for x in raw):
        return [(raw[0], raw[1])]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise InvalidRecordError(f"{where} spans must be [start, end] or a non-empty list of them, got {raw!r}")
    out = []
    for pair in raw:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_int(x) for x in pair)):
            raise InvalidRecordError(f"{where} spans must be [start, end] integer pairs, got {pair!r}")
        out.append((pair[0], pair[1]))
    return out


def _unit(text: str, kind: Any, spans: list[tuple[int, int]], index: int, where: str) -> Unit:
    if not isinstance(kind, str):
        raise InvalidRecordError(f"{where} kind must be a string, got {_json_type(kind)}")
    for s, e in spans:
        if s < 0 or e > len(text) or s >= e:
            raise InvalidRecordError(
                f"{where} span [{s}, {e}) is outside the text's {len(text)} chars or empty "
                "(spans are half-open [start, end) character offsets)"
            )
    try:
        [unit] = units_from_char_spans(text, [spans], kind)
    except InvalidInputError as exc:
        raise InvalidRecordError(f"{where}: {exc}") from None
    return replace(unit, index=index)


def _units_from_json(text: str, units: Any, propositions: Any, prefix: str) -> tuple[Unit, ...]:
    out: list[Unit] = []
    counts: dict[str, int] = {}

    def add(kind: str, spans: list[tuple[int, int]], where: str) -> None:
        out.append(_unit(text, kind, spans, counts.get(kind, 0), where))
        counts[kind] = counts.get(kind, 0) + 1

    if units is not None:
        if not isinstance(units, list):
            raise InvalidRecordError(f"'{prefix}units' must be a list, got {_json_type(units)}")
        for i, item in enumerate(units):
            where = f"{prefix}units[{i}]"
            if not isinstance(item, Mapping):
                raise InvalidRecordError(f'{where} must be an object {{"kind": ..., "spans": ...}}, got {_json_type(item)}')
            unknown = sorted(str(k) for k in item if k not in _UNIT_FIELDS)
            if unknown:
                raise InvalidRecordError(f"{where} has unknown field {unknown[0]!r}; known: kind, spans")
            if "spans" not in item:
                raise InvalidRecordError(f"{where} has no 'spans'")
            add(item.get("kind", "custom"), _spans_from_json(item["spans"], where), where)
    if propositions is not None:
        if not isinstance(propositions, list):
            raise InvalidRecordError(f"'{prefix}propositions' must be a list, got {_json_type(propositions)}")
        sentences: list[Unit] | None = None
        for i, item in enumerate(propositions):
            where = f"{prefix}propositions[{i}]"
            if not isinstance(item, Mapping):
                raise InvalidRecordError(f"{where} must be an object, got {_json_type(item)}")
            keys = set(item)
            if keys == {"spans"}:
                add(PROPOSITION, _spans_from_json(item["spans"], where), where)
                continue
            if keys != {"sentence", "words"}:
                raise InvalidRecordError(
                    f'{where} must be {{"spans": [[s, e], ...]}} or {{"sentence": i, "words": [w, ...]}}, '
                    f"got fields {sorted(map(str, keys))}"
                )
            if sentences is None:
                given = [u for u in out if u.kind == SENTENCE]
                sentences = given or split_sentences(text)
            start, end = _sentence_extent(item["sentence"], sentences, len(text), where)
            words = item["words"]
            if not isinstance(words, list) or not all(isinstance(w, int) and not isinstance(w, bool) for w in words):
                raise InvalidRecordError(f"{where} words must be a list of word indices, got {words!r}")
            try:
                unit = proposition_from_word_indices(text[start:end], words, index=0, offset=start)
            except InvalidInputError as exc:
                raise InvalidRecordError(f"{where}: {exc}") from None
            add(PROPOSITION, list(unit.char_spans), where)
    return tuple(out)


def _sentence_extent(ref: Any, sentences: Sequence[Unit], limit: int, where: str) -> tuple[int, int]:
    if isinstance(ref, int) and not isinstance(ref, bool):
        if not 0 <= ref < len(sentences):
            raise InvalidRecordError(f"{where} names sentence {ref}, but the text has {len(sentences)} sentences")
        unit = sentences[ref]
        return unit.char_spans[0][0], unit.char_spans[-1][1]
    spans = _spans_from_json(ref, where)
    if len(spans) != 1 or not 0 <= spans[0][0] < spans[0][1] <= limit:
        raise InvalidRecordError(f"{where} sentence must be an index or one [start, end) span inside the text, got {ref!r}")
    return spans[0]


# --------------------------------------------------------------------------- JSON Lines


class JsonLine(NamedTuple):
    """One non-blank line of a JSON Lines file: its number (1-based; blank lines count
    only with ``count_blank_lines``), the byte offset after it, and its value, or why
    it has none."""

    line: int
    position: int
    value: Any = None
    error: str | None = None


def _reject_nonfinite(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def iter_json_lines(
    path: str | Path, *, start: int = 0, start_line: int = 0, count_blank_lines: bool = False
) -> Iterator[JsonLine]:
    """The non-blank lines of a JSON Lines file from byte ``start`` on (``start_line``
    lines before it): every JSON Lines file agrame-vdb reads goes through here.
    Blank lines are skipped, and numbered only with ``count_blank_lines``.

    A line that is not UTF-8, or not JSON (``NaN`` and ``Infinity`` are not), comes
    out with ``error`` set, never as an exception; an unreadable file raises
    :class:`OSError`. :func:`read_json_lines` is the strict form.
    """
    line, position = start_line, start
    with open(path, "rb") as f:
        f.seek(start)
        for raw in f:
            position += len(raw)
            stripped = raw.strip()
            if stripped or count_blank_lines:
                line += 1
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield JsonLine(line, position, error=f"invalid UTF-8 at byte {exc.start} of the line: {exc.reason}")
                continue
            try:
                value = json.loads(text, parse_constant=_reject_nonfinite)
            except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
                yield JsonLine(line, position, error=f"invalid JSON: {exc}")
                continue
            yield JsonLine(line, position, value)


def read_json_lines(path: str | Path, *, what: str = "file") -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSON Lines file (blank
    lines are skipped but counted).

    An unreadable file is an :class:`InvalidInputError` ``cannot read {what} {path}: ...``,
    a line that is not UTF-8 JSON one naming ``{path}:{line}``.
    """
    try:
        for item in iter_json_lines(path, count_blank_lines=True):
            if item.error is not None:
                raise InvalidInputError(f"{path}:{item.line}: {item.error}")
            yield item.line, item.value
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {path}: {exc}") from exc


# --------------------------------------------------------------------------- readers


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record as read: a document, or why it was rejected.

    ``line`` is the 1-based line (JSON Lines) or row (Parquet) number.
    ``position`` is where reading resumes after this record: a byte offset
    (JSON Lines) or a row count (Parquet, iterables). ``doc_id`` is known even for
    most rejected records.
    """

    line: int
    position: int
    document: Document | None = None
    doc_id: str | None = None
    error: str | None = None


_CONVERTERS = {"agrame": Document.from_json, "scifact": Document.from_scifact, "beir": Document.from_beir}
_ID_FIELDS = {"agrame": "id", "scifact": "doc_id", "beir": "_id"}


def container_of(path: str | Path, format: str = "auto") -> tuple[str, str]:
    """``(container, schema)`` for a file: container ``jsonl``/``parquet``, schema ``agrame``/``scifact``/``beir``."""
    if format not in FORMATS:
        raise InvalidInputError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    schema = format if format in ("scifact", "beir") else "agrame"
    if format in ("jsonl", "parquet"):
        return format, schema
    return ("parquet" if Path(path).suffix.lower() in _PARQUET_SUFFIXES else "jsonl"), schema


def _convert(obj: Any, schema: str, line: int, position: int) -> SourceRecord:
    raw_id = obj.get(_ID_FIELDS[schema]) if isinstance(obj, Mapping) else None
    doc_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id) else None
    if doc_id is not None and _has_surrogate(doc_id):
        doc_id = None
    try:
        return SourceRecord(line, position, _CONVERTERS[schema](obj), doc_id)
    except InvalidInputError as exc:
        return SourceRecord(line, position, None, doc_id, str(exc))


def read_documents(
    path: str | Path, *, format: str = "auto", start: int = 0, start_line: int = 0
) -> Iterator[SourceRecord]:
    """Records of a JSON Lines or Parquet file, from ``start`` (a position of a
    :class:`SourceRecord`) on; ``start_line`` is the number of records before it.

    Blank lines are skipped. A line that is not UTF-8, not JSON or not a valid
    record comes out with ``error`` set, never as an exception.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"input file {path} does not exist or is not a file")
    container, schema = container_of(path, format)
    if container == "parquet":
        yield from _read_parquet(path, schema, start)
        return
    for item in iter_json_lines(path, start=start, start_line=start_line):
        if item.error is not None:
            yield SourceRecord(item.line, item.position, error=item.error)
        else:
            yield _convert(item.value, schema, item.line, item.position)


def _read_parquet(path: Path, schema: str, start: int) -> Iterator[SourceRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the test extras
        raise InvalidInputError("reading Parquet needs pyarrow: pip install 'agrame-vdb[parquet]'") from exc
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:
        raise InvalidInputError(f"cannot read Parquet file {path}: {exc}") from exc
    row = 0
    for group in range(pf.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        if row + n <= start:
            row += n
            continue
        table = pf.read_row_group(group)
        for i, obj in enumerate(table.to_pylist()):
            if row + i < start:
                continue
            clean = {k: v for k, v in obj.items() if v is not None}
            yield _convert(clean, schema, row + i + 1, row + i + 1)
        row += n


def records_from_iterable(items: Iterable[Any], *, format: str = "agrame", start: int = 0) -> Iterator[SourceRecord]:
    """Records from :class:`Document` objects or JSON records (dicts), numbered from 1.

    ``start`` skips that many items (a resumed job).
    """
    schema = "agrame" if format in ("auto", "jsonl", "parquet") else format
    if schema not in _CONVERTERS:
        raise InvalidInputError(f"unknown record format {format!r}; use agrame, scifact or beir")
    for i, item in enumerate(items):
        if i < start:
            continue
        if isinstance(item, Document):
            yield SourceRecord(i + 1, i + 1, item, item.id)
        else:
            yield _convert(item, schema, i + 1, i + 1)
