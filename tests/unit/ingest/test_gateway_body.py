"""The gateway's body rules as pure functions: inflation stops at the cap, JSON must be
an object."""

from __future__ import annotations

import gzip
import zlib

import pytest

from services.ingest.gateway import MAX_BODY_BYTES, HttpError, inflate, parse_json_object

pytestmark = pytest.mark.unit

GZIP = 16 + zlib.MAX_WBITS


def test_a_body_inflating_to_exactly_the_cap_is_read_and_one_byte_more_is_413() -> None:
    assert len(inflate(gzip.compress(bytes(MAX_BODY_BYTES)), GZIP)) == MAX_BODY_BYTES
    with pytest.raises(HttpError) as refused:
        inflate(gzip.compress(bytes(MAX_BODY_BYTES + 1)), GZIP)
    assert refused.value.status == 413


def test_gzip_members_one_after_another_are_one_body_within_one_cap() -> None:
    assert inflate(gzip.compress(b'{"a":') + gzip.compress(b"1}"), GZIP) == b'{"a":1}'
    half = gzip.compress(bytes(MAX_BODY_BYTES // 2 + 1))
    with pytest.raises(HttpError) as refused:
        inflate(half + half, GZIP)
    assert refused.value.status == 413


def test_deflate_is_the_zlib_format() -> None:
    assert inflate(zlib.compress(b"{}"), zlib.MAX_WBITS) == b"{}"


@pytest.mark.parametrize(
    ("raw", "wbits"),
    [
        (b"{}", GZIP),
        (gzip.compress(b"{}")[:-4], GZIP),
        (gzip.compress(b"{}") + b"\x00", GZIP),
        (gzip.compress(b"{}"), zlib.MAX_WBITS),
        (b"", GZIP),
    ],
    ids=["plain", "truncated", "trailing byte", "gzip labelled deflate", "empty"],
)
def test_a_body_that_is_not_its_encoding_is_400(raw: bytes, wbits: int) -> None:
    with pytest.raises(HttpError) as refused:
        inflate(raw, wbits)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"", "empty"),
        (b"[]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": "\xc3"}', "not valid JSON"),
    ],
)
def test_json_bodies_must_be_objects(text: bytes, says: str) -> None:
    with pytest.raises(HttpError) as refused:
        parse_json_object(text)
    assert refused.value.status == 400
    assert says in refused.value.message
