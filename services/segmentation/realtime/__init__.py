"""The realtime worker: keeps the audiences and computed traits marked ``realtime`` up
to date per event and as time passes (``python -m services.segmentation.realtime``).

It consumes the event stream shards with a Redis consumer group, re-evaluates exactly
the canonical profiles a batch touched with the batch evaluator restricted to them
(``sql.compile_audiences(profile_ids=...)``: the same answer as a Recompute, set-based,
one statement per dependency layer per batch), writes the flips through the
segmentation store's membership writer (same records and per-workspace sequence as
batch), updates the hot state, appends each change to ``stream:changes`` with the
triggering event's trace context, and schedules each profile's next window boundary in
a due-time sorted set so time passing needs no scan.
"""
