"""What training changes: the model in either regime, and the cached passage states.

``full``: the transformer, projection and (through the embedding matrix) the
markers are all trained; passages are encoded with gradients at every step (a GPU
regime; it runs on CPU for tests).

``query``: passages and ``[Q]`` queries keep the frozen transformer (cached, as in
``frozen``); ``[Q']`` queries run through the model's own copy of it whose top
``query_layers`` layers (all: ``None``) are trained, with the ``[Q']`` marker row and
the projection. Needs ``projection_scope = "subpassage_query"``; saved as
:data:`~agrame_vdb.checkpoints.SUBPASSAGE_LAYERS_FILE` beside the small files.

``frozen`` (the CPU regime): the transformer is frozen; the projection and the
input-embedding rows of the ``[Q]`` and ``[Q']`` markers are trained. The marker
rows are a separate parameter written over the marker positions of the query's
input embeddings, so no other row can change. Passages carry the frozen ``[D]``
marker, so their last hidden states are computed once and cached
(:class:`PassageCache`); queries run through the frozen transformer every step,
with gradients flowing only into the marker rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import Checkpoint, marker_rows, own_layers, save_checkpoint, subpassage_copy
from ..encoder import MultiVectorEncoder
from ..errors import InvalidInputError
from ..layout import document_tokens
from ..units import Unit, align_units

__all__ = ["Regime", "EncodedDoc", "PassageCache", "TrainableModel"]

log = logging.getLogger(__name__)

Regime = Literal["frozen", "full", "query"]


@dataclass(frozen=True)
class EncodedDoc:
    """A passage's ids, token offsets and (frozen regime) its cached last hidden states."""

    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int] | None, ...]
    encoded_chars: int
    hidden: torch.Tensor | None = None  # [n_tokens, hidden], cache dtype, CPU


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class PassageCache:
    """Token ids and (optionally) frozen last hidden states of passages, keyed by text.

    ``doc_maxlen`` bounds the encoding (``[CLS] [D] text [SEP]``). ``directory``
    keeps the hidden states between runs (one file per ``encode`` call, named by a
    hash of the model, lengths, dtype and texts).
    """

    def __init__(
        self,
        encoder: MultiVectorEncoder,
        *,
        doc_maxlen: int,
        with_hidden: bool,
        dtype: torch.dtype = torch.bfloat16,
        batch_size: int = 16,
        directory: Path | None = None,
        model_key: str = "",
    ) -> None:
        if doc_maxlen < 4:
            raise InvalidInputError(f"doc_maxlen must be at least 4, got {doc_maxlen}")
        self.encoder = encoder
        self.doc_maxlen = doc_maxlen
        self.with_hidden = with_hidden
        self.dtype = dtype
        self.batch_size = batch_size
        self.directory = directory
        self.model_key = model_key
        self.docs: dict[str, EncodedDoc] = {}

    def __len__(self) -> int:
        return len(self.docs)

    def get(self, text: str) -> EncodedDoc:
        return self.docs[_text_key(text)]

    def _tokenize(self, texts: Sequence[str]) -> list[EncodedDoc]:
        config = replace(self.encoder.config, doc_maxlen=self.doc_maxlen)
        return [EncodedDoc(tuple(d.ids), d.offsets, d.encoded_chars) for d in document_tokens(self.encoder.tokenizer, config, texts)]

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> int:
        """Tokenize (and, frozen regime, run the frozen transformer over) new texts; returns how many."""
        new = list(dict.fromkeys(t for t in texts if _text_key(t) not in self.docs))
        if not new:
            return 0
        docs = self._tokenize(new)
        if not self.with_hidden:
            for text, doc in zip(new, docs, strict=True):
                self.docs[_text_key(text)] = doc
            return len(new)
        stored = self._load_stored({_text_key(t) for t in new})
        hidden: list[torch.Tensor | None] = [stored.get(_text_key(t)) for t in new]
        todo = [i for i, h in enumerate(hidden) if h is None]
        if progress is not None and len(todo) < len(new):
            progress(len(new) - len(todo))
        order = sorted(todo, key=lambda i: len(docs[i].ids), reverse=True)
        enc = self.encoder
        computed: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                ids, mask = enc.padded([docs[i].ids for i in chunk])
                with torch.autocast(enc.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    states = enc.transformer(input_ids=ids.to(enc.device), attention_mask=mask.to(enc.device)).last_hidden_state
                states = states.to(device="cpu", dtype=self.dtype)
                for row, i in enumerate(chunk):
                    hidden[i] = states[row, : len(docs[i].ids)].clone()
                    computed[_text_key(new[i])] = hidden[i]  # type: ignore[assignment]
                if progress is not None:
                    progress(len(chunk))
        self._store(computed)
        for text, doc, h in zip(new, docs, hidden, strict=True):
            self.docs[_text_key(text)] = replace(doc, hidden=h)
        return len(new)

    def _prefix(self) -> str:
        tag = hashlib.sha1(f"{self.model_key}|{self.doc_maxlen}|{self.dtype}".encode()).hexdigest()[:12]
        return f"hidden-{tag}-"

    def _load_stored(self, wanted: set[str]) -> dict[str, torch.Tensor]:
        """Cached states of the ``wanted`` text keys, from every shard of this model and length."""
        if self.directory is None or not self.directory.is_dir():
            return {}
        from safetensors import safe_open

        found: dict[str, torch.Tensor] = {}
        for path in sorted(self.directory.glob(f"{self._prefix()}*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as fh:
                    for key in wanted.intersection(fh.keys()) - found.keys():
                        found[key] = fh.get_tensor(key)
            except Exception as exc:  # a broken shard is recomputed, never trusted
                log.warning("ignoring unreadable cache shard %s: %s", path, exc)
        if found:
            log.info("loaded %d cached passage states from %s", len(found), self.directory)
        return found

    def _store(self, computed: dict[str, torch.Tensor]) -> None:
        if self.directory is None or not computed:
            return
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1("".join(sorted(computed)).encode()).hexdigest()[:12]
        save_file({k: v.contiguous() for k, v in computed.items()}, str(self.directory / f"{self._prefix()}{digest}.safetensors"))

    def unit_positions(self, text: str, units: Sequence[Unit]) -> list[list[int] | None]:
        """Token positions of each unit in the cached encoding (None: truncated away)."""
        doc = self.get(text)
        aligned = align_units(list(units), doc.offsets, doc.encoded_chars)
        by_index = {(u.kind, u.index): u.token_positions for u in aligned.units}
        return [by_index.get((u.kind, u.index)) for u in units]


class TrainableModel(nn.Module):
    """An encoder's trainable parts for one regime, and how to save them."""

    def __init__(self, encoder: MultiVectorEncoder, regime: Regime, query_layers: int | None = None) -> None:
        super().__init__()
        if regime not in ("frozen", "full", "query"):
            raise InvalidInputError(f"regime must be 'frozen', 'full' or 'query', got {regime!r}")
        if encoder.projection is None:
            raise InvalidInputError("training needs a model with a projection (an agrame or ColBERT model)")
        self.encoder = encoder
        self.regime: Regime = regime
        self.transformer = encoder.transformer
        self.projection = encoder.projection
        self.projection.requires_grad_(True)
        self.trained_markers = tuple(m for m in ("query", "subpassage") if m in encoder.marker_ids)
        self.sub_transformer: nn.Module | None = None
        if regime == "query":
            self.sub_transformer = self._query_copy(query_layers)
            regime_rows = "frozen"  # marker rows as in the frozen regime
        else:
            regime_rows = regime
        if regime_rows == "frozen" and self.trained_markers:
            self.transformer.requires_grad_(False)
            self.transformer.eval()
            weight = self.transformer.get_input_embeddings().weight
            ids = [encoder.marker_ids[m] for m in self.trained_markers]
            self.register_buffer("marker_ids", torch.tensor(ids, dtype=torch.long, device=weight.device), persistent=False)
            self.marker_rows = nn.Parameter(weight[ids].detach().clone().float())
        elif regime_rows == "frozen":  # a model without query markers: only the projection learns
            self.transformer.requires_grad_(False)
            self.transformer.eval()
            self.marker_rows = None
        else:
            self.transformer.requires_grad_(True)
            self.transformer.train()
            self.marker_rows = None

    def _query_copy(self, query_layers: int | None) -> nn.Module:
        """The ``[Q']`` queries' own transformer: a copy (of the model's own, if it has one)
        whose top ``query_layers`` encoder layers train; the rest is shared and frozen."""
        enc = self.encoder
        if enc.config.projection_scope != "subpassage_query" or "subpassage" not in enc.marker_ids:
            raise InvalidInputError("the 'query' regime needs projection_scope 'subpassage_query' and a [Q'] marker "
                                    "(passages and [Q] queries stay the frozen base's)")
        self.transformer.requires_grad_(False)
        self.transformer.eval()
        source = enc.subpassage_transformer if enc.subpassage_transformer is not None else self.transformer
        layers = _encoder_layers(source)
        top = len(layers) if query_layers is None else query_layers
        if not 1 <= top <= len(layers):
            raise InvalidInputError(f"query_layers must be between 1 and the {len(layers)} layers, got {query_layers}")
        names = [n for n, _ in source.named_parameters() if (_layer_index(n) or -1) >= len(layers) - top]
        state = source.state_dict()
        sub = subpassage_copy(source, {n: state[n].detach().clone() for n in names})
        sub.requires_grad_(False)
        for name, param in sub.named_parameters():
            if name in names:
                param.requires_grad_(True)
        self._trained_layers = list(_encoder_layers(sub))[len(layers) - top :]
        return sub

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the trained transformer's activations in the backward pass (the
        Hugging Face model's own gradient checkpointing, non-reentrant)."""
        trained = self.sub_transformer if self.regime == "query" else self.transformer if self.regime == "full" else None
        if trained is None:
            raise InvalidInputError("gradient checkpointing needs a trained transformer: regime 'full' or 'query'")
        enable = getattr(trained, "activation_checkpointing_enable", None)  # the name transformers 5 prefers
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            trained.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def subpassage_layers(self) -> dict[str, torch.Tensor]:
        """The trained weights of the ``[Q']`` transformer, by state-dict name (``query`` regime)."""
        return own_layers(self.transformer, self.sub_transformer)

    def set_training(self, training: bool) -> None:
        """Train mode (dropout) for what trains: the whole model in ``full``, the ``[Q']``
        transformer in ``query``; the frozen transformer stays in eval mode."""
        self.train(training and self.regime == "full")
        for layer in getattr(self, "_trained_layers", ()):  # (the shared lower layers stay in eval mode)
            layer.train(training)

    def parameter_groups(self, lr: float, marker_lr: float, transformer_lr: float) -> list[dict]:
        groups = [{"params": list(self.projection.parameters()), "lr": lr, "name": "projection"}]
        if self.marker_rows is not None:
            groups.append({"params": [self.marker_rows], "lr": marker_lr, "name": "markers"})
        elif self.regime == "full":
            groups.append({"params": list(self.transformer.parameters()), "lr": transformer_lr, "name": "transformer"})
        if self.sub_transformer is not None:
            params = [p for p in self.sub_transformer.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": transformer_lr, "name": "subpassage_layers"})
        return groups

    def project(self, hidden: torch.Tensor, kind: str = "document") -> torch.Tensor:
        """Projection (where the model's ``projection_scope`` applies it to ``kind``:
        ``document``, ``query`` or ``subpassage``) and L2 normalisation, in float32
        (outside any autocast)."""
        with torch.autocast(hidden.device.type, enabled=False):
            hidden = hidden.float()
            if self.encoder.config.projects(kind):
                hidden = self.projection(hidden)
            return F.normalize(hidden, p=2, dim=-1)

    def query_vectors(self, texts: Sequence[str], marker: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Query token vectors ``[B, Lq, dim]`` with gradients, and the attention mask."""
        hidden, mask = self.query_states(texts, marker)
        return self.project_queries(hidden, mask, marker), mask

    def project_queries(self, hidden: torch.Tensor, mask: torch.Tensor, marker: str = "query") -> torch.Tensor:
        """Query vectors from the transformer's query states (see :meth:`query_states`)."""
        vectors = self.project(hidden, marker)
        if not self.encoder.config.query_augmentation:  # padding adds nothing, as in the encoder
            vectors = vectors * mask[..., None].to(vectors.dtype)
        return vectors

    def query_states(self, texts: Sequence[str], marker: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's last hidden states of the queries (trained marker rows in
        place), and the attention mask."""
        batch = self.encoder.tokenize_queries(list(texts), marker)  # type: ignore[arg-type]
        device = self.encoder.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        transformer = self.sub_transformer if self.sub_transformer is not None and marker == "subpassage" else self.transformer
        if self.marker_rows is None:
            grad = torch.enable_grad() if self.regime == "full" or transformer is self.sub_transformer else torch.no_grad()
            with grad:  # a frozen transformer with no trained rows needs no graph
                hidden = transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            embedding = transformer.get_input_embeddings()
            with torch.no_grad():
                base = embedding(ids)
            slot = (ids[..., None] == self.marker_ids).float()  # [B, L, n_markers]
            rows = torch.einsum("blm,mh->blh", slot, self.marker_rows).to(base.dtype)
            embeds = torch.where(slot.sum(-1, keepdim=True) > 0, rows, base)
            hidden = transformer(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden, mask

    def doc_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of passages with gradients (full regime)."""
        return self.transformer(input_ids=ids.to(self.encoder.device), attention_mask=mask.to(self.encoder.device)).last_hidden_state

    def current_marker_rows(self) -> dict[str, torch.Tensor]:
        """Input-embedding rows of the three markers as they are now (trained ones included)."""
        enc = self.encoder
        rows = marker_rows(self.transformer, enc.tokenizer, enc.config)
        if self.marker_rows is not None:
            names = {"query": enc.config.query_marker, "subpassage": enc.config.subpassage_marker}
            for i, m in enumerate(self.trained_markers):  # (only markers the model has)
                rows[names[m]] = self.marker_rows[i].detach().float().cpu().clone()
        return rows

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights this regime trains (what a resumed run must restore)."""
        sub = {f"sub_transformer.{n}" for n in self.subpassage_layers()}
        return {k: v for k, v in self.state_dict().items()
                if self.regime == "full" or not (k.startswith("transformer.") or k.startswith("sub_transformer.")) or k in sub}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        wanted = set(self.trained_state())
        if unexpected or wanted - set(state):
            raise InvalidInputError(f"a resume state of another model: missing {sorted(wanted - set(state))[:4]}, "
                                    f"unexpected {sorted(unexpected)[:4]}")

    def save(self, path: str | Path) -> Path:
        """Save in the agrame format: small files (settings, projection, marker rows) when
        the transformer is frozen and named by ``base``; the whole model otherwise."""
        enc = self.encoder
        small = self.regime != "full" and bool(enc.config.base)
        checkpoint = Checkpoint(self.transformer, enc.tokenizer, self.projection, enc.config, "agrame", Path(path),
                                self.sub_transformer)
        markers = self.current_marker_rows() if self.marker_rows is not None else None
        return save_checkpoint(checkpoint, path, include_transformer=not small, markers=markers)


def _encoder_layers(transformer: nn.Module) -> nn.ModuleList:
    """The transformer's stack of layers (``encoder.layer`` in BERT-family models)."""
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise InvalidInputError(f"the 'query' regime needs a BERT-family transformer (encoder.layer), got {type(transformer).__name__}")
    return layers


def _layer_index(name: str) -> int | None:
    """The layer a parameter name belongs to (``encoder.layer.<i>.…``), else None."""
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "encoder" and parts[1] == "layer" and parts[2].isdigit():
        return int(parts[2])
    return None
