"""The `sia-edge` command line. Text and JSON go to stdout; progress, stats and errors go to stderr."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback

import click

from .best_of import best_of_option
from .errors import InvalidSettingError, SiaError
from .gate import GATE_NAMES, SIGNAL_HELP, SIGNALS
from .settings import DEFAULT_TAU, GenerationSettings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# Commands that live in their own modules, imported only when used so that `sia-edge --help` stays instant.
LAZY_COMMANDS = {
    "vm": ("sia_edge.train.cli", "vm"),
    "calibrate": ("sia_edge.calibrate", "calibrate_command"),
    "eval": ("sia_edge.evaluate", "eval_command"),
    "bench": ("sia_edge.bench", "bench_command"),
    "chat": ("sia_edge.chat", "chat"),
    "serve": ("sia_edge.server", "serve"),
}


class FriendlyGroup(click.Group):
    """Loads sub-commands lazily and turns sia-edge's typed errors into one line on stderr and exit code 2
    (the full traceback with SIA_EDGE_DEBUG=1)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str):
        if name in LAZY_COMMANDS and name not in self.commands:
            module_name, attribute = LAZY_COMMANDS[name]
            import importlib

            try:
                command = getattr(importlib.import_module(module_name), attribute)
            except ImportError as exc:  # an optional extra (serve, train, eval) is not installed
                command = _missing_extra_command(name, exc)
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SiaError as exc:
            if os.environ.get("SIA_EDGE_DEBUG"):
                traceback.print_exc()
            click.echo(f"sia-edge: error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)


EXTRA_FOR_COMMAND = {"serve": "serve", "vm": "train", "eval": "eval"}


def _missing_extra_command(name: str, error: ImportError) -> click.Command:
    extra = EXTRA_FOR_COMMAND.get(name, "test")
    message = f"`sia-edge {name}` needs {error.name or 'a missing package'}: pip install 'sia-edge[{extra}]'"

    def fail(**_):
        raise SiaError(message)

    return click.Command(name, callback=fail, help=f"(unavailable: {message})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=FriendlyGroup, context_settings={"auto_envvar_prefix": "SIA_EDGE", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sia-edge")
def main() -> None:
    """Sparse inference-time alignment for small GGUF models, offline on a CPU.

    The base model is steered by a small ONNX value model only at uncertain steps ("junctions").
    Every option can also be set by an environment variable SIA_EDGE_<COMMAND>_<OPTION>, e.g.
    SIA_EDGE_GENERATE_TEMPERATURE=0.7; the models also by SIA_EDGE_MODEL and SIA_EDGE_VALUE_MODEL.
    """


def model_options(func):
    """--model, --value-model, --ctx and --threads, shared by every command that loads models."""
    options = [
        click.option("-m", "--model", "model", type=click.Path(dir_okay=False), default=None,
                     help="GGUF base model [default: $SIA_EDGE_MODEL, else the built-in Gemma 3 270M base]."),
        click.option("--value-model", type=click.Path(dir_okay=False), default=None,
                     help="ONNX value model [default: $SIA_EDGE_VALUE_MODEL, else the one shipped for the base model]."),
        click.option("--ctx", "n_ctx", type=click.IntRange(min=16), default=2048, show_default=True,
                     help="Context window in tokens (prompt + generated)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="llama.cpp threads [default: all cores]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def generation_options(func):
    """The steering and sampling options, shared by generate, chat and eval."""
    options = [
        click.option("--gate", type=click.Choice(GATE_NAMES), default="entropy", show_default=True,
                     help="When to steer: entropy (H >= tau), dense (always), none (never), random (prob. q), "
                          "first-n (first N tokens), online (hold --ratio on every prompt)."),
        click.option("--tau", type=float, default=None,
                     help=f"Entropy threshold in nats for the entropy gate [default: {DEFAULT_TAU}]."),
        click.option("--ratio", type=click.FloatRange(0, 1), default=None,
                     help="Target share of steered tokens: the entropy gate takes tau from the model's calibration "
                          "(see `sia-edge calibrate`); the online gate holds it on every prompt."),
        click.option("--calibration", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Calibration file for --ratio [default: the cached one for this model, else the shipped one]."),
        click.option("--q", "q", type=float, default=0.2, show_default=True,
                     help="Steering probability of the random gate, in [0, 1]."),
        click.option("--first-n", type=int, default=32, show_default=True, help="Steered tokens of the first-n gate."),
        click.option("-k", "--top-k", type=int, default=10, show_default=True,
                     help="Candidates per step; sampling is restricted to them."),
        click.option("-w", "--weight", type=float, default=1.0, show_default=True,
                     help="Reward weight w in s = logit + w * value."),
        click.option("-t", "--temperature", type=float, default=1.0, show_default=True,
                     help="Sampling temperature; 0 is greedy."),
        click.option("--entropy-over", type=click.Choice(SIGNALS), default="top-k", show_default=True,
                     help=SIGNAL_HELP),
        click.option("-n", "--max-tokens", type=int, default=128, show_default=True, help="Most tokens to generate."),
        click.option("--stop", multiple=True, help="Stop when this text appears (repeatable); it is not printed."),
        click.option("-s", "--seed", type=int, default=None,
                     help="Random seed [default: a fresh one, always reported on stderr]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(options: dict) -> GenerationSettings:
    options.pop("calibration", None)  # consumed by build_engine
    if options["tau"] is not None and options["ratio"] is not None and options["gate"] == "entropy":
        raise InvalidSettingError("give --tau or --ratio, not both: --ratio takes tau from the calibration")
    tau = options["tau"] if options["tau"] is not None else DEFAULT_TAU
    return GenerationSettings(
        gate=options["gate"], tau=tau, ratio=options["ratio"], q=options["q"], first_n=options["first_n"],
        top_k=options["top_k"], weight=options["weight"], temperature=options["temperature"],
        entropy_over=options["entropy_over"], max_tokens=options["max_tokens"], stop=tuple(options["stop"]),
        seed=options["seed"],
    )


def build_engine(model, value_model, n_ctx, threads, gate: str = "entropy", weight: float = 1.0,
                 calibration=None):
    from .engine import Engine

    needs_value_model = gate != "none" and weight != 0.0
    return Engine(model=model, value_model=value_model, n_ctx=n_ctx, threads=threads,
                  use_value_model=needs_value_model or value_model is not None, calibration=calibration)


def read_prompt(prompt: str) -> str:
    if prompt == "-":
        return sys.stdin.read()
    return prompt


class CtrlC:
    """While active, the first Ctrl-C asks the generation to stop at the next token; the second one kills."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous = None

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self.event

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def summary_line(result) -> str:
    st = result.stats
    return (f"sia-edge: seed {st.seed} | {st.tokens} tokens | {st.junctions} junctions "
            f"({100 * st.junction_ratio:.0f}%) | {st.tokens_per_second:.1f} tok/s | stop: {result.stop_reason}")


@main.command()
@click.argument("prompt")
@generation_options
@model_options
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the text and stats at the end.")
@click.option("--jsonl", is_flag=True, help="Print one JSON object per token, then the result object.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@best_of_option
def generate(prompt, model, value_model, n_ctx, threads, stream, as_json, jsonl, quiet, best_of, **options):
    """Continue PROMPT (or '-' to read it from stdin), steering at junctions."""
    if as_json and jsonl:
        raise click.UsageError("choose one of --json and --jsonl")
    calibration = options.pop("calibration")
    settings = settings_from(options)
    text = read_prompt(prompt)
    needs_value_model = "entropy" if best_of > 1 else settings.gate  # Best-of-N ranks by the value model
    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model, settings.weight or 1.0, calibration)
    out = click.get_text_stream("stdout")
    if best_of > 1:
        from .best_of import run_best_of_cli

        result = run_best_of_cli(engine, text, settings, best_of, as_json or jsonl, out)
        sys.exit(EXIT_INTERRUPTED if result.best_result.stop_reason == "cancelled" else 0)
    with CtrlC() as cancelled:
        run = engine.stream(text, settings, cancel=cancelled)
        for event in run:
            if jsonl:
                out.write(json.dumps(event.as_dict()) + "\n")
                out.flush()
            elif stream and not as_json:
                out.write(event.text)
                out.flush()
    result = run.result
    if jsonl or as_json:
        payload = result.as_dict()
        payload["model"] = str(engine.base.path)
        payload["value_model"] = str(engine.value_model.path) if engine.value_model else None
        payload["value_model_reason"] = engine.value_model_reason
        out.write(json.dumps(payload) + "\n")
    elif stream:
        out.write("\n")
    else:
        out.write(result.text + "\n")
    out.flush()
    if not quiet:
        click.echo(summary_line(result), err=True)
    if result.stop_reason == "cancelled":
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(model, value_model, n_ctx, threads, as_json):
    """Show the base model, its tokenizer fingerprint and the value model that would be used."""
    from .engine import Engine

    engine = Engine(model=model, value_model=value_model, n_ctx=n_ctx, threads=threads)
    facts = {
        "model": str(engine.base.path),
        "n_vocab": engine.base.n_vocab,
        "n_ctx": engine.base.n_ctx,
        "tokenizer_fingerprint": engine.fingerprint,
        "chat_template": engine.base.chat_template is not None,
        "value_model": str(engine.value_model.path) if engine.value_model else None,
        "value_model_description": engine.value_model.description if engine.value_model else None,
        "value_model_input": engine.value_model.input if engine.value_model else None,
        "value_model_reason": engine.value_model_reason,
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            click.echo(f"{key:26} {value}")


if __name__ == "__main__":
    main()
