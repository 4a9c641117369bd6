"""Fit a contract-3 head on cached hidden states, measure it, and export it (torch only here and in hidden_head)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..value_model import STATE_POOLINGS, pad_sequences
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
    look_ahead: float = 3.0  # weight of the counterfactual term: the k candidates at sampled positions (if any)
    loss: str = "bce"  # bce: targets in [0, 1] (labels); mse: standardised rewards (distillation)
    pooling: str = "none"  # mean: v also reads the mean of the states over the continuation so far (contract 3);
    # mean+tokens: and a token memory, a learned weight per token summed over the continuation (hidden_head)
    value_width: int = 0  # v and the teacher: linear (0), or one hidden layer this wide
    # mean+tokens: AdamW weight decay of the free per-token memory weights. 0.01 (the head's) let rare tokens' noise
    # add up along a text: held-out R2 at the full text 0.60 at 16 samples per prompt, 0.19 at 8; 1.0: 0.72 and 0.43
    memory_decay: float = 1.0
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
    pooled_before: np.ndarray | None = None  # (P, d) float16: mean of the states from the continuation's start
    pooled_after: np.ndarray | None = None  # (P, d) float16: the same, the state after token j included
    continuations: np.ndarray | None = None  # (T, L) int64: each text's continuation, right-padded (token memory)
    text_of: np.ndarray | None = None  # (P,) int64: the row of continuations a position belongs to
    n_written: np.ndarray | None = None  # (P,) int64: how many continuation tokens come before token j

    def written(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The continuation before token j of each of these positions: (ids, mask), (B, L) each."""
        ids = self.continuations[self.text_of[rows]]
        mask = (np.arange(ids.shape[1])[None, :] < self.n_written[rows][:, None]).astype(np.float32)
        return ids, mask


def pools(pooling: str) -> bool:
    """Whether a head with this pooling reads the mean of the continuation's states."""
    return pooling in STATE_POOLINGS  # the runtime's own list (HiddenValueModel.pools)


def running_means(h: np.ndarray, start: int) -> np.ndarray:
    """Means of h[start..start + i] for every i: what the `pooled` input holds after each token of a continuation
    whose first state (the one after its prompt) is h[start]. -> (len(h) - start, d) float32"""
    sums = np.cumsum(h[start:].astype(np.float32), axis=0)
    return sums / np.arange(1, len(sums) + 1, dtype=np.float32)[:, None]


@dataclass
class LookAheads:
    """Counterfactual examples: at sampled positions, the state there and the base model's k most likely next
    tokens, each with the state it would lead to. The head learns to rank all k as the look-ahead value ranks
    them, not only the one token the text went on with (which is all `Positions` shows it)."""

    before: np.ndarray  # (C, d) float16
    candidates: np.ndarray  # (C, k) int64
    after: np.ndarray  # (C, k, d) float16
    pooled_before: np.ndarray | None = None  # (C, d): the continuation's mean state before the candidates
    pooled_after: np.ndarray | None = None  # (C, k, d): ... and with each candidate's state added


def look_aheads(states: list[np.ndarray], entries: list[dict[str, np.ndarray]], firsts: list[int] | None = None,
                pooling: str = "none") -> LookAheads:
    """states[i]: (n_i, d) hidden states after each token of text i; entries[i]: its features.extract_candidates
    rows (k per position, at positions from firsts[i] on). The state before a position p's candidates is the one
    after token p - 1; with mean pooling, the pool runs from the state before the first scored token."""
    if pooling == "mean+tokens":
        raise ValueError("look-ahead examples are not built for a token memory (pooling mean+tokens)")
    before, candidates, after, pooled_before, pooled_after = [], [], [], [], []
    for i, (h, entry) in enumerate(zip(states, entries)):
        where = entry["positions"]
        k = int(np.sum(where == where[0]))
        at = where[::k].astype(np.int64)
        before.append(h[at - 1])
        candidates.append(entry["ids"].astype(np.int64).reshape(-1, k))
        ahead = entry["states"].reshape(-1, k, entry["states"].shape[-1])
        after.append(ahead)
        if pooling == "mean":
            start = max(1, firsts[i] if firsts is not None else 1) - 1
            means = running_means(h, start)[at - 1 - start]  # (P, d): pool up to the state before the candidates
            count = (at - start).astype(np.float32)[:, None, None]  # states in that pool
            pooled_before.append(means.astype(np.float16))
            pooled_after.append(((means[:, None, :] * count + ahead.astype(np.float32)) / (count + 1))
                                .astype(np.float16))
    pooled = (np.concatenate(pooled_before), np.concatenate(pooled_after)) if pooling == "mean" else (None, None)
    return LookAheads(np.concatenate(before), np.concatenate(candidates), np.concatenate(after), *pooled)


