"""SyncService servicer: translates between protobuf and domain calls, nothing else.

RPCs not implemented yet answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

from audiences.v1 import sync_pb2_grpc


class SyncServiceServicer(sync_pb2_grpc.SyncServiceServicer):
    """The sync RPCs."""
