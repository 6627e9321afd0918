"""Run the segmentation service: `python -m services.segmentation` (port from GRPC_PORT)."""

from services.segmentation.app import SPEC
from services.shared.server import main

main(SPEC)