def positions(states: list[np.ndarray], sequences: list[list[int]], targets: np.ndarray, weights: np.ndarray,
              first: list[int] | None = None, pooling: str = "none") -> Positions:
    """states[i]: (n_i, d) hidden states after each token of sequences[i] (BOS first, if any). Positions j from
    first[i] (default 1: every token after the first) to the end become examples. With mean pooling, each also
    gets the mean of the states from the one before first[i] (after the prompt) up to before and after token j;
    with mean+tokens, also the continuation (tokens from first[i] on) and how much of it precedes token j."""
    before, after, cands, ys, ws, pooled_before, pooled_after = [], [], [], [], [], [], []
    continuations, text_of, n_written = [], [], []
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
        if pools(pooling):
            means = running_means(h, start - 1).astype(np.float16)  # (n + 1, d)
            pooled_before.append(means[:-1])
            pooled_after.append(means[1:])
        if pooling == "mean+tokens":
            text_of.append(np.full(n, len(continuations), dtype=np.int64))
            n_written.append(np.arange(n, dtype=np.int64))
            continuations.append(tokens[start:])
    pooled = (np.concatenate(pooled_before), np.concatenate(pooled_after)) if pools(pooling) else (None, None)
    memory = (None, None, None)
    if pooling == "mean+tokens":
        memory = (pad_sequences(continuations)[0], np.concatenate(text_of), np.concatenate(n_written))
    return Positions(np.concatenate(before), np.concatenate(after), np.concatenate(cands), np.concatenate(ys),
                     np.concatenate(ws), *pooled, *memory)


