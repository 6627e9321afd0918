"""PredictionService servicer: translates between protobuf and domain calls, nothing else.

RPCs not implemented yet answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

from audiences.v1 import prediction_pb2_grpc


class PredictionServiceServicer(prediction_pb2_grpc.PredictionServiceServicer):
    """The prediction RPCs."""
