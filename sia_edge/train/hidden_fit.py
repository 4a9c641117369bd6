"""Fit a contract-3 head on cached hidden states, measure it, and export it (torch only here and in hidden_head)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import accuracy, prefix_length, roc_auc


@dataclass
class HiddenFitConfig:
    rank: int = 15  # r: the candidate table holds r + 1 float16 numbers per token (Gemma: 8.4 MB at r = 15)
    width: int = 256  # hidden units of u(x)
    epochs: int = 4
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    teacher: float = 3.0  # weight of the look-ahead teacher term (1 -> 3: word-order probes 0.76 -> 0.78, 600 tweets)
    loss: str = "bce"  # bce: targets in [0, 1] (labels); mse: standardised rewards (distillation)
    seed: int = 0
    threads: int = 2


@dataclass
class Positions:
    """Every prefix of every text as one example: the state before token j, token j, the state after it."""

    before: np.ndarray  # (P, d) float16
    after: np.ndarray  # (P, d) float16
    candidates: np.ndarray  # (P,) int64
    targets: np.ndarray  # (P,) float32
    weights: np.ndarray  # (P,) float32: 1 / (positions of its text) x the text's weight


def positions(states: list[np.ndarray], sequences: list[list[int]], targets: np.ndarray, weights: np.ndarray,
              first: list[int] | None = None) -> Positions:
    """states[i]: (n_i, d) hidden states after each token of sequences[i] (BOS first, if any). Positions j from
    first[i] (default 1: every token after the first) to the end become examples."""
    before, after, cands, ys, ws = [], [], [], [], []
    for i, (h, tokens) in enumerate(zip(states, sequences)):
        start = max(1, first[i] if first is not None else 1)
        n = len(tokens) - start
        if n <= 0:
            continue
        before.append(h[start - 1:-1])
        after.append(h[start:])
        cands.append(np.asarray(tokens[start:], dtype=np.int64))
        ys.append(np.full(n, targets[i], dtype=np.float32))
        ws.append(np.full(n, weights[i] / n, dtype=np.float32))
    return Positions(np.concatenate(before), np.concatenate(after), np.concatenate(cands), np.concatenate(ys),
                     np.concatenate(ws))


def fit(train: Positions, embeddings: np.ndarray, config: HiddenFitConfig, progress=None):
    """Train a CandidateHead on the positions; returns it (eval mode)."""
    import torch
    from torch.nn import functional as F

    from .hidden_head import CandidateHead

    torch.manual_seed(config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        sample = train.before[np.random.default_rng(config.seed).permutation(len(train.before))[:20000]]
        mean = sample.astype(np.float32).mean(0)
        sd = sample.astype(np.float32).std(0) + 1e-3
        used = np.unique(train.candidates)
        scale = float(np.sqrt((embeddings[used] ** 2).sum(1).mean()))
        head = CandidateHead(train.before.shape[1], embeddings.shape[1], config.rank, config.width, mean, sd, scale)
        optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        steps = config.epochs * int(np.ceil(len(train.before) / config.batch_size))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate, total_steps=steps,
                                                       pct_start=0.1)
        rng = np.random.default_rng(config.seed)
        table = torch.as_tensor(embeddings)
        mean_weight = float(train.weights.mean())
        for epoch in range(config.epochs):
            order = rng.permutation(len(train.before))
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                rows = order[start:start + config.batch_size]
                before = torch.as_tensor(train.before[rows].astype(np.float32))
                after = torch.as_tensor(train.after[rows].astype(np.float32))
                candidate = head.candidate_rows(table[torch.as_tensor(train.candidates[rows])])[:, None, :]
                y = torch.as_tensor(train.targets[rows])
                w = torch.as_tensor(train.weights[rows]) / mean_weight
                q = head.score(before, candidate)[:, 0]
                v = head.look_ahead(after)
                if config.loss == "bce":
                    fit_q = F.binary_cross_entropy_with_logits(q, y, reduction="none")
                    fit_v = F.binary_cross_entropy_with_logits(v, y, reduction="none")
                else:
                    fit_q, fit_v = (q - y) ** 2, (v - y) ** 2
                loss = (w * (fit_q + fit_v + config.teacher * (q - v.detach()) ** 2)).mean()
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(rows)
            if progress is not None:
                progress(f"epoch {epoch + 1}/{config.epochs}: loss {total / len(order):.4f}")
        head.eval()
        return head
    finally:
        torch.set_num_threads(previous_threads)


def text_scores(head, embeddings: np.ndarray, states: list[np.ndarray], sequences: list[list[int]],
                fraction: float = 1.0, first: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each text's value at `fraction` of its scored tokens, as a junction would give it: q(state before the last
    token, last token). Also the look-ahead teacher's V(state after it). -> (q, v)"""
    import torch

    befores, lasts, afters = [], [], []
    for i, (h, tokens) in enumerate(zip(states, sequences)):
        start = max(1, first[i] if first is not None else 1)
        n = len(tokens) - start
        end = start + max(1, prefix_length(n, fraction)) - 1  # index of the last token kept
        befores.append(h[end - 1])
        afters.append(h[end])
        lasts.append(tokens[end])
    with torch.no_grad():
        rows = head.candidate_rows(torch.as_tensor(embeddings[np.array(lasts)]))[:, None, :]
        q = head.score(torch.as_tensor(np.stack(befores).astype(np.float32)), rows)[:, 0].numpy()
        v = head.look_ahead(torch.as_tensor(np.stack(afters).astype(np.float32))).numpy()
    return q.astype(np.float64), v.astype(np.float64)


def classification_metrics(head, embeddings, states, sequences, targets) -> list[dict]:
    rows = []
    for fraction in (0.25, 0.5, 0.75, 1.0):
        q, v = text_scores(head, embeddings, states, sequences, fraction)
        rows.append({"fraction": fraction, "accuracy": accuracy(targets, q), "auc": roc_auc(targets, q),
                     "lookahead_accuracy": accuracy(targets, v), "lookahead_auc": roc_auc(targets, v)})
    return rows


def export(head, embeddings: np.ndarray, out: Path, metadata: dict[str, str]) -> None:
    """Write the ONNX file (contract 3) and check onnxruntime's scores against torch's."""
    import onnx
    import torch

    from .hidden_head import ExportedHead, candidate_table

    graph = ExportedHead(head, candidate_table(head, embeddings)).eval()
    d = head.mean.shape[0]
    hidden = torch.randn(3, d) * head.sd + head.mean
    candidates = torch.randint(0, len(embeddings), (3, 10))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(graph, (hidden, candidates), str(out), input_names=["hidden", "candidates"],
                      output_names=["scores"], dynamic_axes={"hidden": {0: "batch"}, "candidates": {0: "batch", 1: "k"},
                                                             "scores": {0: "batch", 1: "k"}},
                      opset_version=17, dynamo=False)
    model = onnx.load(str(out))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"sia_edge.{key}", str(value)
    onnx.save(model, str(out))
    from ..value_model import HiddenValueModel

    got = HiddenValueModel(out)._run(hidden.numpy(), candidates.numpy())  # also checks the contract's metadata
    with torch.no_grad():
        want = graph(hidden, candidates).numpy()
    if not np.allclose(got, want, atol=1e-3):
        raise RuntimeError(f"the exported graph disagrees with torch (max |diff| {np.abs(got - want).max():.2g})")
