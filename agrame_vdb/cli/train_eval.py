"""The model commands: train one, and evaluate models side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import AgrameError
from ._common import DeviceOption, DtypeOption, app, connect_store, failures
from ..schema import DEFAULT_STORAGE


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="Training config: TOML, JSON or YAML (see agrame_vdb.training.trainer).")],
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the config's seed.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Override the config's number of steps.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Override where the model is written.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Override where the log and checkpoints go.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Override the config's device (cpu, cuda[:N], auto).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train a model with the multi-granular loss; prints a JSON summary at the end.

    The config's relative paths are relative to the config file; overrides given
    here are relative to the current directory.
    """
    from ..training import load_config
    from ..training import train as run_training

    with failures():
        cfg, root = load_config(
            config, seed=seed, steps=steps, device=device,
            output=str(output.resolve()) if output is not None else None,
            run_dir=str(run_dir.resolve()) if run_dir is not None else None,
        )
        result = run_training(cfg, root, quiet=quiet)
    typer.echo(json.dumps({
        "output": str(result.output), "run_dir": str(result.run_dir), "log": str(result.run_dir / "train_log.jsonl"),
        "steps": result.steps, "examples": result.examples, "passages_cached": result.passages_cached,
        "seconds": round(result.seconds, 1), "first_loss": round(result.first_loss, 4), "last_loss": round(result.last_loss, 4),
        "validation": {k: round(v, 4) for k, v in result.validation.items()},
    }))


@app.command(name="eval")
def eval_command(
    dataset: Annotated[str, typer.Option("--dataset", help="wikiqa, scifact, propsegment or squad (a training set).")],
    path: Annotated[Path, typer.Option("--path", help="The data set file or folder (e.g. wikiqa/WikiQA-dev.tsv, scifact/, propsegment/).")],
    model: Annotated[Optional[list[Path]], typer.Option("--model", help="Model directory; repeat to compare models (default: the shipped model).")] = None,
    store: Annotated[Optional[str], typer.Option("--store", help="Store URL, as connect() takes it; collections agrame_eval_* are replaced. Default: a temporary Qdrant Edge store, removed afterwards.")] = None,
    configuration: Annotated[Optional[list[str]], typer.Option("--configuration", help="Only these configurations (repeatable); default: all.")] = None,
    candidates: Annotated[int, typer.Option("--candidates", "-n", help="First-stage candidates per query; 0: every passage (exhaustive).")] = 200,
    first_stage: Annotated[Optional[str], typer.Option("--first-stage", help="Where the candidates come from: pooled, lexical (BM25), hybrid (pooled + lexical, reciprocal rank fusion) or maxsim (the engine's MaxSim over a pooled prefetch). Default: the planner's (auto: hybrid where the collection has lexical vectors, else pooled).")] = None,
    recall_at: Annotated[str, typer.Option("--recall-at", help="N of the first-stage recall@N, comma-separated, measured for each first stage and the exhaustive MaxSim ranking; 'none': not measured.")] = "50,200,1000",
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of S(q,p) in the alpha configuration.")] = 1.0,
    storage: Annotated[str, typer.Option("--storage", help="Token-vector storage of the evaluation collections: float32, float16 (the index job's default), int8 or binary.")] = DEFAULT_STORAGE,
    token_pooling: Annotated[int, typer.Option("--token-pooling", help="Pool the evaluation collections' token vectors by this factor within their units (1: none).")] = 1,
    split: Annotated[str, typer.Option("--split", help="SciFact claims / PropSegmEnt document clusters: heldout, train or all.")] = "heldout",
    distractors: Annotated[int, typer.Option("--distractors", help="SciFact: abstracts added beside the cited ones.")] = 300,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N queries.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per configuration and model.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Evaluate models side by side at unit and passage level (P@1, R@5, MRR@10, nDCG@10).

    Configurations: the model's base used plainly (plain-base, the baseline), units
    encoded on their own (sentence-encoding), and passages encoded whole with units
    ranked by span MaxSim with [Q], with [Q'], and with [Q'] plus alpha times the
    passage score. Everything runs through the planner over the store (a temporary
    Qdrant Edge store by default) with its default first stage (200 candidates).
    Beside them, once per model and encoding: the first-stage recall@N (any relevant
    passage among a first stage's N candidates) and fraction@N (the share of the
    relevant passages there), for each first stage and for every passage ranked by MaxSim.
    """
    import dataclasses
    import tempfile

    from ..encoder import MultiVectorEncoder
    from ..evaluation import CONFIGURATIONS, ConfigurationResult, evaluate, read_dataset, recall_table, results_table

    options: dict[str, Any] = (
        {"split": split, "distractors": distractors} if dataset == "scifact" else {"split": split} if dataset == "propsegment" else {}
    )
    results: list[ConfigurationResult] = []
    with failures() as opened:
        if limit is not None and limit < 1:
            raise AgrameError(f"--limit must be >= 1, got {limit}")
        at = _recall_at(recall_at)
        data = read_dataset(dataset, path, **options)
        if limit is not None:
            data = dataclasses.replace(data, queries=data.queries[:limit])
        configs = tuple(configuration or CONFIGURATIONS)
        if store is None:
            scratch = opened.enter_context(tempfile.TemporaryDirectory(prefix="agrame-eval-"))
            store, label = f"qdrant-edge://{scratch}/store", "qdrant-edge (temporary)"
        else:
            label = store
        repository = connect_store(opened, store)
        directories: list[Path | None] = list(model) if model else [None]
        for directory in directories:
            encoder = MultiVectorEncoder.load(directory, device=device, dtype=dtype)
            name = "default" if directory is None else str(directory)
            found = evaluate(data, encoder, repository, model_name=name, configurations=configs,
                             candidates=candidates, alpha=alpha, store=label, first_stage=first_stage, recall_at=at,
                             storage=storage, token_pooling=token_pooling)
            results.extend(found)
            if json_output:
                for r in found:
                    typer.echo(json.dumps({**r.to_json(), "queries": len(data.queries), "passages": len(data.passages),
                                           "units": sum(len(u) for u in data.units),
                                           "dtype": str(encoder.dtype).removeprefix("torch."), "storage": storage}))
    if not json_output:
        typer.echo(results_table(results, ("P@1", "R@5", "MRR@10", "nDCG@10")))
        recall = recall_table(results)
        if recall:
            typer.echo("\nFirst-stage recall (recall@N: a relevant passage among the N candidates; fraction@N: the share found)")
            typer.echo(recall)


def _recall_at(text: str) -> tuple[int, ...]:
    """``--recall-at``: comma-separated positive ints, or ``none``."""
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise AgrameError(f"--recall-at takes comma-separated ints (e.g. 50,200,1000) or 'none', got {text!r}") from None
