"""Request-time audiences in the profile process: the context audiences a request
qualifies for, and the holdout flags, appended to GetProfile's encoded answer.

Segmentation publishes the workspace's context audience definitions (in dependency
order) and holdout shares to the hot state under a content version
(services.shared.hotstate.audience_config_key). GetProfile's one read script returns
that version with the profile; this cache compiles the definitions once per version
(services.shared.request_context) and reads the config again only when the version it
holds differs. So a request costs the one Redis round trip it always did, plus
evaluating closures; a change is seen by the next request after it is published.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.shared.holdout import in_holdout
from services.shared.request_context import CompiledAudiences, compile_workspace

# (version, config JSON) of a workspace, or None when nothing was published.
ConfigReader = Callable[[str], Awaitable[tuple[str, bytes] | None]]

_EMPTY = compile_workspace("", ())


@dataclass(frozen=True)
class RequestAudiences:
    """A workspace's compiled request-time settings for one published version."""

    compiled: CompiledAudiences = _EMPTY
    holdouts: Mapping[str, float] = field(default_factory=dict)
    measured: frozenset[str] = frozenset()  # audiences with a goal (log_exposure)


def _load(version: str, config: bytes) -> RequestAudiences:
    parsed: dict[str, Any] = orjson.loads(config)
    ordered = [(k, d) for k, d in parsed.get("context", [])]
    holdouts = {k: float(v) for k, v in parsed.get("holdouts", {}).items()}
    measured = frozenset(parsed.get("measured", ()))
    return RequestAudiences(compile_workspace(version, ordered), holdouts, measured)


class RequestAudienceCache:
    """Compiled context audiences per workspace, replaced when the version changes."""

    def __init__(self, read_config: ConfigReader) -> None:
        self._read = read_config
        self._by_workspace: dict[str, RequestAudiences] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, workspace_id: str, version: str | None) -> RequestAudiences:
        """The compiled settings for `version` (the one the read script saw)."""
        if version is None:
            return RequestAudiences()
        held = self._by_workspace.get(workspace_id)
        if held is not None and held.compiled.version == version:
            return held
        # One reload per workspace at a time: a burst of requests after a change
        # waits for one read instead of each reading and compiling.
        async with self._locks.setdefault(workspace_id, asyncio.Lock()):
            held = self._by_workspace.get(workspace_id)
            if held is not None and held.compiled.version == version:
                return held
            found = await self._read(workspace_id)
            loaded = RequestAudiences() if found is None else _load(*found)
            self._by_workspace[workspace_id] = loaded
            return loaded


def context_audiences(
    settings: RequestAudiences, context: Mapping[str, Any], profile_id: str, stored: Sequence[str]
) -> list[tuple[str, bool]]:
    """(key, holdout) of each context audience the request qualifies for."""
    holdouts = settings.holdouts
    return [
        (key, key in holdouts and in_holdout(key, profile_id, holdouts[key]))
        for key in settings.compiled.evaluate(context, stored)
    ]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Profile.context_audiences is field 16, length-delimited: tag (16 << 3) | 2 = 130.
_CONTEXT_AUDIENCES_TAG = _varint(130)


@functools.lru_cache(maxsize=65_536)
def _entry(key: str, holdout: bool) -> bytes:
    # Few distinct (key, holdout) pairs exist per workspace: each is encoded once.
    raw = key.encode()
    body = b"\x0a" + _varint(len(raw)) + raw + (b"\x10\x01" if holdout else b"")
    return _CONTEXT_AUDIENCES_TAG + _varint(len(body)) + body


def encode_context_audiences(found: Sequence[tuple[str, bool]]) -> bytes:
    """Profile.context_audiences as wire bytes, to append to an encoded Profile
    (protobuf concatenation appends repeated fields)."""
    return b"".join([_entry(key, holdout) for key, holdout in found])
