"""Which layer of the base model should a look-ahead value model read? A linear probe per layer, measured the way
the shipped models are: word-order pairs (tools/probes/word-order.tsv) and held-out tweets at 50% / 100%.

    PYTHONPATH=. python tools/layer_probe.py --layers 3,5,7,9,11,13,15,17,18 --max-texts 3800

Same tweets, split and subsets as `vm train --input hidden --max-texts N` (tools/build_hidden_value_models.py). For
each layer: a logistic regression on the standardised state after every prefix of each training tweet (weights
1 / positions x the tweet's confidence, as the look-ahead model's fit), scored on the state after a text's last
token. Layer n_layer is the final normed state the shipped look-ahead model reads. The states of every layer come
from one decode per text that stops after the deepest layer asked for (base_model.LayerStates), and are cached
under build/layer_probe/ (float32: a middle layer's residual stream overflows float16), so a refit takes seconds.
Needs the train extra (torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from build_hidden_value_models import PROBES, SEED, load_probes  # noqa: E402
from build_value_models import BUILD as TOKEN_BUILD, extract_tweets  # noqa: E402

CACHE = REPO / "build" / "layer_probe"


def load_states(path: Path, count: int) -> dict[int, list[np.ndarray]]:
    """The cache read_states wrote: layer -> per text (n_i, d) float32, for its first `count` texts."""
    with np.load(path) as data:  # each data[name] reads the whole array again: read each once
        offsets = data["offsets"]
        arrays = {int(name[1:]): data[name] for name in data.files if name.startswith("L")}
    return {layer: [a[offsets[i]:offsets[i + 1]] for i in range(count)] for layer, a in arrays.items()}


def end_positions(lengths: list[int], n_bos: int, fraction: float) -> list[int]:
    """Row of the state after `fraction` of each text's tokens (lengths count the BOS rows too)."""
    from sia_edge.train.metrics import prefix_length

    return [max(1, prefix_length(n - n_bos, fraction)) + n_bos - 1 for n in lengths]


def read_states(reader, sequences: list[list[int]], path: Path) -> dict[int, list[np.ndarray]]:
    """layer -> per sequence (n_i, d) float32, cached in one npz per (layers, texts)."""
    if path.exists():
        return load_states(path, len(sequences))
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in reader.layers}
    start = time.perf_counter()
    for i, tokens in enumerate(sequences, 1):
        for layer, states in reader.all(tokens).items():
            out[layer].append(states)  # float32: Gemma's residual stream overflows float16
        if i % 200 == 0 or i == len(sequences):
            print(f"  {path.stem}: {i}/{len(sequences)} texts, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    offsets = np.cumsum([0] + [len(t) for t in sequences])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, offsets=offsets, **{f"L{layer}": np.concatenate(rows) for layer, rows in out.items()})
    return out


def fit_probe(states: list[np.ndarray], targets: np.ndarray, weights: np.ndarray, l2: float, threads: int):
    """Weighted logistic regression on the standardised state after every prefix (token 1 on) -> (mean, scale, w, b)."""
    import torch

    torch.set_num_threads(threads)
    x = np.concatenate([h[1:] for h in states]).astype(np.float32)
    y = np.concatenate([np.full(len(h) - 1, t, np.float32) for h, t in zip(states, targets)])
    w = np.concatenate([np.full(len(h) - 1, c / max(1, len(h) - 1), np.float32) for h, c in zip(states, weights)])
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xt, yt, wt = torch.from_numpy((x - mean) / scale), torch.from_numpy(y), torch.from_numpy(w / w.sum())
    coef = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([coef, bias], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        logits = xt @ coef + bias
        value = (wt * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).sum()
        value = value + l2 * (coef ** 2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return mean, scale, coef.detach().numpy(), float(bias.item())


def score(probe, rows: np.ndarray) -> np.ndarray:
    mean, scale, coef, bias = probe
    return ((rows.astype(np.float32) - mean) / scale) @ coef + bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="3,5,7,9,11,13,15,17,18", help="layers to probe (n_layer: final norm)")
    parser.add_argument("--max-texts", type=int, default=3800, help="training tweets (a fifth as many held out)")
    parser.add_argument("--l2", default="1e-4,1e-3,1e-2", help="L2 strengths tried; each reported")
    parser.add_argument("--model", type=Path, help="GGUF base model [default: the built-in Gemma 3 270M]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the table here as JSON too")
    args = parser.parse_args()

    from sia_edge.base_model import BaseModel, LayerStates
    from sia_edge.models import default_base_model
    from sia_edge.train.data import load_labelled_texts
    from sia_edge.train.metrics import accuracy
    from sia_edge.train.trainer import stratified_split

    data_path = TOKEN_BUILD / "tweets-sentiment.csv"
    if not data_path.exists():
        extract_tweets(data_path)
    texts = load_labelled_texts(data_path, "text", "sentiment", positive="positive", weight_column="confidence")
    train_idx, holdout_idx = stratified_split(texts.targets, 0.12, SEED)
    train_idx = np.sort(np.random.default_rng(SEED).permutation(train_idx)[:args.max_texts])
    holdout_idx = np.sort(np.random.default_rng(SEED + 1).permutation(holdout_idx)[:max(1, args.max_texts // 5)])
    layers = [int(x) for x in args.layers.split(",")]

    gguf = args.model or default_base_model()
    base = BaseModel(gguf, n_threads=args.threads)
    reader = LayerStates(base, layers)
    bos = [base.bos_id] if base.add_bos else []

    def sequences(idx):
        return [bos + base.tokenize(texts.texts[i], add_bos=False)[:128] for i in idx]

    tag = f"{Path(gguf).stem}-L{'_'.join(map(str, reader.layers))}"
    train = read_states(reader, sequences(train_idx), CACHE / f"{tag}-train{args.max_texts}.npz")
    held_seqs = sequences(holdout_idx)
    held = read_states(reader, held_seqs, CACHE / f"{tag}-held{args.max_texts}.npz")
    probes = load_probes()
    probe_seqs = [bos + base.tokenize(t, add_bos=False) for _, pos, neg in probes for t in (pos, neg)]
    pairs = read_states(reader, probe_seqs, CACHE / f"{tag}-probes-{PROBES.stem}.npz")
    weights = texts.weights[train_idx]

    # the state after 50% / 100% of each held-out tweet's tokens (BOS first)
    ends = {fraction: end_positions([len(t) for t in held_seqs], len(bos), fraction) for fraction in (0.5, 1.0)}
    rows = []
    for layer in reader.layers:
        for l2 in (float(x) for x in args.l2.split(",")):
            probe = fit_probe(train[layer], texts.targets[train_idx], weights, l2, args.threads)
            row = {"layer": layer, "l2": l2}
            for fraction, at in ends.items():
                logits = score(probe, np.stack([h[e] for h, e in zip(held[layer], at)]))
                row[f"held_{fraction}"] = accuracy(texts.targets[holdout_idx], logits)
            last = score(probe, np.stack([h[-1] for h in pairs[layer]]))
            right = last[0::2] > last[1::2]
            row["word_order"] = float(right.mean())
            for category in sorted({c for c, _, _ in probes}):
                mask = np.array([c == category for c, _, _ in probes])
                row[category] = float(right[mask].mean())
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    reader.close()
    base.close()


if __name__ == "__main__":
    main()
