"""The reference evaluator: design.md section 6 in plain Python, one profile at a time.

This is the oracle the SQL compiler is tested against, the engine behind
ExplainMembership (``explain`` returns the tree of decisions) and the building block of
realtime evaluation. It favours being obviously right over being fast.

Inputs are plain data: a profile's events as dicts with ``type``, ``name``,
``timestamp_us``, ``seq`` (received order, breaks timestamp ties) and ``properties``;
its current traits; its computed-trait values; the keys of the audiences it belongs to;
prediction scores; and, for account profiles, the account's users.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.segmentation.language import (
    Account,
    All,
    AnyOf,
    AudienceRef,
    Computed,
    ComputedRef,
    ComputedTraitDef,
    ContextCondition,
    Count,
    Event,
    Filter,
    Funnel,
    Node,
    Not,
    Prediction,
    StepRef,
    Trait,
    TraitRef,
    Window,
    split_path,
)

__all__ = [
    "MISSING",
    "UNIQUE_LIST_LIMIT",
    "Explanation",
    "ProfileData",
    "compute_trait",
    "evaluate",
    "evaluate_all",
    "explain",
    "get_property",
    "json_equal",
    "match_value",
    "ref_value",
    "trait_value",
    "value_order_key",
]

UNIQUE_LIST_LIMIT = 100
# Cap on the event seqs an explanation lists per node, so a heavy user's explanation
# stays small; the counts are always exact.
EXPLAIN_SEQ_LIMIT = 50


class _Missing:
    """An absent value. JSON null is folded into it: in the language null is missing."""

    _inst: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


@dataclass(frozen=True)
class ProfileData:
    """Everything evaluation may read about one (canonical) profile."""

    events: Sequence[Mapping[str, Any]] = ()
    traits: Mapping[str, Any] = field(default_factory=dict)
    computed: Mapping[str, Any] = field(default_factory=dict)
    audiences: Collection[str] = frozenset()
    # prediction key -> {"probability": p, "percentile": q}
    predictions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # For an account (group) profile: its users, for account-level conditions.
    members: Sequence[ProfileData] = ()
    # The request being served (context conditions): attribute -> value, as built by
    # services.shared.request_context.build_context. Empty outside a request.
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Explanation:
    """Why a node is true or false: its value, the facts that decided it, its children."""

    kind: str
    value: bool
    detail: dict[str, Any] = field(default_factory=dict)
    children: list[Explanation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "detail": self.detail,
            "children": [c.to_dict() for c in self.children],
        }


# --------------------------------------------------------------------------- values


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _type_class(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return "other"


def json_equal(a: Any, b: Any) -> bool:
    """Equality by JSON type: 1 equals 1.0, a boolean is never a number, deep for
    arrays and objects."""
    ta, tb = _type_class(a), _type_class(b)
    if ta != tb:
        return False
    if ta == "array":
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _canon(v: Any) -> Any:
    """A hashable key under which JSON-equal values coincide (1 and 1.0 hash alike)."""
    t = _type_class(v)
    if t == "array":
        return ("a", tuple(_canon(x) for x in v))
    if t == "object":
        return ("o", tuple(sorted((k, _canon(x)) for k, x in v.items())))
    return (t[0], v)


def value_order_key(v: Any) -> tuple[int, Any]:
    """The total order of unique_list: numbers, then strings (by code point), then
    false < true, then arrays, then objects (by their compact JSON text)."""
    t = _type_class(v)
    if t == "number":
        return (0, v)
    if t == "string":
        return (1, v)
    if t == "boolean":
        return (2, v)
    return (3 if t == "array" else 4, json.dumps(v, separators=(",", ":"), ensure_ascii=False))


def get_property(props: Mapping[str, Any] | None, path: str) -> Any:
    """The value at a dotted path of an event's properties, or MISSING (null counts as
    missing; only object keys are followed, never array indexes)."""
    cur: Any = props
    for key in split_path(path):
        if not isinstance(cur, Mapping) or key not in cur:
            return MISSING
        cur = cur[key]
    return MISSING if cur is None else cur


def trait_value(traits: Mapping[str, Any], name: str) -> Any:
    """The value a trait name reads, or MISSING: the top-level key spelled exactly as
    ``name`` when it holds a value, else ``name`` as a dotted path walked into nested
    values like an event property (``billing.tier`` reads ``{"billing": {"tier": ..}}``)."""
    literal = traits.get(name)
    if literal is not None:
        return literal
    return get_property(traits, name)


def match_value(op: str, actual: Any, operand: Any) -> bool:
    """Apply a value operator. ``actual`` may be MISSING (or None, treated alike)."""
    if actual is None or actual is MISSING:
        return op in ("not_exists", "neq", "not_in")
    if op == "exists":
        return True
    if op == "not_exists":
        return False
    if op == "eq":
        return json_equal(actual, operand)
    if op == "neq":
        return not json_equal(actual, operand)
    if op in ("gt", "gte", "lt", "lte"):
        if not (_is_number(actual) and _is_number(operand)):
            return False
        if op == "gt":
            return actual > operand
        if op == "gte":
            return actual >= operand
        if op == "lt":
            return actual < operand
        return actual <= operand
    if op == "in":
        return any(json_equal(actual, x) for x in operand)
    if op == "not_in":
        return not any(json_equal(actual, x) for x in operand)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(operand, str) and operand in actual
        if isinstance(actual, list | tuple):
            return any(json_equal(x, operand) for x in actual)
        return False
    if op == "starts_with":
        return isinstance(actual, str) and isinstance(operand, str) and actual.startswith(operand)
    raise ValueError(f"unknown operator {op!r}")


def _count_ok(count: Count, n: int) -> bool:
    v = count.value
    return {
        "eq": n == v,
        "neq": n != v,
        "gt": n > v,
        "gte": n >= v,
        "lt": n < v,
        "lte": n <= v,
    }[count.op]


def _in_window(t: int, window: Window | None, now_us: int) -> bool:
    if t > now_us:  # events after now count only once now reaches them
        return False
    if window is None:
        return True
    lo, hi = window.bounds(now_us)
    return lo < t <= hi


def ref_value(ref: TraitRef | ComputedRef, p: ProfileData) -> Any:
    """The profile's value a trait or computed ref reads, or MISSING (null is missing)."""
    if isinstance(ref, TraitRef):
        return trait_value(p.traits, ref.trait)
    value = p.computed.get(ref.computed)
    return MISSING if value is None else value


