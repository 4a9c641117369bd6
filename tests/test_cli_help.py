"""Every command and every option documents itself (click introspection, no model needed)."""

import click
import pytest
from click.testing import CliRunner

from sia_edge.cli import LAZY_COMMANDS, main


def all_commands():
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        if isinstance(command, click.Group):
            if command.params:  # a group that is also a command of its own (bench)
                yield name, command
            for sub in command.list_commands(ctx):
                yield f"{name} {sub}", command.get_command(ctx, sub)
        else:
            yield name, command


COMMANDS = dict(all_commands())


def test_every_lazy_command_is_listed():
    assert set(LAZY_COMMANDS) <= {name.split()[0] for name in COMMANDS}
    assert {"generate", "info"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_text(name):
    command = COMMANDS[name]
    assert command.help, f"`sia-edge {name}` has no help"
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"`sia-edge {name}` options without help: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_runs(name):
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
