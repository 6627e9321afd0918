"""The `audiences` command line: a gRPC client of the five services like any other.

It imports the generated stubs (gen/) and shared settings, never a service's
internals; the operator commands (migrate, create-workspace) reach the database
through services.shared, as `python -m services.shared.cli` does.
"""

from audiences_cli.main import app, main

__all__ = ["app", "main"]
