"""Plumbing used by every service and owned by none: config, db, hot state, streams,
telemetry, auth, errors and server bootstrap."""
