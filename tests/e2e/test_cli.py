"""The `audiences` console script against the services started as processes on real
Postgres and Redis: declarative apply (a plan first, unchanged objects untouched,
--dry-run changes nothing), get/list/delete in every output format, events sent in
batches with rejections reported per line, members, preview of an edit, export in
the three formats, and server field violations printed with a non-zero exit."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
import yaml

from services.shared.cli import create_workspace
from services.shared.config import Settings
from tests.helpers import backends
from tests.helpers.cli import Cli, events_file
from tests.helpers.servers import as_processes

pytestmark = pytest.mark.e2e

BUYERS = """
kind: audience
key: buyers
name: Buyers
definition:
  event: {name: Order Completed, count: {op: gte, value: COUNT}}
---
kind: computed_trait
key: spend
definition: {type: sum, event: Order Completed, property: revenue}
"""


@pytest.fixture(scope="module")
async def addresses(template_database: str) -> AsyncIterator[dict[str, str]]:
    """The services as processes, once for this module's tests (each test has its own
    workspace, so they share nothing but the processes)."""
    database_url = await backends.create_database(template=template_database)
    redis_url = backends.test_redis_url()
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.flushdb(asynchronous=True)
    try:
        names = ["ingest", "segmentation", "profile", "sync"]
        async with as_processes(database_url, redis_url, names) as found:
            yield {"database_url": database_url, "redis_url": redis_url, **found}
    finally:
        await client.flushdb(asynchronous=True)
        await client.aclose()
        await backends.drop_database(database_url)


@pytest.fixture
async def cli(addresses: dict[str, str], tmp_path: Path) -> Cli:
    """The console script with a new workspace's keys, run in a fresh folder."""
    settings = Settings(database_url=addresses["database_url"], redis_url=addresses["redis_url"])
    keys = await create_workspace(settings, "t")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCES_")}
    env |= {
        "AUDIENCES_ADMIN_KEY": keys["admin_key"],
        "AUDIENCES_INGEST_KEY": keys["ingest_key"],
        "AUDIENCES_PROFILE_KEY": keys["profile_key"],
    }
    for name in ("ingest", "segmentation", "profile", "sync"):
        env[f"{name.upper()}_ADDR"] = addresses[name]
    return Cli(env, tmp_path)


async def test_apply_plans_first_leaves_unchanged_objects_alone_and_reports_errors(
    cli: Cli,
) -> None:
    folder = cli.cwd / "defs"
    folder.mkdir()
    (folder / "buyers.yaml").write_text(BUYERS.replace("COUNT", "1"))

    planned = await cli.ok("apply", "-f", str(folder), "--dry-run")
    assert "+ audience buyers (create)" in planned and "plan: 2 to create" in planned
    assert json.loads(await cli.ok("list", "audiences", "-o", "json")) == []  # nothing made

    await cli.ok("apply", "-f", str(folder))
    again = await cli.ok("apply", "-f", str(folder))
    assert "= audience buyers (unchanged)" in again and "plan: 2 unchanged" in again
    (listed,) = json.loads(await cli.ok("list", "audiences", "-o", "json"))
    assert (listed["key"], listed["version"], listed["state"]) == ("buyers", 1, "live")

    (folder / "buyers.yaml").write_text(BUYERS.replace("COUNT", "2"))
    edited = await cli.ok("apply", "-f", str(folder))
    assert "~ audience buyers (update)" in edited
    assert "-      value: 1" in edited and "+      value: 2" in edited
    shown = yaml.safe_load(await cli.ok("get", "audience", "buyers"))
    assert shown["definition"]["event"]["count"]["value"] == 2
    assert shown["status"]["version"] == 2
    # What `get` prints applies back as unchanged.
    (folder / "buyers.yaml").write_text(yaml.safe_dump(shown))
    assert "= audience buyers (unchanged)" in await cli.ok("apply", "-f", str(folder))

    await cli.ok("delete", "computed-trait", "spend")
    traits = json.loads(await cli.ok("list", "computed-traits", "-o", "json"))
    assert traits == []
    missing = await cli("get", "computed-trait", "spend")
    assert missing.code == 1 and "no computed_trait 'spend'" in missing.err

    # Server field violations are printed one per line, and the command exits 1.
    bad = cli.cwd / "bad.yaml"
    bad.write_text(BUYERS.replace("gte", "about").replace("key: buyers", "key: other"))
    result = await cli("apply", "-f", str(bad))
    assert result.code == 1
    assert "INVALID_ARGUMENT" in result.err
    assert "- audience.definition.event.count.op: unknown operator 'about'" in result.err
    assert [a["key"] for a in json.loads(await cli.ok("list", "audiences", "-o", "json"))] == [
        "buyers"
    ]

    typo = cli.cwd / "typo.yaml"
    typo.write_text("kind: audience\nkey: x\ndefinitoin: {}\n")
    result = await cli("apply", "-f", str(typo))
    assert result.code == 1 and "unknown field(s) definitoin" in result.err

    closed = await cli("--addr", "segmentation=127.0.0.1:1", "list", "audiences")
    assert (
        closed.code == 1 and "UNAVAILABLE" in closed.err and "is the service running" in closed.err
    )


