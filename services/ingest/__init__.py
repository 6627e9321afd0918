"""Ingest: validates events, resolves identity, stores them durably, updates hot
state and feeds the event stream."""