def _filter_ok(
    f: Filter,
    event: Mapping[str, Any],
    p: ProfileData,
    chain: Sequence[Mapping[str, Any]] = (),
) -> bool:
    actual = get_property(event.get("properties"), f.property)
    if f.ref is None:
        return match_value(f.op, actual, f.value)
    if isinstance(f.ref, StepRef):
        ref_val = get_property(chain[f.ref.step].get("properties"), f.ref.property)
    else:
        ref_val = ref_value(f.ref, p)
    if ref_val is None or ref_val is MISSING:
        return False  # a filter whose referenced value is missing matches no event
    return match_value(f.op, actual, ref_val)


def _order(e: Mapping[str, Any]) -> tuple[int, int]:
    return (e["timestamp_us"], e["seq"])


def _matching(
    events: Sequence[Mapping[str, Any]],
    etype: str,
    name: str,
    where: Sequence[Filter],
    window: Window | None,
    now_us: int,
    p: ProfileData,
) -> list[Mapping[str, Any]]:
    out = [
        e
        for e in events
        if e.get("type") == etype
        and e.get("name") == name
        and _in_window(e["timestamp_us"], window, now_us)
        and all(_filter_ok(f, e, p) for f in where)
    ]
    out.sort(key=_order)
    return out


# --------------------------------------------------------------------------- funnels


