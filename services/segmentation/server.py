"""SegmentationService servicer: translates between protobuf and domain calls, nothing else.

RPCs not implemented yet answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

from audiences.v1 import segmentation_pb2_grpc


class SegmentationServiceServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    """The segmentation RPCs."""