async def test_send_members_preview_export_and_profile(cli: Cli) -> None:
    events = events_file(
        cli.cwd / "events.jsonl",
        [
            {"type": "identify", "userId": "ada", "traits": {"email": "ada@example.com"}},
            {
                "type": "track",
                "userId": "ada",
                "event": "Order Completed",
                "properties": {"revenue": 30},
            },
            {
                "type": "track",
                "userId": "bo",
                "event": "Order Completed",
                "properties": {"revenue": 5},
            },
            {"type": "track", "event": "Order Completed"},  # no id: rejected by ingest
        ],
    )
    sent = await cli("send", str(events))
    assert sent.code == 1  # one event was refused: the command says so
    assert "accepted=3 duplicates=0 rejected=1" in sent.out
    assert "event 4 (" in sent.err and "user_id" in sent.err
    again = await cli("send", str(events))  # content-derived message ids: stored once
    assert "accepted=0 duplicates=3 rejected=1" in again.out

    (cli.cwd / "buyers.yaml").write_text(BUYERS.replace("COUNT", "1"))
    await cli.ok("apply", "-f", "buyers.yaml")
    members = json.loads(await cli.ok("members", "buyers", "-o", "json"))
    assert sorted(m["identifiers"] for m in members) == [
        "email:ada@example.com user_id:ada",
        "user_id:bo",
    ]

    stricter = cli.cwd / "stricter.yaml"
    stricter.write_text(
        "kind: audience\nkey: buyers\ndefinition:\n  event:\n    name: Order Completed\n"
        "    where: [{property: revenue, op: gte, value: 10}]\n"
    )
    preview = yaml.safe_load(await cli.ok("preview", "-f", str(stricter), "-o", "yaml"))
    assert (preview["size"], preview["would_enter"], preview["would_exit"]) == (1, 0, 1)
    assert preview["exit_sample"][0]["identifiers"] == "user_id:bo"

    await cli.ok("export", "buyers", "--format", "formatted", "--out", "formatted.csv")
    rows = list(csv.DictReader(io.StringIO((cli.cwd / "formatted.csv").read_text())))
    assert sorted(r["user_id"] for r in rows) == ["ada", "bo"]
    await cli.ok(
        "export",
        "buyers",
        "--format",
        "single",
        "--id-type",
        "user_id",
        "--raw",
        "--out",
        "one.csv",
    )
    assert sorted((cli.cwd / "one.csv").read_text().split()[1:]) == ["ada", "bo"]
    unformatted = await cli.ok("export", "buyers", "--format", "unformatted")
    assert unformatted.count("\n") == 3  # a header and two members, on stdout

    profile = json.loads(await cli.ok("profile", "email:ada@example.com", "-o", "json"))
    assert profile["audiences"].keys() == {"buyers"}
    assert profile["computed_traits"] == {"spend": 30}
    timeline = json.loads(await cli.ok("events", "user_id:ada", "-o", "json"))
    assert [e["name"] or e["type"] for e in timeline] == ["Order Completed", "identify"]
    explained = await cli.ok("explain", "buyers", "user_id:bo")
    assert "member of buyers" in explained
