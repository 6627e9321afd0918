"""Demo data: the simulated shop is deterministic, valid and carries planted signal;
the public datasets' files become events shifted into the accepted time range."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from audiences.v1 import ingest_pb2

from audiences_cli.demo import (
    DAY_US,
    DatasetError,
    cdnow_events,
    movielens_events,
    packaged_file,
    simulate_shop,
)

pytestmark = pytest.mark.unit

NOW = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
Y2K = 946_684_800_000_000


def test_the_simulated_shop_is_deterministic_and_inside_its_window() -> None:
    events = simulate_shop(120, 60, seed=3, now_us=NOW)
    assert [e.SerializeToString() for e in events] == [
        e.SerializeToString() for e in simulate_shop(120, 60, seed=3, now_us=NOW)
    ]
    stamps = [e.timestamp.ToMicroseconds() for e in events]
    assert NOW - 60 * DAY_US <= min(stamps) and max(stamps) <= NOW
    assert len({e.message_id for e in events}) == len(events)
    names = Counter(e.event for e in events if e.type == ingest_pb2.EVENT_TYPE_TRACK)
    assert {"Product Viewed", "Product Added", "Order Completed"} <= set(names)


def test_people_browse_anonymously_then_sign_up_and_only_buyers_who_signed_up_order() -> None:
    events = simulate_shop(80, 60, seed=5, now_us=NOW)
    identifies = [e for e in events if e.type == ingest_pb2.EVENT_TYPE_IDENTIFY]
    assert identifies and all(e.user_id and e.anonymous_id for e in identifies)
    assert all(json.loads(e.traits)["plan"] in ("pro", "free") for e in identifies)
    assert all(e.user_id for e in events if e.event == "Order Completed")
    assert any(not e.user_id for e in events if e.type == ingest_pb2.EVENT_TYPE_PAGE)


def test_pro_users_buy_more_often_per_session_planted_for_predictions() -> None:
    events = simulate_shop(600, 90, seed=1, now_us=NOW)
    plan = {
        e.user_id: json.loads(e.traits)["plan"]
        for e in events
        if e.type == ingest_pb2.EVENT_TYPE_IDENTIFY
    }
    sessions: Counter[str] = Counter()
    orders: Counter[str] = Counter()
    for e in events:
        if e.user_id in plan and e.type == ingest_pb2.EVENT_TYPE_PAGE:
            sessions[plan[e.user_id]] += 1
        if e.event == "Order Completed":
            orders[plan[e.user_id]] += 1
    assert orders["pro"] / sessions["pro"] > 1.5 * orders["free"] / sessions["free"]


def test_cdnow_rows_become_orders_ending_yesterday(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text("00001 19970101 1 11.77\n00002 19970112 2 89.00\n00001 19980630 1 20.50\n")
    events = cdnow_events(path, NOW)
    assert [e.user_id for e in events] == ["cdnow-00001", "cdnow-00002", "cdnow-00001"]
    assert json.loads(events[1].properties) == {"quantity": 2, "revenue": 89.0}
    stamps = [e.timestamp.ToMicroseconds() for e in events]
    assert max(stamps) == NOW - DAY_US and min(stamps) > Y2K
    assert stamps[1] - stamps[0] == 11 * DAY_US  # gaps kept exactly
    assert len(cdnow_events(path, NOW, limit=2)) == 2


def test_movielens_users_and_ratings_become_identifies_and_events(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
    )
    (tmp_path / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "196\t49\tM\twriter\t55105\n186\t39\tF\texecutive\t00000\n999\t20\tF\tnone\t1\n"
    )
    events = movielens_events(tmp_path, NOW)
    identifies = [e for e in events if e.type == ingest_pb2.EVENT_TYPE_IDENTIFY]
    assert [e.user_id for e in identifies] == ["ml-196", "ml-186"]  # 999 rated nothing
    assert json.loads(identifies[0].traits) == {
        "age": 49,
        "gender": "M",
        "occupation": "writer",
        "zip_code": "55105",
    }
    ratings = [e for e in events if e.event == "Movie Rated"]
    assert json.loads(ratings[0].properties) == {"item_id": "242", "rating": 3.0}
    assert max(e.timestamp.ToMicroseconds() for e in ratings) == NOW - DAY_US


def test_a_missing_dataset_package_says_how_to_get_it() -> None:
    with pytest.raises(DatasetError, match="not installed"):
        packaged_file("no-such-dataset-package", "data.txt")
