"""`python -m services.profile.recommendations train [--workspace W --key K]`: the
training job (services.profile.recommendations.job)."""

import sys

from services.profile.recommendations.job import command
from services.shared import telemetry

telemetry.configure_logging()
sys.exit(command(sys.argv[1:]))
