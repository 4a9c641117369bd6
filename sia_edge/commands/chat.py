"""`sia-edge chat`: the terminal shell around ChatSession (sia_edge/chat.py)."""

from __future__ import annotations

import sys

import click

from ..chat import PLAIN_SYSTEM, ChatSession
from ..errors import SiaError
from .common import CtrlC, build_engine, generation_options, model_options, settings_from


@click.command()
@generation_options
@model_options
@click.option("--system", default=None,
              help=f"System text at the top of the conversation [default: none with a chat template, "
                   f"'{PLAIN_SYSTEM}' with the plain format].")
@click.option("--plain", is_flag=True, help="Use the plain User:/Assistant: format even if the model has a chat template.")
def chat(model, value_model, n_ctx, threads, gpu_layers, system, plain, **options):
    """Chat with the model in the terminal; steering on by default. Type /help for the commands.

    Reads one message per line (also from a pipe); Ctrl-C stops a reply, Ctrl-D or /exit leaves.
    """
    settings = settings_from(options)
    # chat loads a value model whenever one exists, so /gate can switch steering on later
    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model=True,
                          calibration=options["calibration"], gpu_layers=gpu_layers)
    session = ChatSession(engine, settings, system=system, plain=plain)
    interactive = sys.stdin.isatty()
    out = click.get_text_stream("stdout")
    if interactive:
        click.echo(f"sia-edge chat with {engine.base.name} ({session.format.name}); /help for commands", err=True)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, like a shell
            out.write("\n")
            continue
        if not line.strip():
            continue
        if line.lstrip().startswith("/"):
            answer = session.command(line)
            if answer.exit:
                break
            out.write(answer.text + "\n")
            out.flush()
            continue
        try:
            with CtrlC() as cancelled:
                for piece in session.send(line, cancel=cancelled):
                    out.write(piece)
                    out.flush()
        except SiaError as exc:
            click.echo(f"sia-edge: error: {exc}", err=True)
            continue
        except KeyboardInterrupt:  # a second Ctrl-C outside the decoding loop
            pass
        out.write("\n")
        out.flush()
        if session.last is not None and session.last.result.stop_reason == "cancelled":
            click.echo("sia-edge: reply stopped", err=True)
    engine.close()
