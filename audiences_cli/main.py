"""The `audiences` console script: the application with every command registered."""

from __future__ import annotations

import sys

from audiences_cli import demo as demo_data
from audiences_cli.app import Failure, State, app
from audiences_cli.commands import (  # noqa: F401 (importing registers the commands)
    audiences,
    objects,
    operator,
    predictions,
    profiles,
    sending,
    syncs,
)
from audiences_cli.connection import ConfigError
from audiences_cli.render import err

__all__ = ["app", "main"]


def main() -> None:
    """The console script: run a command; a described failure exits 1."""
    try:
        app()
    except Failure:
        sys.exit(1)
    except ConfigError as error:
        err.print(f"error: {error}", markup=False)
        sys.exit(2)
    except demo_data.DatasetError as error:
        err.print(f"error: {error}", markup=False)
        sys.exit(1)
    except FileNotFoundError as error:
        err.print(f"error: {error}", markup=False)
        sys.exit(1)
    finally:
        if State._connection is not None:
            State._connection.close()
