"""Fixtures of the segmentation integration tests."""

from tests.integration.segmentation.apisupport import api

__all__ = ["api"]
