"""Holdout groups: which members of an audience are held out (the control group).

A member is held out when the hash of (audience key, profile id) falls below the
audience's holdout share: deterministic, so every process, restart and service (the
profile service's Lua read script, the sync, the performance report) agrees without
storing anything, and independent per audience. SHA-1 because Redis scripts have it
(``redis.sha1hex``): the profile service's read script computes the same bucket as
``bucket`` here. The first 32 bits of the digest give the bucket in [0, 1).
"""

from __future__ import annotations

import functools
import hashlib

__all__ = ["MAX_HOLDOUT_SHARE", "bucket", "in_holdout"]

# Holding out more than half would make the audience's treatment the control.
MAX_HOLDOUT_SHARE = 0.5


# The same visitors come back request after request: their buckets are remembered.
@functools.lru_cache(maxsize=262_144)
def bucket(audience_key: str, profile_id: int | str) -> float:
    """The profile's position in [0, 1) for this audience (uniform over profiles)."""
    digest = hashlib.sha1(f"{audience_key}:{profile_id}".encode(), usedforsecurity=False)
    return int(digest.hexdigest()[:8], 16) / 4294967296


def in_holdout(audience_key: str, profile_id: int | str, share: float) -> bool:
    """Whether the profile is in the audience's holdout group at this share."""
    return share > 0 and bucket(audience_key, profile_id) < share