def _funnel_chains(
    node: Funnel, events: Sequence[Mapping[str, Any]], p: ProfileData, now_us: int
) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]] | None]]:
    """For every first-step event inside the window: the completing chain found from it
    (a list of step events), or None when none exists among events up to now."""
    steps = node.steps
    # Per step, the candidates that pass the filters not depending on the chain.
    cands: list[list[Mapping[str, Any]]] = []
    for i, s in enumerate(steps):
        static = [f for f in s.where if not isinstance(f.ref, StepRef)]
        cands.append(
            _matching(events, s.type, s.name, static, node.window if i == 0 else None, now_us, p)
        )
    dyn = [[f for f in s.where if isinstance(f.ref, StepRef)] for s in steps]
    referenced = {f.ref.step for fs in dyn for f in fs if isinstance(f.ref, StepRef)}
    within = node.within_us

    def extend(chain: list[Mapping[str, Any]], deadline: int) -> bool:
        i = len(chain)
        if i == len(steps):
            return True
        prev_t = chain[-1]["timestamp_us"]
        for e in cands[i]:
            t = e["timestamp_us"]
            if t <= prev_t:  # strictly increasing timestamps
                continue
            if t > deadline:
                break
            if all(_filter_ok(f, e, p, chain) for f in dyn[i]):
                chain.append(e)
                if extend(chain, deadline):
                    return True
                chain.pop()
            if not dyn[i] and i not in referenced:
                # When neither this step's filters depend on the chain nor later steps
                # read this step's event, the earliest candidate is always the best
                # choice (it leaves the most room), so failing with it fails them all.
                break
        return False

    out: list[tuple[Mapping[str, Any], list[Mapping[str, Any]] | None]] = []
    for e0 in cands[0]:
        chain = [e0]
        ok = extend(chain, e0["timestamp_us"] + within)
        out.append((e0, chain if ok else None))
    return out


# --------------------------------------------------------------------------- evaluation


def evaluate(node: Node, profile: ProfileData, now_us: int) -> bool:
    """Whether ``profile`` matches ``node`` at ``now_us``."""
    return _eval(node, profile, now_us, explain=False).value


def explain(node: Node, profile: ProfileData, now_us: int) -> Explanation:
    """The decision tree behind ``evaluate``: each node's value and the facts that set it."""
    return _eval(node, profile, now_us, explain=True)


def evaluate_all(node: Node, profiles: Mapping[Any, ProfileData], now_us: int) -> set[Any]:
    """The ids of the profiles matching ``node``."""
    return {pid for pid, p in profiles.items() if evaluate(node, p, now_us)}


def _seqs(events: Sequence[Mapping[str, Any]]) -> list[Any]:
    return [e["seq"] for e in events[:EXPLAIN_SEQ_LIMIT]]


def _eval(node: Node, p: ProfileData, now: int, explain: bool) -> Explanation:
    if isinstance(node, All | AnyOf):
        kids: list[Explanation] = []
        want = isinstance(node, AnyOf)
        value = not want
        for c in node.children:
            r = _eval(c, p, now, explain)
            kids.append(r)
            if r.value == want:
                value = want
                if not explain:
                    break  # short-circuit only when nobody reads the rest
        return Explanation("all" if not want else "any", value, {}, kids)
    if isinstance(node, Not):
        r = _eval(node.child, p, now, explain)
        return Explanation("not", not r.value, {}, [r])
    if isinstance(node, Event):
        m = _matching(p.events, node.type, node.name, node.where, node.window, now, p)
        ok = _count_ok(node.count, len(m))
        d: dict[str, Any] = {}
        if explain:
            d = {
                "name": node.name,
                "count": len(m),
                "op": node.count.op,
                "threshold": node.count.value,
                "seqs": _seqs(m),
            }
            if node.window is not None:
                d["window_us"] = list(node.window.bounds(now))
            d.update(_ref_detail(node.where, p))
        return Explanation("event", ok, d)
    if isinstance(node, Trait):
        actual = trait_value(p.traits, node.name)
        ok = match_value(node.op, actual, node.value)
        return Explanation(
            "trait", ok, _value_detail(node.name, actual, node.op, node.value, explain)
        )
    if isinstance(node, Computed):
        actual = p.computed.get(node.key, MISSING)
        ok = match_value(node.op, actual, node.value)
        return Explanation(
            "computed", ok, _value_detail(node.key, actual, node.op, node.value, explain)
        )
    if isinstance(node, AudienceRef):
        ok = node.key in p.audiences
        return Explanation("audience", ok, {"key": node.key} if explain else {})
    if isinstance(node, Prediction):
        score = p.predictions.get(node.key, {}).get(node.metric)
        ok = score is not None and all(match_value(op, score, v) for op, v in node.bounds)
        return Explanation(
            "prediction", ok, {"key": node.key, node.metric: score} if explain else {}
        )
    if isinstance(node, Funnel):
        res = _funnel_chains(node, p.events, p, now)
        if node.completed:
            ok = any(c is not None for _, c in res)
        else:
            ok = any(c is None for _, c in res)
        d = {}
        if explain:
            d = {
                "completed": node.completed,
                "attempts": len(res),
                "completed_chains": [[e["seq"] for e in c] for _, c in res if c is not None][
                    :EXPLAIN_SEQ_LIMIT
                ],
                "abandoned_first_seqs": [e0["seq"] for e0, c in res if c is None][
                    :EXPLAIN_SEQ_LIMIT
                ],
                **_ref_detail([f for s in node.steps for f in s.where], p),
            }
        return Explanation("funnel", ok, d)
    if isinstance(node, ContextCondition):
        actual = p.context.get(node.attribute, MISSING)
        ok = match_value(node.op, actual, node.value)
        return Explanation(
            "context", ok, _value_detail(node.attribute, actual, node.op, node.value, explain)
        )
    if isinstance(node, Account):
        kids = [_eval(node.condition, m, now, explain) for m in p.members]
        hits = sum(1 for k in kids if k.value)
        if node.match == "any":
            ok = hits > 0
        elif node.match == "none":
            ok = hits == 0
        else:
            ok = bool(kids) and hits == len(kids)
        return Explanation(
            "account",
            ok,
            {"match": node.match, "users": len(kids), "matching": hits},
            kids if explain else [],
        )
    raise TypeError(f"not a node: {node!r}")


