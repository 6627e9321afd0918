"""Audiences: five gRPC services (ingest, segmentation, prediction, profile, sync)
and their shared plumbing."""
