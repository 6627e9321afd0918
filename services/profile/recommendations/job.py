"""The training job: `python -m services.profile.recommendations train [--workspace W
--key K]` trains every recommendation object that is due (never trained, its last
training RECOMMENDATIONS_RETRAIN_EVERY_SECONDS old, a training asked for through
TrainRecommendationModel, or a stale one whose runner died), or the named object
whether due or not, then exits. On Kubernetes it is a CronJob beside the profile
Deployment, which runs with RECOMMENDATIONS_TRAINING=job and so trains nothing itself.

It prints a line per object started, per tenth of its progress and at its end. The
exit status is 0 when every training it ran succeeded (or nothing was due, or another
runner held a due object), 1 when one failed or the named object could not be trained
(unknown, or training elsewhere), 2 on bad arguments. The lease
(RecommendationStore.start_training) keeps concurrent runs, jobs or service replicas,
from training one object twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from services.profile.recommendations.definition import TrainingState, parse_key
from services.profile.recommendations.hotwrite import RecommendationWriter
from services.profile.recommendations.scheduler import RetrainScheduler
from services.profile.recommendations.service import RecommendationModels
from services.profile.recommendations.settings import TrainingSettings
from services.profile.recommendations.store import RecommendationStore
from services.profile.recommendations.training import Trainer
from services.shared.config import Settings
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound
from services.shared.server import Resources


def say(line: str) -> None:
    """A progress line on stdout, flushed (the job's log)."""
    print(line, flush=True)


class _Progress:
    """Prints a training's progress each time it passes another tenth."""

    def __init__(self) -> None:
        self._said: dict[tuple[str, str], int] = {}

    def __call__(self, workspace_id: str, key: str, share: float) -> None:
        tenth = int(share * 10)
        if tenth > self._said.get((workspace_id, key), 0):
            self._said[(workspace_id, key)] = tenth
            say(f"{workspace_id}/{key}: {tenth * 10}%")


async def train(
    resources: Resources, settings: TrainingSettings, only: tuple[str, str] | None = None
) -> int:
    """Run the due trainings (or `only` = (workspace, key)) on these resources; the
    exit status."""
    store = RecommendationStore(resources.engine)
    writer = RecommendationWriter(resources.redis)
    trainer = Trainer(store, writer, resources.clock, report=_Progress())
    models = RecommendationModels(store, writer, trainer, resources.clock)
    scheduler = RetrainScheduler(models, store, resources.clock, settings.retrain_every_seconds)
    started = time.monotonic()
    try:
        jobs = await scheduler.run_due(say, only)
    except (FailedPrecondition, NotFound) as error:
        say(f"not trained: {error}")
        return 1
    failed = [job for job in jobs if job.state is not TrainingState.SUCCEEDED]
    say(f"{len(jobs)} training(s) run, {len(failed)} failed, in {time.monotonic() - started:.1f} s")
    return 1 if failed else 0


def command(argv: Sequence[str]) -> int:
    """Parse the arguments and run the job; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m services.profile.recommendations",
        description="Train recommendation objects once, then exit.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train what is due, or the named object")
    run.add_argument("--workspace", help="with --key: the object's workspace id")
    run.add_argument("--key", help="with --workspace: train this object, due or not")
    args = parser.parse_args(list(argv))
    if (args.workspace is None) != (args.key is None):
        parser.error("--workspace and --key go together")
    only = None
    if args.key is not None:
        try:
            only = (args.workspace, parse_key(args.key, "--key"))
        except InvalidArgument as error:
            parser.error(str(error))
    return asyncio.run(_main(Settings.from_env(), TrainingSettings.from_env(), only))


async def _main(
    settings: Settings, training: TrainingSettings, only: tuple[str, str] | None
) -> int:
    resources = await Resources.open(settings, "profile-training")
    try:
        return await train(resources, training, only)
    finally:
        await resources.close()
