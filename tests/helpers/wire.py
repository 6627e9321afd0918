"""Protobuf wire bytes by hand, for requests no generated message would encode."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """`value` (non-negative) as a protobuf base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) numbered `number`."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
