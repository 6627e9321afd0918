"""Run the ingest service: `python -m services.ingest` (port from GRPC_PORT)."""

from services.ingest.app import SPEC
from services.shared.server import main

main(SPEC)
