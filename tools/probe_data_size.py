"""Is a hidden-state probe's held-out accuracy limited by its training tweets? Refits tools/layer_probe.py's probe on
the first 3,800 and on all of its training tweets, each scored on the first 760 and on all of its held-out tweets
(the subsets are prefixes of the same seeded permutations, so the 3,800 / 760 rows reproduce layer_probe's table).
A last row fits one probe on all the layers' states side by side (does a second layer add what one lacks?).

    PYTHONPATH=. python tools/layer_probe.py --layers 10,18 --max-texts 8000 --l2 1e-3   # reads the states once
    PYTHONPATH=. python tools/probe_data_size.py --layers 10,18 --max-texts 8000

Reads layer_probe's cache (build/layer_probe/); decodes nothing. Needs the train extra (torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_hidden_value_models import SEED  # noqa: E402
from build_value_models import BUILD as TOKEN_BUILD  # noqa: E402
from layer_probe import CACHE, end_positions, fit_probe, load_states, score  # noqa: E402


def held_cells(probe, held_states, held_idx, small_held, targets, bos: int) -> list[str]:
    """Accuracy at 50% and 100% of each held-out tweet, on the smaller held-out set and on all of it."""
    from sia_edge.train.metrics import accuracy

    cells = []
    for held_mask in (small_held, np.ones(len(held_idx), bool)):
        states = [h for h, m in zip(held_states, held_mask) if m]
        for fraction in (0.5, 1.0):
            at = end_positions([len(h) for h in states], bos, fraction)
            logits = score(probe, np.stack([h[e] for h, e in zip(states, at)]))
            cells.append(f"{accuracy(targets[held_idx[held_mask]], logits):.3f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="10,18", help="the layers layer_probe read (its cache's name)")
    parser.add_argument("--max-texts", type=int, default=8000, help="layer_probe's --max-texts")
    parser.add_argument("--small", type=int, default=3800, help="the smaller training set")
    parser.add_argument("--model-stem", default="gemma-3-270m-q4_k_m", help="the GGUF's file stem in the cache name")
    parser.add_argument("--bos", type=int, default=1, help="BOS rows at the start of each cached text (1 if the GGUF "
                        "adds BOS, as Gemma does, else 0)")
    args = parser.parse_args()

    from sia_edge.train.data import load_labelled_texts
    from sia_edge.train.trainer import stratified_split

    texts = load_labelled_texts(TOKEN_BUILD / "tweets-sentiment.csv", "text", "sentiment", positive="positive",
                                weight_column="confidence")
    train_all, held_all = stratified_split(texts.targets, 0.12, SEED)
    train_order = np.random.default_rng(SEED).permutation(train_all)
    held_order = np.random.default_rng(SEED + 1).permutation(held_all)
    train_idx, held_idx = np.sort(train_order[:args.max_texts]), np.sort(held_order[:args.max_texts // 5])
    tag = f"{args.model_stem}-L{args.layers.replace(',', '_')}"
    train = load_states(CACHE / f"{tag}-train{args.max_texts}.npz", len(train_idx))
    held = load_states(CACHE / f"{tag}-held{args.max_texts}.npz", len(held_idx))
    small_train = np.isin(train_idx, train_order[:args.small])
    small_held = np.isin(held_idx, held_order[:args.small // 5])
    print(f"| layer | training tweets | held out {small_held.sum()}: 50% | 100% | held out {len(held_idx)}: 50% | 100% |")
    print("|---|---|---|---|---|---|")
    for layer in sorted(train):
        for mask in (small_train, np.ones(len(train_idx), bool)):
            probe = fit_probe([h for h, m in zip(train[layer], mask) if m], texts.targets[train_idx[mask]],
                              texts.weights[train_idx[mask]], 1e-3, 2)
            cells = held_cells(probe, held[layer], held_idx, small_held, texts.targets, args.bos)
            print(f"| {layer} | {mask.sum():,} | " + " | ".join(cells) + " |", flush=True)
    if len(train) > 1:  # every layer's state side by side, all the training tweets
        train_rows = [np.concatenate(rows, 1) for rows in zip(*(train[layer] for layer in sorted(train)))]
        held_rows = [np.concatenate(rows, 1) for rows in zip(*(held[layer] for layer in sorted(held)))]
        probe = fit_probe(train_rows, texts.targets[train_idx], texts.weights[train_idx], 1e-3, 2)
        cells = held_cells(probe, held_rows, held_idx, small_held, texts.targets, args.bos)
        print(f"| {'+'.join(map(str, sorted(train)))} | {len(train_idx):,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
