"""The audience language's property filters in SQL (SQLAlchemy Core), for Postgres
(JSONB) and SQLite (JSON1): JSON values inside a document column, and the value
operators on them.

Semantics are those of the language (docs/audiences.md, "filters"; segmentation's
``reference.match_value`` is the reference and its conformance and property tests hold
this module to it): equality by JSON type (1 equals 1.0, "1" never equals 1, true is no
number), dotted paths follow object keys only, a missing value (SQL NULL or JSON null)
matches only ``not_exists``, ``neq`` and ``not_in``. Segmentation compiles audiences and
computed traits with it, prediction the filters of a goal. Pure: expressions from a
filter's parts, no tables and no service state.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Text, and_, case, cast, false, func, literal, not_, or_, true
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "JV",
    "JsonDialect",
    "PostgresJson",
    "SQLiteJson",
    "compare",
    "json_dialect",
    "match_literal",
    "match_ref",
    "negate",
    "null_free",
    "typed_literal",
]


def null_free(pred: ColumnElement[Any]) -> ColumnElement[bool]:
    """A NULL-free boolean: NULL (unknown) becomes false before any NOT sees it."""
    return case((pred, true()), else_=false())


def negate(pred: ColumnElement[Any]) -> ColumnElement[bool]:
    """NOT `pred`, where an unknown `pred` counts as false (so its negation is true)."""
    return not_(null_free(pred))


def compare(lhs: Any, op: str, rhs: Any) -> ColumnElement[bool]:
    """`lhs` `op` `rhs` for a comparison operator of the language (eq .. lte)."""
    return {
        "eq": lambda: lhs == rhs,
        "neq": lambda: lhs != rhs,
        "gt": lambda: lhs > rhs,
        "gte": lambda: lhs >= rhs,
        "lt": lambda: lhs < rhs,
        "lte": lambda: lhs <= rhs,
    }[op]()


def typed_literal(v: Any) -> ColumnElement[Any]:
    """A scalar as a bound parameter of an explicit type."""
    # Explicit types keep asyncpg from guessing (an int bound as BIGINT, a float as
    # DOUBLE PRECISION, text as VARCHAR).
    if isinstance(v, bool):
        return literal(v, sa.Boolean)
    if isinstance(v, int):
        return literal(v, sa.BigInteger)
    if isinstance(v, float):
        return literal(v, sa.Float)
    return literal(v, sa.String)


@dataclass(frozen=True)
class JV:
    """A JSON value in SQL: on Postgres a JSONB expression, on SQLite a (document, path)
    pair for json_type/json_extract. SQL NULL and JSON null both mean missing."""

    expr: Any  # postgres: jsonb expression; sqlite: JSON text document
    path: str = "$"


class JsonDialect(ABC):
    """JSON value operations of one dialect; the language's operators are built on top
    (``match_literal``, ``match_ref``)."""

    name: str

    @abstractmethod
    def document(self, col: Any) -> JV:
        """The whole JSON document of column `col`."""
        ...

    def prop(self, col: Any, path: str) -> JV:
        """The value at the dotted property `path` of the document in column `col`."""
        return self.walk(self.document(col), path.split("."))

    @abstractmethod
    def walk(self, v: JV, keys: Sequence[str]) -> JV:
        """The value at object `keys` inside `v` (object keys only, never array indexes)."""
        ...

    @abstractmethod
    def first_present(self, first: JV, other: JV) -> JV:
        """`first` where it holds a value, else `other`."""
        ...

    @abstractmethod
    def decode(self, text_expr: Any) -> JV: ...
    @abstractmethod
    def present(self, v: JV) -> ColumnElement[bool]: ...
    @abstractmethod
    def is_set(self, v: JV) -> ColumnElement[bool]:
        """Whether `v` is there at all, JSON null included (a key an identify call set)."""
        ...

    @abstractmethod
    def is_kind(self, v: JV, kind: str) -> ColumnElement[bool]: ...
    @abstractmethod
    def num(self, v: JV) -> Any:
        """The number exactly (NULL unless `v` is a number): for comparisons."""
        ...

    @abstractmethod
    def float_num(self, v: JV) -> Any:
        """The number as a double (NULL unless `v` is a number): for arithmetic."""
        ...

    @abstractmethod
    def text(self, v: JV) -> Any: ...
    @abstractmethod
    def json_text(self, v: JV) -> Any: ...
    @abstractmethod
    def eq_lit(self, v: JV, lit: Any) -> ColumnElement[bool]: ...
    @abstractmethod
    def eq_dyn(self, a: JV, b: JV) -> ColumnElement[bool]: ...
    @abstractmethod
    def array_has_lit(self, v: JV, lit: Any) -> ColumnElement[bool]: ...
    @abstractmethod
    def array_has_dyn(self, a: JV, b: JV) -> ColumnElement[bool]: ...
    @abstractmethod
    def instr(self, hay: Any, needle: Any) -> ColumnElement[bool]: ...


class PostgresJson(JsonDialect):
    name = "postgresql"
    # The empty text[] path: #>> '{}' is "the value as text".
    _EMPTY: ClassVar[sa.ColumnClause[Any]] = sa.literal_column("'{}'")

    def _t(self, v: JV) -> Any:
        return func.jsonb_typeof(v.expr)

    def document(self, col: Any) -> JV:
        return JV(col)

    def walk(self, v: JV, keys: Sequence[str]) -> JV:
        # Chained -> with text keys: unlike #> it never indexes into arrays, matching the
        # reference's "object keys only" dotted paths.
        e = v.expr
        for k in keys:
            e = e.op("->", return_type=JSONB)(literal(k, sa.String))
        return JV(e)

    def first_present(self, first: JV, other: JV) -> JV:
        return JV(case((self.present(first), first.expr), else_=other.expr))

    def decode(self, text_expr: Any) -> JV:
        return JV(cast(text_expr, JSONB))

    def present(self, v: JV) -> ColumnElement[bool]:
        return self._t(v).in_(["string", "number", "boolean", "array", "object"])

    def is_set(self, v: JV) -> ColumnElement[bool]:
        return self._t(v).is_not(None)

    def is_kind(self, v: JV, kind: str) -> ColumnElement[bool]:
        return self._t(v) == kind

    def text(self, v: JV) -> Any:
        return v.expr.op("#>>", return_type=Text)(self._EMPTY)

    def num(self, v: JV) -> Any:
        # CASE fixes the evaluation order: the cast never sees a non-number.
        return case((self.is_kind(v, "number"), cast(self.text(v), sa.Numeric)))

    def float_num(self, v: JV) -> Any:
        return case((self.is_kind(v, "number"), cast(self.text(v), sa.Float)))

    def json_text(self, v: JV) -> Any:
        return cast(v.expr, Text)

    def _jlit(self, value: Any) -> Any:
        return cast(literal(json.dumps(value), sa.String), JSONB)

    def eq_lit(self, v: JV, lit: Any) -> ColumnElement[bool]:
        # jsonb equality is by JSON type already: 1 = 1.0, "1" <> 1, true <> 1.
        return v.expr.op("=", is_comparison=True)(self._jlit(lit))

    def eq_dyn(self, a: JV, b: JV) -> ColumnElement[bool]:
        return and_(self.present(a), self.present(b), a.expr.op("=", is_comparison=True)(b.expr))

    def array_has_lit(self, v: JV, lit: Any) -> ColumnElement[bool]:
        # For a scalar, containment in a one-element array is exactly "is an element".
        return and_(
            self.is_kind(v, "array"), v.expr.op("@>", is_comparison=True)(self._jlit([lit]))
        )

    def array_has_dyn(self, a: JV, b: JV) -> ColumnElement[bool]:
        arr = case((self.is_kind(a, "array"), a.expr), else_=self._jlit([]))
        el = func.jsonb_array_elements(arr).table_valued(sa.column("value", JSONB)).alias("el")
        sub = (
            sa.select(literal(1))
            .select_from(el)
            .where(el.c.value.op("=", is_comparison=True)(b.expr))
        )
        return and_(self.is_kind(a, "array"), self.present(b), sub.exists())

    def instr(self, hay: Any, needle: Any) -> ColumnElement[bool]:
        return func.strpos(hay, needle) > 0


class SQLiteJson(JsonDialect):
    name = "sqlite"
    _KIND: ClassVar[dict[str, tuple[str, ...]]] = {
        "number": ("integer", "real"),
        "string": ("text",),
        "boolean": ("true", "false"),
        "array": ("array",),
        "object": ("object",),
    }

    def _t(self, v: JV) -> Any:
        return func.json_type(v.expr, v.path)

    def document(self, col: Any) -> JV:
        return JV(sa.type_coerce(col, Text), "$")

    def walk(self, v: JV, keys: Sequence[str]) -> JV:
        return JV(v.expr, v.path + "".join(f'."{k}"' for k in keys))

    def first_present(self, first: JV, other: JV) -> JV:
        # Two documents cannot share one JSON path: the chosen value goes on as JSON text.
        return self.decode(
            case((self.present(first), self.json_text(first)), else_=self.json_text(other))
        )

    def decode(self, text_expr: Any) -> JV:
        return JV(text_expr, "$")

    def present(self, v: JV) -> ColumnElement[bool]:
        return self._t(v).in_(["integer", "real", "text", "true", "false", "array", "object"])

    def is_set(self, v: JV) -> ColumnElement[bool]:
        return self._t(v).is_not(None)

    def is_kind(self, v: JV, kind: str) -> ColumnElement[bool]:
        return self._t(v).in_(self._KIND[kind])

    def _x(self, v: JV) -> Any:
        return func.json_extract(v.expr, v.path)

    def num(self, v: JV) -> Any:
        return self._x(v)

    def float_num(self, v: JV) -> Any:
        return case((self.is_kind(v, "number"), cast(self._x(v), sa.Float)))

    def text(self, v: JV) -> Any:
        return self._x(v)

    def json_text(self, v: JV) -> Any:
        # The -> operator (SQLite 3.38+) yields JSON text: "a" quoted, true as true.
        return v.expr.op("->", return_type=Text)(literal(v.path, sa.String))

    def kind_of(self, t: Any) -> Any:
        """The language's kind of a ``json_type`` (or ``json_each``) type name: string,
        number, boolean, array or object; NULL for null."""
        return case(
            (t.in_(["integer", "real"]), "number"),
            (t == "text", "string"),
            (t.in_(["true", "false"]), "boolean"),
            (t == "array", "array"),
            (t == "object", "object"),
        )

    def _eq_atom(self, t: Any, x: Any, lit: Any) -> ColumnElement[bool]:
        # json_extract turns true/false into 1/0, so booleans are told apart by type.
        if isinstance(lit, bool):
            return t == ("true" if lit else "false")
        if isinstance(lit, str):
            return and_(t == "text", x == typed_literal(lit))
        return and_(t.in_(["integer", "real"]), x == typed_literal(lit))

    def eq_lit(self, v: JV, lit: Any) -> ColumnElement[bool]:
        return self._eq_atom(self._t(v), self._x(v), lit)

    def eq_dyn(self, a: JV, b: JV) -> ColumnElement[bool]:
        ka, kb = self.kind_of(self._t(a)), self.kind_of(self._t(b))
        return and_(ka.isnot(None), ka == kb, self._x(a) == self._x(b))

    def _each(self, v: JV) -> Any:
        return func.json_each(v.expr, v.path).table_valued("type", "atom", "value").alias("el")

    def array_has_lit(self, v: JV, lit: Any) -> ColumnElement[bool]:
        el = self._each(v)
        sub = sa.select(literal(1)).select_from(el).where(self._eq_atom(el.c.type, el.c.atom, lit))
        return and_(self.is_kind(v, "array"), sub.exists())

    def array_has_dyn(self, a: JV, b: JV) -> ColumnElement[bool]:
        el = self._each(a)
        elval = case((el.c.type.in_(["array", "object"]), el.c.value), else_=el.c.atom)
        sub = (
            sa.select(literal(1))
            .select_from(el)
            .where(self.kind_of(el.c.type) == self.kind_of(self._t(b)), elval == self._x(b))
        )
        return and_(self.is_kind(a, "array"), self.present(b), sub.exists())

    def instr(self, hay: Any, needle: Any) -> ColumnElement[bool]:
        return func.instr(hay, needle) > 0


def json_dialect(name: str) -> JsonDialect:
    """The JSON operations of the SQLAlchemy dialect `name` (postgresql or sqlite)."""
    if name == "postgresql":
        return PostgresJson()
    if name == "sqlite":
        return SQLiteJson()
    raise ValueError(f"unsupported dialect {name!r}")


def match_literal(d: JsonDialect, v: JV, op: str, lit: Any) -> ColumnElement[bool]:
    """``match_value(op, actual, lit)`` of the reference, in SQL: `v` against the
    literal `lit` (a tuple or list for in / not_in, None for exists / not_exists)."""
    if op == "exists":
        return d.present(v)
    if op == "not_exists":
        return negate(d.present(v))
    if op == "eq":
        return d.eq_lit(v, lit)
    if op == "neq":
        return negate(d.eq_lit(v, lit))
    if op in ("gt", "gte", "lt", "lte"):
        return and_(d.is_kind(v, "number"), compare(d.num(v), op, typed_literal(lit)))
    if op in ("in", "not_in"):
        hit = or_(*[d.eq_lit(v, x) for x in lit]) if lit else false()
        return hit if op == "in" else negate(hit)
    if op == "contains":
        parts = [d.array_has_lit(v, lit)]
        if isinstance(lit, str):
            parts.append(and_(d.is_kind(v, "string"), d.instr(d.text(v), typed_literal(lit))))
        return or_(*parts)
    if op == "starts_with":
        return and_(
            d.is_kind(v, "string"), func.substr(d.text(v), 1, len(lit)) == typed_literal(lit)
        )
    raise ValueError(f"unknown operator {op!r}")


def match_ref(d: JsonDialect, v: JV, op: str, ref: JV) -> ColumnElement[bool]:
    """`v` against a referenced value; a missing referenced value matches nothing."""
    if op == "eq":
        return d.eq_dyn(v, ref)
    if op == "neq":
        return and_(d.present(ref), negate(d.eq_dyn(v, ref)))
    if op in ("gt", "gte", "lt", "lte"):
        return and_(
            d.is_kind(v, "number"), d.is_kind(ref, "number"), compare(d.num(v), op, d.num(ref))
        )
    if op == "contains":
        return or_(
            and_(d.is_kind(v, "string"), d.is_kind(ref, "string"), d.instr(d.text(v), d.text(ref))),
            d.array_has_dyn(v, ref),
        )
    if op == "starts_with":
        return and_(
            d.is_kind(v, "string"),
            d.is_kind(ref, "string"),
            func.substr(d.text(v), 1, func.length(d.text(ref))) == d.text(ref),
        )
    raise ValueError(f"operator {op!r} cannot take a ref")
