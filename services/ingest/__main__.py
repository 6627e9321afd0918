"""Run the ingest service: `python -m services.ingest` (port from GRPC_PORT)."""

from services.ingest.app import SPEC, tune_gc
from services.shared.server import main

tune_gc()
main(SPEC)
