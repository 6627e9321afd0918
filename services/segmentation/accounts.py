"""Accounts (groups) as members of account-level audiences: plain rules, no SQL.

An account is a ``group_id`` that group events name. Its users are the canonical
profiles that sent a group call with that ``group_id``; its traits are the group calls'
``traits``, each top-level key from the latest call that sets it (design.md section 5).
The store gives each account a stable integer id (``accounts`` table); memberships and
the change log keep an account as ``ACCOUNT_MEMBER_BASE + account_id``, a range no
profile id reaches, so the profile-keyed membership code (merge re-keying, paging,
history) works unchanged and can never mistake an account for a profile.

In an account-level audience the tree is evaluated on the account: ``all``/``any``/
``not`` combine, ``trait`` reads the account's traits and ``account`` quantifies over its
users with a user-level condition inside. Everything about users (events, funnels,
computed traits, predictions, user audiences) goes inside an ``account`` node.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from services.segmentation.definitions import field_path
from services.shared.errors import FieldViolation

__all__ = [
    "ACCOUNT_ID_TYPE",
    "ACCOUNT_MEMBER_BASE",
    "account_id_of",
    "account_violations",
    "member_id",
]

# 2**62: far above any profile id a sequence hands out, and still an int64.
ACCOUNT_MEMBER_BASE = 1 << 62
# The identifier type that names an account in the API (members, explain, history).
ACCOUNT_ID_TYPE = "group_id"
# Node kinds evaluated on the account itself.
_ACCOUNT_SCOPE = frozenset({"all", "any", "not", "trait", "account"})


def member_id(account_id: int) -> int:
    """The id under which an account is a member (memberships, change log)."""
    return ACCOUNT_MEMBER_BASE + account_id


def account_id_of(member: int) -> int | None:
    """The account id of a member id, or None when the member is a profile."""
    return member - ACCOUNT_MEMBER_BASE if member >= ACCOUNT_MEMBER_BASE else None


def account_violations(
    raw: Any, prefix: str, *, account_level: bool, account_audiences: Collection[str]
) -> list[FieldViolation]:
    """Where a (language-valid) definition mixes the account and user levels:
    user conditions at the account level, account nodes in a user-level audience, and
    references from a user condition to an account-level audience (whose members are
    accounts, not users)."""
    found: list[FieldViolation] = []

    def walk(node: Any, path: str, on_account: bool) -> None:
        if not isinstance(node, Mapping) or len(node) != 1:
            return
        kind, body = next(iter(node.items()))
        here = field_path(path, kind) if path else kind
        where = field_path(prefix, here)
        if on_account and kind not in _ACCOUNT_SCOPE:
            found.append(
                FieldViolation(
                    where,
                    f"a {kind} condition is about users: in an account-level audience it "
                    "goes inside an account node",
                )
            )
            return
        if not on_account and kind == "account":
            found.append(FieldViolation(where, "account conditions need an account-level audience"))
            return
        if kind == "audience" and body["key"] in account_audiences:
            found.append(
                FieldViolation(
                    field_path(where, "key"),
                    f"audience {body['key']!r} is account-level: its members are accounts, "
                    "not users",
                )
            )
        if kind in ("all", "any"):
            for i, child in enumerate(body):
                walk(child, f"{here}[{i}]", on_account)
        elif kind == "not":
            walk(body, here, on_account)
        elif kind == "account":
            walk(body["condition"], f"{here}.condition", False)

    walk(raw, "", account_level)
    return found
