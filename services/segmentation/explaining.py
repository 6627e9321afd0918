"""ExplainMembership's tree: reference.explain's decisions with each node's path in the
definition and a one-line human summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.segmentation.language import (
    Account,
    All,
    AnyOf,
    AudienceRef,
    Computed,
    ContextCondition,
    Event,
    Funnel,
    Node,
    Not,
    Prediction,
    Trait,
)
from services.segmentation.reference import Explanation

_OPS = {"eq": "=", "neq": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass
class ExplainedNode:
    """One node: where it is, whether it held, and the evidence."""

    path: str
    kind: str
    result: bool
    summary: str
    count: int = 0
    value: Any = None
    has_value: bool = False
    event_seqs: list[int] = field(default_factory=list)
    children: list[ExplainedNode] = field(default_factory=list)


def _kind_key(node: Node) -> str:
    return {
        All: "all",
        AnyOf: "any",
        Not: "not",
        Event: "event",
        Trait: "trait",
        Computed: "computed",
        AudienceRef: "audience",
        Prediction: "prediction",
        Funnel: "funnel",
        Account: "account",
        ContextCondition: "context",
    }[type(node)]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def annotate(node: Node, explanation: Explanation, path: str = "") -> ExplainedNode:
    """The explanation of `node` with paths (``all[1].event``) and summaries."""
    here = _join(path, _kind_key(node))
    d = explanation.detail
    out = ExplainedNode(here, explanation.kind, explanation.value, "")
    if isinstance(node, All | AnyOf):
        out.children = [
            annotate(child, sub, f"{here}[{i}]")
            for i, (child, sub) in enumerate(zip(node.children, explanation.children, strict=False))
        ]
        held = sum(1 for c in out.children if c.result)
        out.count = held
        out.summary = f"{held} of {len(node.children)} conditions hold"
    elif isinstance(node, Not):
        out.children = [annotate(node.child, explanation.children[0], here)]
        out.summary = "the negated condition " + ("does not hold" if out.result else "holds")
    elif isinstance(node, Event):
        out.count = d["count"]
        out.event_seqs = list(d["seqs"])
        window = ""
        if node.window is not None:
            window = " in the window"
        out.summary = (
            f"{d['count']} {node.name} {node.type} events{window}, "
            f"needs {_OPS[d['op']]} {d['threshold']}"
        ) + _refs_summary(out, d)
    elif isinstance(node, Trait | Computed | ContextCondition):
        what = {Trait: "trait", Computed: "computed trait", ContextCondition: "context"}[type(node)]
        out.value, out.has_value = d["actual"], d["present"]
        shown = repr(d["actual"]) if d["present"] else "missing"
        operand = "" if d["op"] in ("exists", "not_exists") else f" {d['operand']!r}"
        out.summary = f"{what} {d['name']} is {shown}; needs {d['op']}{operand}"
    elif isinstance(node, AudienceRef):
        out.summary = f"{'a' if out.result else 'not a'} member of audience {node.key}"
    elif isinstance(node, Prediction):
        score = d.get(node.metric)
        out.value, out.has_value = score, score is not None
        bounds = ", ".join(f"{_OPS[op]} {v:g}" for op, v in node.bounds)
        shown = "missing" if score is None else f"{score:g}"
        out.summary = f"{node.key} {node.metric} is {shown}; needs {bounds}"
    elif isinstance(node, Funnel):
        chains = d["completed_chains"]
        abandoned = d["abandoned_first_seqs"]
        out.count = d["attempts"]
        out.event_seqs = list(chains[0]) if node.completed and chains else list(abandoned)
        out.summary = (
            f"{d['attempts']} attempts: {len(chains)} completed, {len(abandoned)} not "
            f"(needs {'a completed' if node.completed else 'an abandoned'} attempt)"
        ) + _refs_summary(out, d)
    elif isinstance(node, Account):
        out.count = d["matching"]
        out.summary = f"{d['matching']} of {d['users']} users match; needs {d['match']}"
        out.children = [
            annotate(node.condition, sub, f"{here}.condition[{i}]")
            for i, sub in enumerate(explanation.children)
        ]
    return out


def _refs_summary(out: ExplainedNode, d: dict[str, Any]) -> str:
    """The profile's values the node's filters compared events with, for the summary
    (``; compared with computed trait avg_order = 42.5``); a node comparing with one
    value also carries it as its value."""
    refs = d.get("refs", [])
    if len(refs) == 1:
        out.value, out.has_value = refs[0]["value"], refs[0]["value"] is not None
    parts = []
    for r in refs:
        what = f"trait {r['trait']}" if "trait" in r else f"computed trait {r['computed']}"
        shown = "missing (matches no event)" if r["value"] is None else f"= {r['value']!r}"
        parts.append(f"{what} {shown}")
    return f"; compared with {', '.join(parts)}" if parts else ""
