"""Segmentation: audiences and computed traits (definitions, batch and realtime
evaluation, membership changes)."""