def fit(train: Positions, embeddings: np.ndarray, config: HiddenFitConfig, progress=None,
        counterfactual: LookAheads | None = None):
    """Train a CandidateHead on the positions (and, given `counterfactual`, on the look-ahead of every candidate
    at those positions); returns it (eval mode)."""
    import torch
    from torch.nn import functional as F

    from .hidden_head import CandidateHead

    torch.manual_seed(config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        sample_rows = np.random.default_rng(config.seed).permutation(len(train.before))[:20000]
        sample = train.before[sample_rows]
        mean = sample.astype(np.float32).mean(0)
        sd = sample.astype(np.float32).std(0) + 1e-3
        used = np.unique(train.candidates)
        scale = float(np.sqrt((embeddings[used] ** 2).sum(1).mean()))
        pooled_stats = None
        if pools(config.pooling):
            pooled_sample = train.pooled_before[sample_rows].astype(np.float32)
            pooled_stats = (pooled_sample.mean(0), pooled_sample.std(0) + 1e-3)
        head = CandidateHead(train.before.shape[1], embeddings.shape[1], config.rank, config.width, mean, sd, scale,
                             pooled_stats, config.value_width,
                             len(embeddings) if config.pooling == "mean+tokens" else 0)
        optimiser = torch.optim.AdamW(parameter_groups(head, config), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        steps_per_epoch = int(np.ceil(len(train.before) / config.batch_size))
        steps = config.epochs * steps_per_epoch
        # each step also takes a slice of the counterfactual positions, so each is seen once per epoch
        cf_size = 0 if counterfactual is None else int(np.ceil(len(counterfactual.before) / steps_per_epoch))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate, total_steps=steps,
                                                       pct_start=0.1)
        rng = np.random.default_rng(config.seed)
        table = torch.as_tensor(embeddings)
        mean_weight = float(train.weights.mean())
        for epoch in range(config.epochs):
            order = rng.permutation(len(train.before))
            cf_order = rng.permutation(len(counterfactual.before)) if cf_size else None
            total = 0.0
            for step, start in enumerate(range(0, len(order), config.batch_size)):
                rows = order[start:start + config.batch_size]
                before = torch.as_tensor(train.before[rows].astype(np.float32))
                after = torch.as_tensor(train.after[rows].astype(np.float32))
                candidate = head.candidate_rows(table[torch.as_tensor(train.candidates[rows])])[:, None, :]
                y = torch.as_tensor(train.targets[rows])
                w = torch.as_tensor(train.weights[rows]) / mean_weight
                q = head.score(before, candidate, _rows(train.pooled_before, rows))[:, 0]
                v = head.look_ahead(after, _rows(train.pooled_after, rows))
                if head.remembers:  # the same memory term for q and the teacher: their gap does not train it
                    memory = _memory(head, table, train.written(rows), train.candidates[rows])
                    q, v = q + memory, v + memory
                if config.loss == "bce":
                    fit_q = F.binary_cross_entropy_with_logits(q, y, reduction="none")
                    fit_v = F.binary_cross_entropy_with_logits(v, y, reduction="none")
                else:
                    fit_q, fit_v = (q - y) ** 2, (v - y) ** 2
                loss = (w * (fit_q + fit_v + config.teacher * (q - v.detach()) ** 2)).mean()
                if cf_size:
                    picked = cf_order[step * cf_size:(step + 1) * cf_size]
                    loss = loss + config.look_ahead * _look_ahead_loss(head, table, counterfactual, picked)
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


def parameter_groups(head, config: HiddenFitConfig) -> list[dict]:
    """The head's parameters for AdamW: the token memory's free weights in a group of their own, with its decay."""
    if not head.remembers:
        return [{"params": list(head.parameters())}]
    free = head.token_weight.weight
    return [{"params": [p for p in head.parameters() if p is not free]},
            {"params": [free], "weight_decay": config.memory_decay}]


def _memory(head, table, written: tuple[np.ndarray, np.ndarray], candidates: np.ndarray):
    """m(s + t_j): the token memory of each row's continuation so far (ids, mask: (B, L) each) plus its candidate
    token j (B,). -> (B,)"""
    import torch

    ids, mask = (torch.as_tensor(a) for a in written)
    total = (head.token_weights(ids, table) * mask).sum(1)
    return head.memory(total + head.token_weights(torch.as_tensor(candidates), table))


def _rows(array: np.ndarray | None, rows):
    """float32 tensor of some rows of an optional float16 array (None stays None: a head without pooling)."""
    import torch

    return None if array is None else torch.as_tensor(array[rows].astype(np.float32))


def _look_ahead_loss(head, table, data: LookAheads, rows: np.ndarray):
    """Mean squared gap between the head's scores of the k candidates and the look-ahead value of each (the
    teacher V on the state the candidate leads to, held fixed here)."""
    import torch

    if len(rows) == 0:
        return torch.zeros(())
    before = torch.as_tensor(data.before[rows].astype(np.float32))
    after = torch.as_tensor(data.after[rows].astype(np.float32))
    q = head.score(before, head.candidate_rows(table[torch.as_tensor(data.candidates[rows])]),
                   _rows(data.pooled_before, rows))
    return ((q - head.look_ahead(after, _rows(data.pooled_after, rows)).detach()) ** 2).mean()


def junction_agreement(head, embeddings: np.ndarray, data: LookAheads) -> dict:
    """How the head ranks a junction's k candidates against the look-ahead value of each (what an exact look-ahead
    would steer by): the share of candidate pairs ordered alike, and the mean Spearman correlation per junction."""
    import torch

    with torch.no_grad():
        every = np.arange(len(data.before))
        q = head.score(torch.as_tensor(data.before.astype(np.float32)),
                       head.candidate_rows(torch.as_tensor(embeddings[data.candidates])),
                       _rows(data.pooled_before, every)).numpy()
        v = head.look_ahead(torch.as_tensor(data.after.astype(np.float32)), _rows(data.pooled_after, every)).numpy()
    upper = np.triu_indices(q.shape[1], 1)
    dq = (q[:, :, None] - q[:, None, :])[:, upper[0], upper[1]]
    dv = (v[:, :, None] - v[:, None, :])[:, upper[0], upper[1]]
    ranks = lambda x: np.argsort(np.argsort(x, axis=1), axis=1).astype(np.float64)  # noqa: E731
    rq, rv = ranks(q), ranks(v)
    rq -= rq.mean(1, keepdims=True)
    rv -= rv.mean(1, keepdims=True)
    spearman = (rq * rv).sum(1) / np.sqrt((rq ** 2).sum(1) * (rv ** 2).sum(1))
    return {"junctions": len(q), "pairs_agree": float(np.mean(np.sign(dq) == np.sign(dv))),
            "spearman": float(np.mean(spearman))}


def text_scores(head, embeddings: np.ndarray, states: list[np.ndarray], sequences: list[list[int]],
                fraction: float = 1.0, first: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each text's value at `fraction` of its scored tokens, as a junction would give it: q(state before the last
    token, last token). Also the look-ahead teacher's V(state after it). -> (q, v)"""
    import torch

    befores, lasts, afters, pooled_befores, pooled_afters, written = [], [], [], [], [], []
    for i, (h, tokens) in enumerate(zip(states, sequences)):
        start = max(1, first[i] if first is not None else 1)
        n = len(tokens) - start
        end = start + max(1, prefix_length(n, fraction)) - 1  # index of the last token kept
        befores.append(h[end - 1])
        afters.append(h[end])
        lasts.append(tokens[end])
        written.append(tokens[start:end])
        if head.pooled:
            means = running_means(h[:end + 1], start - 1)
            pooled_befores.append(means[-2])
            pooled_afters.append(means[-1])
    as_tensor = lambda rows: torch.as_tensor(np.stack(rows).astype(np.float32)) if rows else None  # noqa: E731
    with torch.no_grad():
        rows = head.candidate_rows(torch.as_tensor(embeddings[np.array(lasts)]))[:, None, :]
        q = head.score(as_tensor(befores), rows, as_tensor(pooled_befores))[:, 0]
        v = head.look_ahead(as_tensor(afters), as_tensor(pooled_afters))
        if head.remembers:  # each text's last token after the rest of its continuation
            memory = _memory(head, torch.as_tensor(embeddings), pad_sequences(written), np.array(lasts))
            q, v = q + memory, v + memory
        q, v = q.numpy(), v.numpy()
    return q.astype(np.float64), v.astype(np.float64)


def classification_metrics(head, embeddings, states, sequences, targets) -> list[dict]:
    rows = []
    for fraction in (0.25, 0.5, 0.75, 1.0):
        q, v = text_scores(head, embeddings, states, sequences, fraction)
        rows.append({"fraction": fraction, "accuracy": accuracy(targets, q), "auc": roc_auc(targets, q),
                     "lookahead_accuracy": accuracy(targets, v), "lookahead_auc": roc_auc(targets, v)})
    return rows


def export(head, embeddings: np.ndarray, out: Path, metadata: dict[str, str], scoring: str = "candidate") -> None:
    """Write the ONNX file (contract 3) and check onnxruntime's scores against torch's. scoring look-ahead: the
    graph is the head's look-ahead V alone, to read the state after each candidate (no candidate table)."""
    import onnx
    import torch

    from .export import replace_metadata, save_atomically, sia_keys
    from .hidden_head import ExportedHead, ExportedLookAhead, candidate_table

    if scoring == "look-ahead":
        graph = ExportedLookAhead(head).eval()
        metadata = {**metadata, "scoring": "look-ahead"}
    else:
        graph = ExportedHead(head, candidate_table(head, embeddings)).eval()
    d = head.mean.shape[0]
    hidden = torch.randn(3, d) * head.sd + head.mean
    candidates = torch.randint(0, len(embeddings), (3, 10))
    inputs, names, axes = (hidden, candidates), ["hidden", "candidates"], {"hidden": {0: "batch"},
                                                                        "candidates": {0: "batch", 1: "k"},
                                                                        "scores": {0: "batch", 1: "k"}}
    if head.pooled:  # contract 3's optional input: the mean state over the continuation so far
        inputs += (torch.randn(3, d) * head.pooled_sd + head.pooled_mean,)
        names.append("pooled")
        axes["pooled"] = {0: "batch"}
        metadata = {**metadata, "pooling": "mean"}
    if head.remembers:  # and the tokens generated so far (ragged rows: 4 tokens, 2, none)
        written = torch.randint(0, len(embeddings), (3, 4))
        inputs += (written, torch.tensor([[1.0] * 4, [1.0] * 2 + [0.0] * 2, [0.0] * 4]))
        names += ["continuation", "continuation_mask"]
        axes.update({"continuation": {0: "batch", 1: "n"}, "continuation_mask": {0: "batch", 1: "n"}})
        metadata["pooling"] = "mean+tokens"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.onnx.export(graph, inputs, str(partial), input_names=names, output_names=["scores"], dynamic_axes=axes,
                      opset_version=17, dynamo=False)
    model = onnx.load(str(partial))
    replace_metadata(model, sia_keys({key: str(value) for key, value in metadata.items()}))
    save_atomically(model, out)
    from ..value_model import HiddenValueModel

    # also checks the contract's metadata
    got = HiddenValueModel(out)._run(hidden.numpy(), candidates.numpy(), inputs[2].numpy() if head.pooled else None,
                                     (inputs[3].numpy(), inputs[4].numpy()) if head.remembers else None)
    with torch.no_grad():
        want = graph(*inputs).numpy()
    if not np.allclose(got, want, atol=1e-3):
        raise RuntimeError(f"the exported graph disagrees with torch (max |diff| {np.abs(got - want).max():.2g})")
