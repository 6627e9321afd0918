"""Destination types, one module each; `TYPES` maps a kind to its implementation."""

from __future__ import annotations

from services.sync.destinations import amplitude, braze, file, webhook
from services.sync.destinations.base import DestinationType
from services.sync.model import AMPLITUDE, BRAZE, FILE, WEBHOOK

TYPES: dict[str, DestinationType] = {
    WEBHOOK: webhook.TYPE,
    FILE: file.TYPE,
    BRAZE: braze.TYPE,
    AMPLITUDE: amplitude.TYPE,
}
