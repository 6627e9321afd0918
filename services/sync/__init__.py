"""Sync: destinations, syncs, retries and CSV export."""
