"""Run the prediction service: `python -m services.prediction` (port from GRPC_PORT)."""

from services.prediction.app import SPEC
from services.shared.server import main

main(SPEC)