def _ref_detail(filters: Sequence[Filter], p: ProfileData) -> dict[str, Any]:
    """The profile's values the filters' trait and computed refs compared events with
    (``{"refs": [{"trait": T, "value": V}, {"computed": K, "value": V}]}``; a missing
    value is null, and matched no event); nothing when no filter has such a ref."""
    refs: dict[tuple[str, str], dict[str, Any]] = {}
    for f in filters:
        if isinstance(f.ref, TraitRef):
            kind, name = "trait", f.ref.trait
        elif isinstance(f.ref, ComputedRef):
            kind, name = "computed", f.ref.computed
        else:
            continue
        value = ref_value(f.ref, p)
        refs[(kind, name)] = {kind: name, "value": None if value is MISSING else value}
    return {"refs": list(refs.values())} if refs else {}


def _value_detail(name: str, actual: Any, op: str, operand: Any, explain: bool) -> dict[str, Any]:
    if not explain:
        return {}
    d = {
        "name": name,
        "op": op,
        "operand": list(operand) if isinstance(operand, tuple) else operand,
    }
    d["actual"] = None if actual is MISSING else actual
    d["present"] = actual is not MISSING and actual is not None
    return d


# --------------------------------------------------------------------------- computed traits


def compute_trait(
    defn: ComputedTraitDef,
    events: Sequence[Mapping[str, Any]],
    now_us: int,
    traits: Mapping[str, Any] | None = None,
    computed: Mapping[str, Any] | None = None,
) -> Any:
    """The value of a computed trait over one profile's events at ``now_us``; `traits`
    are the profile's current traits and `computed` its values of other computed traits,
    which filters with ``ref.trait`` and ``ref.computed`` compare with.

    No value gives 0 for event_count, unique_count and sum, and None (null) otherwise.
    """
    p = ProfileData(events=events, traits=traits or {}, computed=computed or {})
    matched = _matching(events, defn.event_type, defn.event, defn.where, defn.window, now_us, p)
    if defn.type == "event_count":
        return len(matched)
    assert defn.property is not None
    vals = [
        (e, v)
        for e in matched
        if (v := get_property(e.get("properties"), defn.property)) is not MISSING
    ]
    t = defn.type
    if t in ("sum", "avg", "min", "max"):
        nums = [v for _, v in vals if _is_number(v)]
        if t == "sum":
            return sum(nums)
        if not nums:
            return None
        if t == "avg":
            return sum(nums) / len(nums)
        return min(nums) if t == "min" else max(nums)
    if not vals:
        return 0 if t == "unique_count" else None
    if t == "first":
        return vals[0][1]
    if t == "last":
        return vals[-1][1]
    groups: dict[Any, list[Any]] = {}  # canon -> [count, latest order, value]
    for e, v in vals:
        g = groups.setdefault(_canon(v), [0, None, v])
        g[0] += 1
        g[1] = _order(e)  # vals is in (timestamp, seq) order, so the last write is latest
        g[2] = v
    if t == "most_frequent":
        return max(groups.values(), key=lambda g: (g[0], g[1]))[2]
    if t == "unique_count":
        return len(groups)
    if t == "unique_list":
        return sorted((g[2] for g in groups.values()), key=value_order_key)[:UNIQUE_LIST_LIMIT]
    raise ValueError(f"unknown computed trait type {t!r}")
