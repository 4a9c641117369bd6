"""`sia-edge vm ...`: train and inspect value models. Attached to the main CLI with `main.add_command(vm)`.

Imports nothing heavy at module level: torch only when `vm train` runs, onnxruntime only when `vm info` runs.
SiaError subclasses propagate; the main CLI turns them into one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from .config import ARCHITECTURES, INPUTS, DistillConfig, FitConfig, TrainingConfig, default
from .data import LABEL_TYPES

_DEFAULTS = {name: default(FitConfig, name) for name in ("dim", "hidden", "ema_decay", "holdout", "min_count",
                                                         "batch_size", "learning_rate", "token_dropout",
                                                         "context_prob", "context_tokens", "recurrent_size", "rank",
                                                         "look_ahead", "pooling", "scoring", "layer",
                                                         "value_width", "memory_decay", "teacher_weight")}


def _fit_options(func):
    """The options `vm train` and `vm distill` share, declared once (FitConfig holds their values)."""
    for option in reversed([
        click.option("--objective", default=None,
                     help="What 'aligned' means, stored in the model, e.g. 'positive sentiment' [default: "
                          "train: '<label-column> = <positive>'; distill: the reward's name]."),
        click.option("--description", default=None, help="One-line description stored in the model."),
        click.option("--dim", type=click.IntRange(min=1), default=_DEFAULTS["dim"], show_default=True,
                     help="Token (byte) embedding size D; the bag architecture's state has 2D+1 numbers."),
        click.option("--hidden", type=click.IntRange(min=1), default=_DEFAULTS["hidden"], show_default=True,
                     help="Hidden units of the scoring MLP."),
        click.option("--recurrent-size", type=click.IntRange(min=1), default=_DEFAULTS["recurrent_size"],
                     show_default=True, help="gru (and --input bytes): hidden size H of the GRU, also the state size."),
        click.option("--rank", type=click.IntRange(min=1), default=_DEFAULTS["rank"], show_default=True,
                     help="--input hidden: numbers per candidate token in the head's table (float16, plus one "
                          "bias); the file holds (rank + 1) x 2 bytes per vocabulary entry."),
        click.option("--look-ahead", type=click.IntRange(min=0), default=_DEFAULTS["look_ahead"],
                     show_default=True,
                     help="--input hidden: at N positions of each text, also decode the base model's 10 most likely "
                          "next tokens and teach the head to rank all of them as the state each leads to does "
                          "(~0.1 s per position once; cached like the hidden states). 0: only the token the text "
                          "went on with."),
        click.option("--pooling", type=click.Choice(["none", "mean", "mean+tokens"]), default=_DEFAULTS["pooling"],
                     show_default=True,
                     help="--input hidden: mean also gives the head the mean of the base model's hidden states over "
                          "the continuation so far, so it remembers what appeared many tokens ago (objectives "
                          "such as 'clean'); mean+tokens adds a memory of which tokens were written (a learned "
                          "weight per token, summed; --scoring candidate only, no --look-ahead); none reads the "
                          "state after the text only."),
        click.option("--scoring", type=click.Choice(["candidate", "look-ahead"]), default=_DEFAULTS["scoring"],
                     show_default=True,
                     help="--input hidden: candidate scores the k candidates from the state before them (one small "
                          "call per junction); look-ahead exports a value of the state after each candidate, which "
                          "the runtime reads by decoding the k candidates at a junction (exact, ~k tokens of base "
                          "model work per junction)."),
        click.option("--layer", type=click.IntRange(min=0), default=_DEFAULTS["layer"],
                     help="--scoring look-ahead: read the output of this transformer block (0-based) instead of the "
                          "final state; a junction's look-ahead then stops there, so a middle layer costs less "
                          "(tools/layer_probe.py compares layers) [default: the final state]."),
        click.option("--value-width", type=click.IntRange(min=0), default=_DEFAULTS["value_width"],
                     show_default=True,
                     help="--input hidden: hidden units of the head's value term (one GELU layer); 0 keeps it linear. "
                          "A non-linear value fits rewards such as 'clean' better (docs/distillation.md)."),
        click.option("--memory-decay", type=click.FloatRange(min=0), default=_DEFAULTS["memory_decay"],
                     show_default=True,
                     help="--pooling mean+tokens: weight decay of the token memory's free per-token weights (the "
                          "rest of the head keeps 0.01). It keeps rare tokens' weights small, so their noise does "
                          "not add up over a long text (docs/distillation.md)."),
        click.option("--teacher-weight", type=click.FloatRange(min=0), default=_DEFAULTS["teacher_weight"],
                     show_default=True,
                     help="--input hidden --scoring candidate: how strongly the head's candidate score is pulled "
                          "toward the look-ahead teacher's value of the state the candidate leads to (a squared "
                          "gap in logits); 0 fits the head to the labels alone."),
        click.option("--min-count", type=click.IntRange(min=1), default=_DEFAULTS["min_count"], show_default=True,
                     help="Tokens seen fewer times in training share the unknown-token embedding."),
        click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=_DEFAULTS["learning_rate"],
                     show_default=True, help="Peak AdamW learning rate (cosine decay)."),
        click.option("--threads", type=click.IntRange(min=1), default=default(FitConfig, "threads"),
                     show_default=True, help="torch threads; results are reproducible for a given thread count."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table."),
    ]):
        func = option(func)
    return func


def _echo_report(report, lines: list[str], first_column: str, rows: list[dict], columns: list[str]) -> None:
    """The shape both reports share: what was written, what it says, then held-out metrics by prefix length."""
    click.echo(f"wrote {report.out} ({report.file_bytes / 1e6:.1f} MB, {report.input}, {report.arch}, state size "
               f"{report.state_size}, {report.vocab_rows} embedding rows) in {report.seconds:.0f} s"
               + (f" ({report.sampling_seconds:.0f} s sampling)" if hasattr(report, "sampling_seconds") else ""))
    for line in lines:
        click.echo(line)
    click.echo(f"{first_column:>12}  " + "  ".join(f"{c:>11}" for c in columns))
    for row in rows:
        click.echo(f"{row['fraction']:>12.0%}  " + "  ".join(f"{row[c]:11.3f}" for c in columns))


@click.group("vm")
def vm() -> None:
    """Train and inspect ONNX value models (the scorers that steer generation)."""


@vm.command("train")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Labelled texts: CSV with a header row, or JSONL (one object per line). UTF-8.")
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="GGUF base model whose tokenizer a token-level value model uses [default: $SIA_EDGE_MODEL, else "
                   "the built-in Gemma 3 270M base]. Not used with --input bytes.")
@click.option("--input", "input_kind", type=click.Choice(INPUTS), default="tokens", show_default=True,
              help="What the value model reads: the base model's token ids (one tokenizer), the UTF-8 bytes of "
                   "the text (any GGUF; no --model needed), or the base model's own hidden state (these exact "
                   "weights; contract 3: reads word order and context, best quality).")
@click.option("--max-texts", type=click.IntRange(min=1), default=None,
              help="--input hidden: train on a seeded subset of at most N texts (reading hidden states costs "
                   "~0.1-0.2 s per text once; they are cached per model and text, so a rerun is quick).")
@click.option("--arch", type=click.Choice(ARCHITECTURES), default=None,
              help="gru: a GRU over the sequence (order-aware); bag: token embeddings summed plus a recent-token "
                   "average (order-blind, tokens only; what the shipped token models use) [default: gru].")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the ONNX value model.")
@click.option("--text-column", default="text", show_default=True, help="Column (or JSON key) holding the text.")
@click.option("--label-column", default="label", show_default=True,
              help="Column holding the label: 0/1, true/false, a class name (with --positive) or a score in [0, 1].")
@click.option("--positive", default=None,
              help="For text labels: the label value that counts as positive; every other value is negative.")
@click.option("--label-type", type=click.Choice(LABEL_TYPES), default="auto", show_default=True,
              help="binary (0/1 or --positive) or score (a target in [0, 1]); auto picks binary when every label "
                   "is 0/1 or --positive is given.")
@click.option("--weight-column", default=None,
              help="Optional column of non-negative sample weights, e.g. annotator confidence.")
@click.option("-s", "--seed", type=int, default=0, show_default=True,
              help="Seed for the held-out split, initialisation and batching; same seed, same model.")
@click.option("--epochs", type=click.IntRange(min=1), default=default(TrainingConfig, "epochs"), show_default=True,
              help="Passes over the training texts.")
@click.option("--ema-decay", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=_DEFAULTS["ema_decay"], show_default=True,
              help="Decay of the moving average that keeps recent tokens (and candidates) influential.")
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=_DEFAULTS["holdout"], show_default=True,
              help="Fraction of texts held out (stratified by label) for the reported metrics.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=default(TrainingConfig, "max_tokens"), show_default=True,
              help="Train on at most the first N tokens of each text (with --input bytes: 4N bytes).")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS["batch_size"], show_default=True,
              help="Texts per optimisation step.")
@click.option("--token-dropout", type=click.FloatRange(0, 1, max_open=True), default=_DEFAULTS["token_dropout"],
              show_default=True, help="Share of training tokens replaced by the unknown token (regularisation).")
@click.option("--context-prob", type=click.FloatRange(0, 1), default=_DEFAULTS["context_prob"], show_default=True,
              help="Share of training texts preceded by up to --context-tokens tokens of other texts, so the model "
                   "judges the latest text after a prompt and candidates still count late in long texts.")
@click.option("--context-tokens", type=click.IntRange(min=1), default=_DEFAULTS["context_tokens"], show_default=True,
              help="Longest context put before a training text; also the context of the 'after context' metric "
                   "(with --input bytes: 4x as many bytes).")
@_fit_options
def train_command(model: Path | None, input_kind: str, as_json: bool, **options) -> None:
    """Train a value model on labelled text and export it as ONNX: for one base model's tokenizer (--input
    tokens) or for any GGUF (--input bytes).

    Every prefix of every text learns to predict the text's label, so partial generations score sensibly.
    Progress goes to stderr; the held-out metrics at 25/50/75/100% of each text's length go to stdout.
    """
    from ..models import resolve_base_model
    from .trainer import require_training_extra, train_value_model

    if options.get("max_texts") is not None and input_kind != "hidden":
        raise click.UsageError("--max-texts applies to --input hidden only")
    _hidden_only(options, input_kind)
    require_training_extra()  # before resolving the default model, which may assemble a 250 MB file
    base_model = resolve_base_model(model) if input_kind in ("tokens", "hidden") else None
    config = TrainingConfig(model=base_model, input=input_kind, **options)
    if input_kind == "hidden":
        from .hidden_train import train_hidden_value_model

        report = train_hidden_value_model(config, max_texts=config.max_texts, rank=config.rank,
                                          look_ahead=config.look_ahead, pooling=config.pooling,
                                          scoring=config.scoring)
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2))
            return
        _echo_report(report, [f"objective: {report.objective}; {report.n_train} training texts, {report.n_holdout} "
                              f"held out; hidden states read in {report.feature_seconds:.0f} s (cached)",
                              f"majority-class accuracy on held-out texts: {report.majority_baseline:.3f}"],
                     "prefix", report.prefix_metrics, [k for k in report.prefix_metrics[0] if k != "fraction"])
        _echo_junctions(report.junction_agreement)
        return
    report = train_value_model(config)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    lines = [f"objective: {report.objective} ({report.label_type}); {report.n_train} training texts, "
             f"{report.n_holdout} held out"]
    if not math.isnan(report.majority_baseline):
        lines.append(f"majority-class accuracy on held-out texts: {report.majority_baseline:.3f}")
    columns = [k for k in report.prefix_metrics[0] if k != "fraction"]
    _echo_report(report, lines, "prefix", report.prefix_metrics, columns)
    after = report.after_context
    click.echo(f"{'100%':>12}  " + "  ".join(f"{after[c]:11.3f}" for c in columns)
               + f"  (after {after['context_tokens']} {'bytes' if report.input == 'bytes' else 'tokens'} "
                 f"of other held-out texts)")


@vm.command("distill")
@click.option("--prompts", "prompts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file with one prompt per line: the openings the base model continues (on-policy).")
@click.option("--texts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of --prompts: finished texts scored as they are (off-policy), one per line of a .txt "
                   "file or the --text-column of a CSV/JSONL file.")
@click.option("--text-column", default="text", show_default=True, help="Column of --texts in a CSV or JSONL file.")
@click.option("--max-texts", type=click.IntRange(min=1), default=None,
              help="Use a seeded random subset of at most N of the --texts.")
@click.option("--reward", required=True,
              help="Sequence-level reward scoring each finished text once: 'clean' (1 - P(offensive), needs "
                   "sia-edge[clean]), 'value-model:PATH' (an existing value model's full-text score) or "
                   "'module:callable' returning an object with name and score(texts).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the ONNX value model.")
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="GGUF base model that writes the samples and whose tokenizer the value model uses "
                   "[default: $SIA_EDGE_MODEL, else the built-in Gemma 3 270M base].")
@click.option("--input", "input_kind", type=click.Choice(INPUTS), default="tokens", show_default=True,
              help="What the value model reads: the base model's token ids (bag of embeddings, as the shipped "
                   "models), the UTF-8 bytes of those tokens (a GRU that serves any GGUF, as `vm train --input "
                   "bytes`), or the base model's own hidden states (contract 3: these exact weights).")
@click.option("--samples-per-prompt", type=click.IntRange(min=1), default=4, show_default=True,
              help="Continuations drawn per prompt.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens per continuation.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Candidates per step, as steering will use them (sampling is restricted to the top-k).")
@click.option("-t", "--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Sampling temperature, as steering will use it.")
@click.option("--steered-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the samples drawn with steering (entropy gate, default tau) instead of unsteered.")
@click.option("--steer-value-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Value model steering those samples [default: the shipped one for the base model].")
@click.option("--reward-on", type=click.Choice(["full", "continuation"]), default="full", show_default=True,
              help="What the reward reads: prompt + continuation (the paper's R(x, y)) or the continuation alone.")
@click.option("--loss", type=click.Choice(["prefix", "mean"]), default="prefix", show_default=True,
              help="prefix: squared error of every prefix's value against the reward; mean: squared error of the "
                   "mean over prefixes (the paper's Eq. 6, which constrains single prefixes only weakly).")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL cache of samples and rewards; rerunning resumes from it [default: OUT with suffix "
                   ".samples.jsonl].")
@click.option("--batch-size", "sample_batch_size", type=click.IntRange(min=1),
              default=default(DistillConfig, "sample_batch_size"), show_default=True,
              help="Continuations decoded together while sampling, in fixed batches (here or on Ray: same size, "
                   "same samples).")
@click.option("-s", "--seed", type=int, default=0, show_default=True,
              help="Seed for sampling (one derived seed per prompt and sample), the split and training.")
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of the prompts (with all their samples) held out for the reported fit.")
@click.option("--holdout-among", type=click.IntRange(min=2), default=None,
              help="Draw the held-out prompts from the first N prompts of the file only [default: all], so prompts "
                   "appended to it later only add training data and fits before and after hold out the same ones.")
@click.option("--epochs", type=click.IntRange(min=1), default=default(DistillConfig, "epochs"), show_default=True,
              help="Passes over the training samples (a distillation set is small: more passes than vm train).")
@click.option("--llama-threads", type=click.IntRange(min=1), default=None,
              help="llama.cpp threads while sampling [default: all cores; with --ray, per actor, default 1].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Draw the samples on Ray actors, each holding its own engine: bare --ray starts Ray on this "
                   "machine, an ADDRESS ('auto', 'ray://HEAD:10001') joins a cluster. Needs sia-edge[ray] "
                   "(docs/ray.md).")
@click.option("--ray-actors", type=click.IntRange(min=1), default=2, show_default=True,
              help="Ray actors with --ray; each loads the base model once and samples one batch at a time.")
@_fit_options
def distill_command(model: Path | None, input_kind: str, as_json: bool, **options) -> None:
    """Distil a sequence-level reward into a value model on the base model's own continuations.

    Samples continuations of each prompt with the runtime's own loop (unsteered, top-k and temperature as
    steering uses them), scores each finished text once with the reward, and trains a value model whose every
    prefix regresses onto its sample's standardised reward (mean and sd stored in the model, so a higher score
    still means more aligned). Samples and rewards go to a resumable JSONL cache; same seed, same model.
    """
    from ..models import resolve_base_model
    from .distill import distill_value_model
    from .trainer import require_training_extra

    if (options["prompts"] is None) == (options["texts"] is None):
        raise click.UsageError("give --prompts (continued by the base model) or --texts (used as they are)")
    _hidden_only(options, input_kind)
    require_training_extra()
    config = DistillConfig(model=resolve_base_model(model), input=input_kind, **options)
    report = distill_value_model(config)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    _echo_report(report, [
        f"objective: {report.objective}; reward {report.reward}: mean {report.reward_mean:.4g}, sd "
        f"{report.reward_sd:.4g} (stored; the score predicts the standardised reward)",
        f"{report.samples} samples ({report.sampled_now} drawn now, {report.skipped_empty} empty skipped), "
        f"{report.n_train} train / {report.n_holdout} held out ({report.n_holdout_prompts} prompts); cache "
        f"{report.cache}"], "continuation", report.holdout_metrics, ["r2", "correlation"])
    within = report.within_prompt_correlation
    click.echo("within-prompt correlation (full texts): "
               + ("n/a (one sample per prompt)" if math.isnan(within) else f"{within:.3f}"))
    _echo_junctions(report.junction_agreement)


def _hidden_only(options: dict, input_kind: str) -> None:
    """Refuse the options that only a hidden-state value model reads, for another kind."""
    if options["layer"] is not None and (input_kind != "hidden" or options["scoring"] != "look-ahead"
                                         or options["pooling"] != "none" or options["look_ahead"]):
        raise click.UsageError("--layer applies to --input hidden --scoring look-ahead (without --pooling or "
                               "--look-ahead) only")
    if options["teacher_weight"] != _DEFAULTS["teacher_weight"] and (input_kind != "hidden"
                                                                     or options["scoring"] != "candidate"):
        raise click.UsageError("--teacher-weight applies to --input hidden --scoring candidate only")
    if options["memory_decay"] != _DEFAULTS["memory_decay"] and options["pooling"] != "mean+tokens":
        raise click.UsageError("--memory-decay applies to --input hidden --pooling mean+tokens only")
    if input_kind == "hidden":
        if options["pooling"] == "mean+tokens" and (options["look_ahead"] or options["scoring"] != "candidate"):
            raise click.UsageError("--pooling mean+tokens works with --scoring candidate and without --look-ahead")
        return
    if options["look_ahead"]:
        raise click.UsageError("--look-ahead applies to --input hidden only")
    if options["pooling"] != "none":
        raise click.UsageError("--pooling applies to --input hidden only")
    if options["scoring"] != "candidate":
        raise click.UsageError("--scoring applies to --input hidden only")
    if options["value_width"]:
        raise click.UsageError("--value-width applies to --input hidden only")


def describe_junctions(junctions: dict) -> str:
    """hidden_fit.junction_agreement's figures in words (the training report and `vm info`)."""
    return (f"{junctions['junctions']}: the head orders {junctions['pairs_agree']:.3f} of candidate pairs as their "
            f"look-ahead states do (Spearman {junctions['spearman']:.3f})")


