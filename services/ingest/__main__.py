"""Run the ingest service: `python -m services.ingest` (port from GRPC_PORT), or one of
its operator commands: `python -m services.ingest rebuild-hot-state --workspace WS`."""

import sys

from services.ingest import commands
from services.ingest.app import SPEC, tune_gc
from services.shared.server import main

if len(sys.argv) > 1:
    sys.exit(commands.main(sys.argv[1:]))
tune_gc()
main(SPEC)
