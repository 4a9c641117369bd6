"""`sia-edge vm train --input hidden`: a contract-3 value model on the base model's own hidden states.

Steps: read the labelled texts; split them (the same stratified split as every other `vm train`); read each text's
hidden states through the base model (cached on disk per weights and text, resumable, progress on stderr); fit the
candidate head (hidden_fit); measure it on the held-out texts the way a junction scores; export and check the ONNX.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import TrainingDataError
from .config import FitReport, TrainingConfig


@dataclass(kw_only=True)
class HiddenTrainingReport(FitReport):
    label_type: str = "binary"
    majority_baseline: float = float("nan")
    prefix_metrics: list = field(default_factory=list)
    weights_fingerprint: str = ""
    hidden_size: int = 0
    feature_seconds: float = 0.0
    junction_agreement: dict | None = None  # held-out junctions: the head's candidate ranking against the look-ahead


def stderr_progress(message: str) -> None:
    print(f"sia-edge: {message}", file=sys.stderr, flush=True)


def feature_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback for hidden-state extraction that prints at most every few seconds."""
    last = [0.0]
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] >= 5.0:
            last[0] = now
            rate = done / max(now - started, 1e-9)
            stderr_progress(f"{label}: {done}/{total} texts ({rate:.1f}/s, "
                            f"{(total - done) / max(rate, 1e-9):.0f} s left)")

    return report


def open_feature_reader(gguf: Path, threads: int | None = None, layer: int | None = None):
    """The base model (for tokens and hidden states), its weights fingerprint, the reader of the states at `layer`
    (None: the final state) and their feature cache. -> (base, weights, reader, cache)"""
    from ..base_model import BaseModel
    from ..models import weights_fingerprint

    base = BaseModel(gguf, n_ctx=2048, n_threads=threads)
    weights = weights_fingerprint(gguf)
    if layer is not None and layer > base.n_layer:
        base.close()
        raise TrainingDataError(f"--layer {layer}: {gguf.name} has {base.n_layer} blocks (0..{base.n_layer - 1}; "
                                f"{base.n_layer} is its final state)")
    cache = feature_cache(weights, base.n_embd, None if layer == base.n_layer else layer)
    return base, weights, base.hidden_states(layer), cache


def feature_cache_folder(layer: int | None = None) -> Path:
    """Where hidden states are cached: the final state's, or block `layer`'s in a folder of its own."""
    from ..models import cache_dir

    root = cache_dir() / "hidden-features"
    return root if layer is None else root / f"layer-{layer}"


def feature_cache(weights: str, hidden_size: int, layer: int | None = None):
    """The feature cache of one base model's final states (layer None) or of block `layer`'s, kept as float32 (a
    middle layer's residual stream overflows float16). -> features.FeatureCache"""
    from .features import FeatureCache

    extra = {} if layer is None else {"dtype": "float32", "layer": layer}
    return FeatureCache(feature_cache_folder(layer), weights, hidden_size, **extra)


def architecture(rank: int, pooling: str, scoring: str = "candidate", value_width: int = 0) -> str:
    mlp = f"mlp{value_width}" if value_width else ""
    if scoring == "look-ahead":
        kind = f"look-ahead-{mlp or 'linear'}"
    else:
        kind = f"candidate-head-r{rank}" + (f"-{mlp}" if mlp else "")
    return kind + {"mean": "-mean-pool", "mean+tokens": "-mean-pool-token-memory"}.get(pooling, "")


def layer_metadata(layer: int | None) -> dict[str, str]:
    """Metadata `layer` (models/README.md), only for a model that reads a block's output, not the final state."""
    return {} if layer is None else {"layer": str(layer)}


def with_bos(base, tokens: list[int]) -> list[int]:
    return ([base.bos_id] if base.add_bos else []) + list(tokens)


def read_look_aheads(base, weights: str, sequences: list[list[int]], firsts: list[int], count: int, k: int = 10,
                     label: str = "look-ahead states") -> list[dict]:
    """Each text's counterfactual rows (features.extract_candidates): `count` positions x the base model's top-k
    tokens there, each with the hidden state it leads to; cached per weights, text, first position and count."""
    from ..base_model import CandidateStates
    from ..models import cache_dir
    from .features import CandidateCache, extract_candidates

    cache = CandidateCache(cache_dir() / "candidate-features", weights, base.n_embd, k=k)
    reader = CandidateStates(base, k, n_ctx=max(len(s) for s in sequences) + k)
    try:
        return extract_candidates(reader, sequences, firsts, count, cache, feature_progress(label))
    finally:
        reader.close()


def look_ahead_sets(base, weights: str, states, sequences, firsts, train_idx, holdout_idx, count: int,
                    pooling: str):
    """The counterfactual examples of the training texts and those of the held-out texts (for the junction
    metric): `states`, `sequences` and `firsts` are indexed by text (a list or a dict). -> (train, held-out)
    LookAheads"""
    from .hidden_fit import look_aheads

    ids = list(holdout_idx) + list(train_idx)
    entries = dict(zip(ids, read_look_aheads(base, weights, [sequences[i] for i in ids], [firsts[i] for i in ids],
                                             count)))
    return tuple(look_aheads([states[i] for i in idx], [entries[i] for i in idx], [firsts[i] for i in idx], pooling)
                 for idx in (train_idx, holdout_idx))


