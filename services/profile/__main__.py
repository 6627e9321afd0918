"""Run the profile service: `python -m services.profile` (port from GRPC_PORT)."""

from services.profile.app import SPEC
from services.shared.server import main

main(SPEC)
