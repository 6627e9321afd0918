"""How identifier values are compared, shared by every service that stores or looks
one up, so an identifier written by ingest is found by profile and segmentation.

Emails are case-insensitive in practice (senders and forms vary the case), so they are
trimmed and lowercased everywhere; every other identifier type is matched exactly.
"""

from __future__ import annotations


def normalize_identifier(id_type: str, id_value: str) -> str:
    """The canonical form of an identifier's value for storage and lookup."""
    if id_type == "email":
        return id_value.strip().lower()
    return id_value
