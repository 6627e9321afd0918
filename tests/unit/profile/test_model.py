"""Validation of what callers ask the profile service for."""

from __future__ import annotations

import pytest

from services.profile import model
from services.profile.model import Section
from services.profile.service import decode_page_token, encode_page_token
from services.shared import auth
from services.shared.errors import InvalidArgument

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "id_type", ["user_id", "anonymous_id", "email", "device_id", "crm_id", "x", "a" * 64, "id_2"]
)
def test_known_and_custom_identifier_types_are_accepted(id_type: str) -> None:
    assert model.parse_identifier(id_type, "v") == model.Identifier(id_type, "v")


@pytest.mark.parametrize(
    ("id_type", "id_value", "fields"),
    [
        ("", "v", ["identifier.type"]),
        ("Email", "v", ["identifier.type"]),
        ("a-b", "v", ["identifier.type"]),
        ("a:b", "v", ["identifier.type"]),
        ("a" * 65, "v", ["identifier.type"]),
        ("email", "", ["identifier.value"]),
        ("email", "x" * 256, ["identifier.value"]),
        ("BAD", "", ["identifier.type", "identifier.value"]),
    ],
)
def test_malformed_identifiers_name_every_bad_part(
    id_type: str, id_value: str, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as error:
        model.parse_identifier(id_type, id_value)
    assert [v.field for v in error.value.violations] == fields


def test_values_may_hold_any_character_up_to_255() -> None:
    value = 'ä:/ {}"' + "x" * 248
    assert len(value) == 255
    assert model.parse_identifier("email", value).value == value


def test_no_sections_means_all_and_mask_keys_are_deduplicated() -> None:
    query = model.parse_query([], ["b", "a", "b"], "trait_mask")
    assert query.sections == frozenset(Section)
    assert query.trait_keys == ("b", "a")
    assert model.parse_query([Section.TRAITS], [], "m").sections == {Section.TRAITS}


@pytest.mark.parametrize(("asked", "used"), [(0, 50), (1, 1), (1000, 1000)])
def test_page_sizes(asked: int, used: int) -> None:
    assert model.page_size(asked) == used


@pytest.mark.parametrize("asked", [-1, 1001])
def test_page_sizes_out_of_range(asked: int) -> None:
    with pytest.raises(InvalidArgument):
        model.page_size(asked)


def test_page_tokens_round_trip_and_reject_forgeries() -> None:
    event = model.TimelineEvent(42, "m", "track", "n", 1_735_000_000_123_456, None, None, None)
    assert decode_page_token(encode_page_token(event)) == (1_735_000_000_123_456, 42)
    assert decode_page_token("") is None
    for forged in ["%%", "bm90LWEtdG9rZW4=", "MTo=", "w4k="]:
        with pytest.raises(InvalidArgument) as error:
            decode_page_token(forged)
        assert [v.field for v in error.value.violations] == ["page_token"]


@pytest.mark.parametrize(
    ("header", "secret"),
    [
        ("Bearer aud_abc", "aud_abc"),
        ("bearer  aud_abc ", "aud_abc"),
        ("Basic YXVkX2FiYzo=", "aud_abc"),  # "aud_abc:"
        ("Basic YXVkX2FiYzppZ25vcmVk", "aud_abc"),  # "aud_abc:ignored"
        ("Basic Og==", None),  # ":"
        ("Basic !!!", None),
        ("Bearer ", None),
        ("Digest x", None),
        (None, None),
    ],
)
def test_http_authorization_headers(header: str | None, secret: str | None) -> None:
    assert auth.http_secret(header) == secret
