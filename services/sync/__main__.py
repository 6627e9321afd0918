"""Run the sync service: `python -m services.sync` (port from GRPC_PORT)."""

from services.shared.server import main
from services.sync.app import SPEC

main(SPEC)
