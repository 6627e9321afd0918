"""Run the realtime worker: `python -m services.segmentation.realtime` (settings:
services/segmentation/realtime/settings.py; health port from GRPC_PORT)."""

from services.segmentation.realtime.app import main

main()
