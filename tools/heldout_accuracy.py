"""Held-out tweet accuracy of several sentiment value models on the same tweets, with bootstrap intervals: more
held-out tweets than `vm train` reports (it scores a fifth of --max-texts), and paired differences between models.

    PYTHONPATH=. python tools/heldout_accuracy.py --n 1600 \
        sia_edge/models/gemma3-270m-hidden-sentiment.onnx sia_edge/models/gemma3-270m-sentiment.onnx

The tweets are the build's (tools/build_hidden_value_models.py): the same seeded 12% holdout, and of it the first N of
the same seeded permutation, so N = 760 are the tweets every card reports and a larger N contains them. Each tweet is
cut at 50% and 100% of its tokens and scored as the runtime scores a text (`score_sequences`: for a hidden-state model
the last token as the candidate after the state before it, from one read of the tweet's states, cached like
`vm train`'s). A model is right when its score's sign is the label's. Reading a new tweet's states costs ~0.2 s once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sia_edge.evaluation.stats import bootstrap_ci  # 95% percentile intervals over tweets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from build_value_models import BUILD as TOKEN_BUILD, SEED  # noqa: E402  (the split every sentiment build uses)

FRACTIONS = (0.5, 1.0)


def held_out_tweets(data: Path, n: int):
    """(texts, targets) of the first n of the build's seeded held-out permutation."""
    from sia_edge.train.data import load_labelled_texts
    from sia_edge.train.trainer import stratified_split

    texts = load_labelled_texts(data, "text", "sentiment", positive="positive", weight_column="confidence")
    _, holdout = stratified_split(texts.targets, 0.12, SEED)
    chosen = np.sort(np.random.default_rng(SEED + 1).permutation(holdout)[:n])
    return [texts.texts[i] for i in chosen], texts.targets[chosen]


def hidden_scores(model, states: list[np.ndarray], sequences: list[list[int]], fraction: float) -> np.ndarray:
    """Each text (BOS first) cut at `fraction` of its tokens after BOS, scored from its states as `score_sequences`
    scores it: the last kept token as the candidate after the state before it (and the mean state from the one after
    BOS, for a pooling model)."""
    from sia_edge.train.metrics import prefix_length

    hidden, pooled, last, written = [], [], [], []
    for h, tokens in zip(states, sequences):
        end = max(1, prefix_length(len(tokens) - 1, fraction))  # index of the last token kept
        hidden.append(h[end - 1])
        pooled.append(h[:end].astype(np.float32).mean(axis=0))
        last.append(np.array([tokens[end]], dtype=np.int64))
        written.append(list(tokens[1:end]))
    scores = model.score_hidden(np.stack(hidden).astype(np.float32), last,
                                np.stack(pooled) if model.pools else None,
                                written if model.reads_continuation else None)
    return np.array([s[0] for s in scores])


def token_scores(model, sequences: list[list[int]], fraction: float, bos: int = 1) -> np.ndarray:
    """A token model reads the text without its `bos` leading BOS tokens (1 or 0: SmolLM2 adds none), cut at
    `fraction` of what remains."""
    from sia_edge.train.metrics import prefix_length

    return model.score_sequences([t[bos:bos + prefix_length(len(t) - bos, fraction)] for t in sequences])


def measure(paths: list[Path], n: int, gguf: Path | None = None) -> dict:
    """Each model's accuracy at 50% and 100% of the first n held-out tweets, with its per-tweet rights and wrongs."""
    from sia_edge.models import default_base_model
    from sia_edge.train.features import extract
    from sia_edge.train.hidden_train import feature_progress, open_feature_reader, with_bos
    from sia_edge.value_model import HiddenValueModel, open_value_model

    texts, targets = held_out_tweets(TOKEN_BUILD / "tweets-sentiment.csv", n)
    base, weights, reader, cache = open_feature_reader(gguf or default_base_model())
    try:
        sequences = [with_bos(base, base.tokenize(t, add_bos=False)[:128]) for t in texts]
        states = extract(reader, sequences, cache, feature_progress("hidden states"))
        report = {"n": len(texts), "models": {}}
        for path in paths:
            model = open_value_model(path)
            if isinstance(model, HiddenValueModel):  # refuses other weights, as the runtime does
                if model.looks_ahead or model.layer is not None:  # these read other states than the final ones here
                    sys.exit(f"{path.name}: look-ahead and middle-layer models are not measured by this tool; "
                             "their cards report `vm train`'s held-out figures")
                model.bind(weights, base.name, base.n_embd, base.n_vocab, n_layer=base.n_layer)
                score = lambda f: hidden_scores(model, states, sequences, f)  # noqa: E731
            else:
                model.bind(base.fingerprint, base.name, base.token_bytes, base.n_vocab)
                score = lambda f: token_scores(model, sequences, f, int(base.add_bos))  # noqa: E731
            report["models"][path.name] = {}
            for fraction in FRACTIONS:
                right = ((score(fraction) > 0) == (targets > 0.5)).astype(np.float64)
                _, low, high = bootstrap_ci(right, seed=SEED)
                report["models"][path.name][str(fraction)] = {"accuracy": float(right.mean()), "ci": [low, high],
                                                              "right": right.tolist()}
    finally:
        base.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="Value model files (.onnx) to score.")
    parser.add_argument("--n", type=int, default=1600, help="Held-out tweets (the first N of the build's).")
    parser.add_argument("--gguf", type=Path, default=None, help="Base model (default: the embedded Gemma).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    args = parser.parse_args()
    report = measure(args.models, args.n, args.gguf)
    if args.json:
        print(json.dumps(report))
        return
    print(f"| model ({report['n']} held-out tweets) | 50% | 100% |\n|---|---|---|")
    for name, cells in report["models"].items():
        print(f"| {name} | " + " | ".join(f"{c['accuracy']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
                                          for c in cells.values()) + " |")
    names = list(report["models"])
    for other in names[1:]:
        for fraction in map(str, FRACTIONS):
            diff = (np.array(report["models"][names[0]][fraction]["right"])
                    - np.array(report["models"][other][fraction]["right"]))
            _, low, high = bootstrap_ci(diff, seed=SEED)
            print(f"{names[0]} - {other} at {float(fraction):.0%}: {diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
