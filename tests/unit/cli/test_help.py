"""Every command explains itself: `--help` works everywhere and shows examples."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from audiences_cli.main import app

pytestmark = pytest.mark.unit


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command's words, e.g. ('sync', 'run')."""
    paths: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_has_help_with_examples() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    paths = command_paths(root)
    assert {("apply",), ("sync", "run"), ("demo", "load"), ("send",), ("metrics",)} <= set(paths)
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Examples:" in result.output and "$ audiences" in result.output, path


def test_a_bad_identifier_is_a_usage_error_before_any_call() -> None:
    result = CliRunner().invoke(app, ["profile", "ada@example.com"])
    assert result.exit_code == 2
    assert "expected ID_TYPE:VALUE" in result.output