def _echo_junctions(junctions: dict | None) -> None:
    if junctions:
        click.echo(f"held-out junctions {describe_junctions(junctions)}")


@vm.command("info")
@click.argument("value_model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info_command(value_model: Path, as_json: bool) -> None:
    """Show a value model's metadata: objective, tokenizer fingerprint, base model, training metrics."""
    from ..value_model import open_value_model

    loaded = open_value_model(value_model)
    size = {"hidden_size": loaded.hidden_size} if loaded.reads_hidden else {"state_size": loaded.state_size}
    facts = {"file": str(value_model), "bytes": value_model.stat().st_size, **size, **loaded.metadata}
    if as_json:
        if "training" in facts:
            facts["training"] = json.loads(facts["training"])
        click.echo(json.dumps(facts, indent=2))
        return
    training = json.loads(facts.pop("training", "{}"))
    for key, value in facts.items():
        click.echo(f"{key:22} {value}")
    for row in training.get("holdout_metrics", []):
        shown = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "fraction")
        click.echo(f"{'held out at ' + format(row['fraction'], '.0%'):22} {shown}")
    after = training.get("after_context")
    if after:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in after.items() if k != "context_tokens")
        unit = "bytes" if facts.get("input") == "bytes" else "tokens"
        click.echo(f"{'held out, after context':22} {shown} ({after['context_tokens']} {unit} of other texts first)")
    if training.get("holdout_junctions"):
        click.echo(f"{'held-out junctions':22} {describe_junctions(training['holdout_junctions'])}")



