"""The `sia-edge` command line. Text and JSON go to stdout; progress, stats and errors go to stderr."""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from .commands.common import (EXIT_INTERRUPTED, EXIT_USAGE, CtrlC, best_of_option, build_engine, generation_options,
                              model_options, read_prompt, run_best_of_cli, settings_from, summary_line)
from .errors import SiaError


# Commands that live in their own modules, imported only when used so that `sia-edge --help` stays instant.
LAZY_COMMANDS = {
    "vm": ("sia_edge.train.cli", "vm"),
    "calibrate": ("sia_edge.commands.calibrate", "calibrate_command"),
    "eval": ("sia_edge.commands.evaluate", "eval_command"),
    "bench": ("sia_edge.commands.bench", "bench_command"),
    "chat": ("sia_edge.commands.chat", "chat"),
    "serve": ("sia_edge.commands.serve", "serve"),
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


@main.command()
@click.argument("prompt")
@generation_options
@model_options
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the text and stats at the end.")
@click.option("--jsonl", is_flag=True, help="Print one JSON object per token, then the result object.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@best_of_option
def generate(prompt, model, value_model, n_ctx, threads, gpu_layers, stream, as_json, jsonl, quiet, best_of,
             **options):
    """Continue PROMPT (or '-' to read it from stdin), steering at junctions."""
    if as_json and jsonl:
        raise click.UsageError("choose one of --json and --jsonl")
    settings = settings_from(options)
    text = read_prompt(prompt)
    # Best-of-N ranks its samples by the value model, whatever the gate
    engine = build_engine(model, value_model, n_ctx, threads, settings.steers or best_of > 1,
                          options["calibration"], gpu_layers)
    out = click.get_text_stream("stdout")
    if best_of > 1:
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
def info(model, value_model, n_ctx, threads, gpu_layers, as_json):
    """Show the base model, its tokenizer and weights fingerprints and the value model that would be used."""
    from .base_model import gpu_offload_supported

    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model=True, gpu_layers=gpu_layers)
    offload = gpu_offload_supported()
    facts = {
        "model": str(engine.base.path),
        "n_vocab": engine.base.n_vocab,
        "n_ctx": engine.base.n_ctx,
        "tokenizer_fingerprint": engine.fingerprint,
        "weights_fingerprint": engine.weights,  # what a hidden-state value model (contract 3) must name
        "hidden_size": engine.base.n_embd,
        "chat_template": engine.base.chat_template is not None,
        "value_model": str(engine.value_model.path) if engine.value_model else None,
        "value_model_description": engine.value_model.description if engine.value_model else None,
        "value_model_input": engine.value_model.input if engine.value_model else None,
        "value_model_reason": engine.value_model_reason,
        # what the gates' default w is multiplied by with this value model (metadata sia_edge.weight_scale)
        "value_model_weight_scale": engine.value_model.weight_scale if engine.value_model else None,
        "gpu_offload_supported": offload,  # a Metal or CUDA build of llama.cpp (README)
        "gpu_layers": gpu_layers if offload else 0,  # what is offloaded: nothing on a CPU-only build
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            click.echo(f"{key:26} {value}")


if __name__ == "__main__":
    main()
