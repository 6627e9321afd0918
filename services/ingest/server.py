"""IngestService servicer: translates between protobuf and domain calls, nothing else.

RPCs not implemented yet answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

from audiences.v1 import ingest_pb2_grpc


class IngestServiceServicer(ingest_pb2_grpc.IngestServiceServicer):
    """The ingest RPCs."""