@vm.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_command(as_json: bool) -> None:
    """List the value models `--value-model NAME` can pick (shipped) and those in the cache's value-models/ folder:
    objective, what it reads, size and which base models it serves."""
    from ..models import list_value_models

    rows = list_value_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':12} {'input':7} {'size':>8}  {'serves':30} file")
    for row in rows:
        click.echo(f"{row['name']:12} {row['input'] or '?':7} {row['bytes'] / 1e6:6.1f} MB  {row['serves'] or '?':30} "
                   f"{Path(row['file']).name}")


@vm.command("score")
@click.argument("texts", nargs=-1)
@click.option("-f", "--file", "text_file", type=click.File("r", encoding="utf-8"), default=None,
              help="Read texts from this file, one per line ('-' for stdin). Also used when no TEXTS are given "
                   "and stdin is not a terminal.")
@click.option("--value-model", default=None,
              help="An objective (sentiment, clean) or an ONNX file of any kind (tokens, bytes, hidden) "
                   "[default: $SIA_EDGE_VALUE_MODEL, else the one `generate` would pick for the model].")
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="GGUF base model whose tokens (or hidden states) the value model reads [default: "
                   "$SIA_EDGE_MODEL, else the built-in Gemma 3 270M base].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text (JSON lines).")
def score_command(texts: tuple[str, ...], text_file, value_model: str | None, model: Path | None,
                  as_json: bool) -> None:
    """Print the value of each text under a value model: the score a junction would give its last token, so a
    minimal pair ("the food was good" / "the food was not good") shows whether the model reads it.

    The score is a logit (higher = more aligned); the probability is its sigmoid. Texts come from the arguments,
    --file, or stdin.
    """
    import sys

    from ..engine import Engine
    from ..decoder import value_model_tokens
    from ..errors import PromptError

    lines = list(texts)
    if text_file is not None:
        lines += [line.rstrip("\n") for line in text_file]
    elif not lines and not sys.stdin.isatty():
        lines = [line.rstrip("\n") for line in sys.stdin]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise PromptError("no text to score: give texts as arguments, with --file, or on stdin")
    engine = Engine(model=model, value_model=value_model, parallel=1)
    try:
        scorer = engine.value_model_for(value_model) or engine.value_model
        if scorer is None:
            raise click.UsageError(f"no value model serves {engine.base.name}: {engine.value_model_reason}")
        sequences = [value_model_tokens(engine.tokenize(text), (), engine.base.bos_id) for text in lines]
        scores = scorer.score_sequences(sequences)
    finally:
        engine.close()
    for text, score in zip(lines, scores):
        probability = 1.0 / (1.0 + math.exp(-float(score)))
        if as_json:
            click.echo(json.dumps({"text": text, "score": float(score), "probability": probability,
                                   "value_model": scorer.path.name}))
        else:
            click.echo(f"{float(score):+8.3f}  {probability:5.3f}  {text}")
