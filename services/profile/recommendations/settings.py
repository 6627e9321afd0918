"""Where and how often recommendation objects train (environment settings).

RECOMMENDATIONS_TRAINING says where trainings run: ``service`` (the default, what
`make run` does) runs them in the profile service's process, asked-for ones at once
and due ones on its schedule; ``job`` leaves every training to the training job
(`python -m services.profile.recommendations train`, a CronJob on Kubernetes): the
serving process only serves, and TrainRecommendationModel records the request for the
job's next run. RECOMMENDATIONS_SCHEDULE_SECONDS is the in-service schedule's cadence
(0: off); RECOMMENDATIONS_RETRAIN_EVERY_SECONDS how old a training must be to be due.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

IN_SERVICE = "service"
AS_JOB = "job"
DEFAULT_SCHEDULE_SECONDS = 300.0
DEFAULT_RETRAIN_EVERY_SECONDS = 86_400.0


@dataclass(frozen=True)
class TrainingSettings:
    """Where trainings run and how often they are due."""

    where: str = IN_SERVICE
    schedule_seconds: float = DEFAULT_SCHEDULE_SECONDS
    retrain_every_seconds: float = DEFAULT_RETRAIN_EVERY_SECONDS

    @property
    def as_job(self) -> bool:
        """True when the training job runs every training (none in the service)."""
        return self.where == AS_JOB

    @property
    def scheduled_in_service(self) -> bool:
        """True when the serving process runs the retrain schedule."""
        return not self.as_job and self.schedule_seconds > 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainingSettings:
        """The settings from the environment; ValueError naming a bad one."""
        env = os.environ if env is None else env
        where = env.get("RECOMMENDATIONS_TRAINING") or IN_SERVICE
        if where not in (IN_SERVICE, AS_JOB):
            raise ValueError(
                f"RECOMMENDATIONS_TRAINING must be {IN_SERVICE!r} or {AS_JOB!r}, got {where!r}"
            )
        return cls(
            where=where,
            schedule_seconds=float(
                env.get("RECOMMENDATIONS_SCHEDULE_SECONDS") or DEFAULT_SCHEDULE_SECONDS
            ),
            retrain_every_seconds=float(
                env.get("RECOMMENDATIONS_RETRAIN_EVERY_SECONDS") or DEFAULT_RETRAIN_EVERY_SECONDS
            ),
        )
