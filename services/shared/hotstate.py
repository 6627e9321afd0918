"""Key layout of the hot profile state in Redis: written by ingest, segmentation and
prediction, read by the profile service.

Every key of a workspace carries the hash tag ``{ws}`` so that on Redis Cluster one
Lua script can resolve an identifier and read the profile in a single round trip.
Values are JSON text (orjson) so readers can pass them through without re-encoding.

    hs:{ws}:id:<type>:<value>   string  -> profile id (the surviving profile)
    hs:{ws}:p:<pid>:traits      hash    trait key -> JSON value
    hs:{ws}:p:<pid>:ids         hash    "<type>:<value>" -> "1" (every identifier)
    hs:{ws}:p:<pid>:meta        hash    last_seen_us, created_at_us
    hs:{ws}:p:<pid>:audiences   hash    audience key -> entered_at_us
    hs:{ws}:p:<pid>:computed    hash    computed trait key -> JSON value
    hs:{ws}:p:<pid>:predictions hash    prediction key -> JSON {probability, percentile, ...}
    hs:{ws}:p:<pid>:recs        string  JSON list of {item_id, score, model, metadata}
    hs:{ws}:p:<pid>:recs_by_model hash  recommendation object key -> its items as JSON
                                        list members (no brackets); ``recs`` is their
                                        join in key order (the profile service writes both)
    hs:{ws}:p:<pid>:recs_consumed set   "<object key>:<item id>" of items the profile
                                        consumed while it had no list of its own of
                                        that object (the profile service's consumer
                                        of the event streams writes it; the read
                                        script leaves them out of the popular lists)
    hs:{ws}:p:<pid>:wire        hash    section flags -> those sections encoded as
                                        audiences.v1.Profile fields (a read cache)
    hs:{ws}:merged:<pid>        string  -> survivor profile id (after a merge)
    hs:{ws}:audcfg              hash    version -> content hash of config;
                                        config -> JSON {"context": [[key, definition],
                                        ...] (context audiences in dependency order),
                                        "holdouts": {key: share}} (segmentation writes
                                        both fields in one HSET; the profile service
                                        reads the version in its one read script and
                                        the config only when the version changed)
    hs:{ws}:holdouts            hash    audience key -> holdout share (written with
                                        audcfg, in one transaction)
    hs:{ws}:recs_popular        hash    recommendation object key -> the workspace's
                                        popular items as JSON list members (as in
                                        recs_by_model), served to a profile without
                                        its own list of that object; ".version" -> a
                                        counter raised at every write (the wire
                                        cache's tag holds it). The profile service
                                        writes it at training and rebuild.
    hs:{ws}:recs_popular_more   hash    recommendation object key -> the popular items
                                        that follow its list (as many again), from
                                        which the read script refills a list it left
                                        a profile's consumed items out of (written
                                        with recs_popular, in the same script)

A merge (ingest) deletes the merged-away profile's sections and moves its audience
memberships into the survivor's ``audiences`` hash, earliest entry per audience: the
person is a member wherever any of their profiles was, from the moment of the merge.

The ``wire`` hash is the profile service's cache of a profile's sections as they go
on the wire (GetProfile answers with these bytes), one field per set of sections
asked for. It is filled by the reader and must never outlive what it encodes:
whoever writes any section of a profile (ids, traits, computed, audiences,
predictions, recs; not meta) deletes that profile's wire hash in the same script or
transaction, and whoever deletes or replaces a profile deletes it with the rest.
"""

from __future__ import annotations

PROFILE_SECTIONS = (
    "traits",
    "ids",
    "meta",
    "audiences",
    "computed",
    "predictions",
    "recs",
    "recs_by_model",
    "recs_consumed",
    "wire",
)

# A cached profile encoding is dropped this long after it was built, so the cache
# holds the profiles read lately rather than every profile ever read.
WIRE_CACHE_SECONDS = 3600

# The field of the recs_popular hash counting its writes (object keys are [a-z0-9_]:
# never this).
POPULAR_VERSION_FIELD = ".version"


def workspace_prefix(workspace_id: str) -> str:
    """Prefix of every hot-state key of a workspace (used to scan or erase it)."""
    return f"hs:{{{workspace_id}}}:"


def identity_key(workspace_id: str, id_type: str, id_value: str) -> str:
    """Key mapping an identifier to its profile id."""
    return f"hs:{{{workspace_id}}}:id:{id_type}:{id_value}"


def profile_key(workspace_id: str, profile_id: int | str, section: str) -> str:
    """Key of one section of a profile's hot state."""
    return f"hs:{{{workspace_id}}}:p:{profile_id}:{section}"


def merged_key(workspace_id: str, profile_id: int | str) -> str:
    """Key redirecting a merged-away profile id to its survivor."""
    return f"hs:{{{workspace_id}}}:merged:{profile_id}"


def audience_config_key(workspace_id: str) -> str:
    """Key of the workspace's published audience settings read at request time
    (context audience definitions, holdout shares)."""
    return f"hs:{{{workspace_id}}}:audcfg"


def popular_recommendations_key(workspace_id: str) -> str:
    """Key of the workspace's popular items per recommendation object (cold profiles')."""
    return f"hs:{{{workspace_id}}}:recs_popular"


def popular_reserve_key(workspace_id: str) -> str:
    """Key of the popular items that follow each object's popular list (the refill of
    a list the read script left consumed items out of)."""
    return f"hs:{{{workspace_id}}}:recs_popular_more"


def holdouts_key(workspace_id: str) -> str:
    """Key of the workspace's holdout shares (audience key -> share), for the read script."""
    return f"hs:{{{workspace_id}}}:holdouts"