def train_hidden_value_model(config: TrainingConfig, progress: Callable[[str], None] = stderr_progress,
                             max_texts: int | None = None, rank: int = 15, look_ahead: int = 0,
                             pooling: str = "none",
                             scoring: str = "candidate") -> HiddenTrainingReport:
    from .data import load_labelled_texts
    from .features import embedding_rows, extract
    from .hidden_fit import HiddenFitConfig, classification_metrics, export, fit, junction_agreement, positions
    from .trainer import stratified_split

    started = time.perf_counter()
    data = load_labelled_texts(config.data, config.text_column, config.label_column, config.positive,
                               config.weight_column, config.label_type)
    train_idx, holdout_idx = stratified_split(data.targets, config.holdout, config.seed)
    if max_texts is not None:  # reading hidden states costs ~0.1-0.2 s per text (once: they are cached)
        # seeded random subsets: max_texts training texts, and a fifth as many held-out texts
        train_idx = np.sort(np.random.default_rng(config.seed).permutation(train_idx)[:max_texts])
        holdout_idx = np.sort(np.random.default_rng(config.seed + 1).permutation(holdout_idx)[:max(1, max_texts // 5)])
    base, weights, reader, cache = open_feature_reader(config.model, layer=config.layer)
    try:
        sequences = {i: with_bos(base, base.tokenize(data.texts[i], add_bos=False)[:config.max_tokens])
                     for i in np.concatenate([train_idx, holdout_idx])}
        order = list(holdout_idx) + list(train_idx)
        feature_start = time.perf_counter()
        states = dict(zip(order, extract(reader, [sequences[i] for i in order], cache,
                                         feature_progress("hidden states"))))
        feature_seconds = time.perf_counter() - feature_start
        progress("reading the base model's embedding table")
        embeddings = embedding_rows(config.model)
        fit_config = HiddenFitConfig(rank=rank, epochs=config.epochs, learning_rate=config.learning_rate,
                                     seed=config.seed, threads=config.threads, pooling=pooling,
                                     value_width=config.value_width, memory_decay=config.memory_decay,
                                     teacher=config.teacher_weight)
        train = positions([states[i] for i in train_idx], [sequences[i] for i in train_idx],
                          data.targets[train_idx], data.weights[train_idx], pooling=pooling)
        counterfactual = held_out_junctions = None
        if look_ahead:  # labelled texts: every token after BOS is scored
            counterfactual, held_out_junctions = look_ahead_sets(base, weights, states, sequences,
                                                                 {i: 1 for i in order}, train_idx, holdout_idx,
                                                                 look_ahead, pooling)
        progress(f"fitting on {len(train.candidates)} prefixes of {len(train_idx)} texts"
                 + (f" and the top-k look-ahead at {len(counterfactual.before)} of them" if look_ahead else ""))
        head = fit(train, embeddings, fit_config, progress, counterfactual)
        metrics = classification_metrics(head, embeddings, [states[i] for i in holdout_idx],
                                         [sequences[i] for i in holdout_idx], data.targets[holdout_idx])
        if scoring == "look-ahead":  # what ships is the look-ahead V: its figures are the model's
            metrics = [{"fraction": m["fraction"], "accuracy": m["lookahead_accuracy"], "auc": m["lookahead_auc"]}
                       for m in metrics]
        junctions = junction_agreement(head, embeddings, held_out_junctions) if look_ahead else None
        objective = config.objective or f"{config.label_column} = {config.positive or 1}"
        arch = architecture(rank, pooling, scoring, fit_config.value_width)
        metadata = {
            "contract": "3", "input": "hidden", "architecture": arch,
            "weights_fingerprint": weights, "tokenizer_fingerprint": base.fingerprint,
            "hidden_size": str(base.n_embd), "objective": objective, **layer_metadata(config.layer),
            "description": config.description or f"hidden-state value model ({objective}) for {config.model.name}",
            "base_model": config.model.name,
            "training": json.dumps({"source": "labelled texts", "data": Path(config.data).name,
                                    "n_train": len(train_idx), "n_holdout": len(holdout_idx),
                                    "holdout_metrics": metrics, "fit": fit_config.__dict__,
                                    "look_ahead_positions": look_ahead, "holdout_junctions": junctions}),
        }
        export(head, embeddings, Path(config.out), metadata, scoring)
    finally:
        base.close()
    positive_share = float(data.targets[holdout_idx].mean())
    return HiddenTrainingReport(
        out=str(config.out), objective=objective, n_train=len(train_idx), n_holdout=len(holdout_idx),
        vocab_rows=len(embeddings), state_size=0, input="hidden", arch=arch,
        file_bytes=Path(config.out).stat().st_size, seconds=time.perf_counter() - started, graph=head,
        label_type=data.label_type, majority_baseline=max(positive_share, 1 - positive_share),
        prefix_metrics=metrics, weights_fingerprint=weights, hidden_size=base.n_embd,
        feature_seconds=feature_seconds, junction_agreement=junctions)


def distill_hidden(config, reward, prompts, used, token_lists, score_from, targets, train_idx, holdout_idx,
                   mean: float, sd: float, progress) -> tuple[dict, object]:
    """`vm distill --input hidden`: the distillation's fit stage on the base model's hidden states. `token_lists`
    are the samples' prompt + continuation ids (no BOS), `score_from` where each continuation starts; every prefix
    from the first generated token on regresses onto its sample's standardised reward (squared error)."""
    from .distill_fit import objective_of, within_prompt_correlation
    from .features import embedding_rows, extract
    from .hidden_fit import HiddenFitConfig, export, fit, junction_agreement, positions, text_scores
    from .metrics import PREFIX_FRACTIONS, correlation, r_squared

    base, weights, reader, cache = open_feature_reader(config.model, layer=config.layer)
    try:
        sequences = [with_bos(base, tokens) for tokens in token_lists]
        shift = len(sequences[0]) - len(token_lists[0])  # 1 with a BOS
        first = [int(start) + shift for start in score_from]
        states = extract(reader, sequences, cache, feature_progress("hidden states"))
        embeddings = embedding_rows(config.model)
        fit_config = HiddenFitConfig(rank=config.rank, epochs=config.epochs, learning_rate=config.learning_rate,
                                     seed=config.seed, threads=config.threads, loss="mse", pooling=config.pooling,
                                     value_width=config.value_width, memory_decay=config.memory_decay,
                                     teacher=config.teacher_weight)
        pick = lambda idx, items: [items[i] for i in idx]  # noqa: E731
        train = positions(pick(train_idx, states), pick(train_idx, sequences), targets[train_idx],
                          np.ones(len(train_idx), np.float32), pick(train_idx, first), pooling=config.pooling)
        counterfactual = held_out_junctions = junctions = None
        if config.look_ahead:
            counterfactual, held_out_junctions = look_ahead_sets(base, weights, states, sequences, first, train_idx,
                                                                 holdout_idx, config.look_ahead, config.pooling)
        progress(f"{len(used)} samples ({len(train_idx)} train / {len(holdout_idx)} held out by prompt); reward "
                 f"{reward.name!r} mean {mean:.4g}, sd {sd:.4g}; fitting on {len(train.candidates)} prefixes"
                 + (f" and the top-k look-ahead at {len(counterfactual.before)} of them" if counterfactual else ""))
        head = fit(train, embeddings, fit_config, progress, counterfactual)
        if config.look_ahead:
            junctions = junction_agreement(head, embeddings, held_out_junctions)
        metrics = []
        for fraction in PREFIX_FRACTIONS:
            q, v = text_scores(head, embeddings, pick(holdout_idx, states), pick(holdout_idx, sequences), fraction,
                               pick(holdout_idx, first))
            q = v if config.scoring == "look-ahead" else q  # the look-ahead V is what ships
            metrics.append({"fraction": fraction, "r2": r_squared(targets[holdout_idx], q),
                            "correlation": correlation(targets[holdout_idx], q)})
        # q is the full texts' scores here (the last fraction is 1.0)
        within = within_prompt_correlation(targets[holdout_idx], q, [used[i][0] for i in holdout_idx])
        objective = objective_of(config, reward)
        metadata = {
            "contract": "3", "input": "hidden",
            "architecture": architecture(config.rank, config.pooling, config.scoring, config.value_width),
            "weights_fingerprint": weights, "tokenizer_fingerprint": base.fingerprint,
            "hidden_size": str(base.n_embd), "objective": objective, "base_model": Path(config.model).name,
            **layer_metadata(config.layer),
            "description": config.description or f"{objective} value model on the hidden state of "
                                                  f"{Path(config.model).name}, distilled from reward {reward.name}",
            "reward": reward.name, "reward_mean": repr(mean), "reward_sd": repr(sd),
            "training": json.dumps({"method": "distillation", "reward": reward.name, "n_train": len(train_idx),
                                    "n_holdout": len(holdout_idx), "holdout_metrics": metrics,
                                    "within_prompt_correlation": within, "fit": fit_config.__dict__,
                                    "look_ahead_positions": config.look_ahead, "holdout_junctions": junctions},
                                   sort_keys=True),
        }
        export(head, embeddings, Path(config.out), metadata, config.scoring)
        n_embd = base.n_embd
    finally:
        base.close()
    facts = dict(objective=objective, n_train=len(train_idx), n_holdout=len(holdout_idx), holdout_metrics=metrics,
                 within_prompt_correlation=within, junction_agreement=junctions,
                 vocab_rows=len(embeddings), state_size=n_embd, file_bytes=Path(config.out).stat().st_size)
    return facts, head
