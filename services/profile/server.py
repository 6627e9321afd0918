"""ProfileService servicer: translates between protobuf and domain calls, nothing else.

RPCs not implemented yet answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

from audiences.v1 import profile_pb2_grpc


class ProfileServiceServicer(profile_pb2_grpc.ProfileServiceServicer):
    """The profile RPCs."""
