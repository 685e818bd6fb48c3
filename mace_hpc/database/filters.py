"""The filter languages of upstream MACE's `filter_materials_*` and `filter_properties`.

Simple filters are strings `name OP value` (OP: > >= < <= = == !=), combined with AND or OR.
Advanced expressions add parentheses, NOT, `LIKE 'C%'`, `IN (225, 227)` and `IS [NOT] NULL`:
`(band_gap > 3 AND space_group = 227) OR formula LIKE 'C%'`. A name is a material column
(`formula`, `space_group`...) or a property (its latest stored value). A bad filter is an
InputError naming it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputError

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
}
_SIMPLE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|=|>|<)\s*(.+?)\s*$")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|'(?P<str>[^']*)'|\"(?P<dstr>[^\"]*)\""
    r"|(?P<op>>=|<=|==|!=|=|>|<|\(|\)|,)|(?P<word>[A-Za-z_][\w.]*))"
)


def _literal(text: str) -> Any:
    text = text.strip().strip("'\"")
    try:
        return float(text)
    except ValueError:
        return text


def compare(left: Any, op: str, right: Any) -> bool:
    """`left OP right`, numerically when both are numbers (or numeric text), else as text;
    a missing value never matches."""
    if left is None:
        return False
    try:
        return _OPS[op](float(left), float(right))
    except (TypeError, ValueError):
        return _OPS[op](str(left), str(right))


def parse_simple(filter_string: str) -> tuple[str, str, Any]:
    match = _SIMPLE.match(filter_string)
    if not match:
        raise InputError(f"filter {filter_string!r}: expected 'name OP value' with OP one of > >= < <= = != ")
    return match.group(1), match.group(2), _literal(match.group(3))


def match_simple(values: Mapping[str, Any], filters: list[tuple[str, str, Any]], logic: str = "AND") -> bool:
    results = [compare(values.get(name), op, value) for name, op, value in filters]
    if logic.upper() not in ("AND", "OR"):
        raise InputError(f"logic {logic!r}: use AND or OR")
    return all(results) if logic.upper() == "AND" else any(results)


class _Parser:
    """Recursive descent over: expr := term (OR term)*; term := factor (AND factor)*;
    factor := NOT factor | '(' expr ')' | name comparison."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        while pos < len(expression.rstrip()):
            m = _TOKEN.match(expression, pos)
            if not m or m.end() == pos:
                raise self.error(f"cannot read at {expression[pos:pos + 10]!r}")
            kind = m.lastgroup or ""
            value: Any = m.group(kind)
            if kind == "num":
                value = float(value)
            elif kind == "dstr":
                kind = "str"
            elif kind == "word" and value.upper() in ("AND", "OR", "NOT", "LIKE", "IN", "IS", "NULL"):
                kind, value = "kw", value.upper()
            self.tokens.append((kind, value))
            pos = m.end()
        self.pos = 0

    def error(self, why: str) -> InputError:
        return InputError(f"filter expression {self.expression!r}: {why}")

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", None)

    def take(self, kind: str, value: Any = None) -> Any:
        tok = self.peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise self.error(f"expected {value or kind}, found {tok[1] if tok[1] is not None else 'the end'}")
        self.pos += 1
        return tok[1]

    def parse(self) -> Callable[[Mapping[str, Any]], bool]:
        node = self.expr()
        if self.peek()[0] != "end":
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> Callable[[Mapping[str, Any]], bool]:
        parts = [self.term()]
        while self.peek() == ("kw", "OR"):
            self.pos += 1
            parts.append(self.term())
        return lambda v: any(p(v) for p in parts)

    def term(self) -> Callable[[Mapping[str, Any]], bool]:
        parts = [self.factor()]
        while self.peek() == ("kw", "AND"):
            self.pos += 1
            parts.append(self.factor())
        return lambda v: all(p(v) for p in parts)

    def factor(self) -> Callable[[Mapping[str, Any]], bool]:
        if self.peek() == ("kw", "NOT"):
            self.pos += 1
            inner = self.factor()
            return lambda v: not inner(v)
        if self.peek() == ("op", "("):
            self.pos += 1
            inner = self.expr()
            self.take("op", ")")
            return inner
        name = self.take("word")
        return self.comparison(name)

    def value(self) -> Any:
        kind, value = self.peek()
        if kind not in ("num", "str", "word"):
            raise self.error(f"expected a value, found {value if value is not None else 'the end'}")
        self.pos += 1
        return value

    def comparison(self, name: str) -> Callable[[Mapping[str, Any]], bool]:
        kind, tok = self.peek()
        if kind == "op" and tok in _OPS:
            self.pos += 1
            right = self.value()
            return lambda v: compare(v.get(name), tok, right)
        negate = False
        if (kind, tok) == ("kw", "NOT"):
            self.pos += 1
            negate = True
            kind, tok = self.peek()
        if (kind, tok) == ("kw", "LIKE"):
            self.pos += 1
            pattern = re.compile(
                "^" + re.escape(str(self.value())).replace("%", ".*").replace("_", ".") + "$", re.IGNORECASE
            )
            return lambda v: v.get(name) is not None and bool(pattern.match(str(v.get(name)))) != negate
        if (kind, tok) == ("kw", "IN"):
            self.pos += 1
            self.take("op", "(")
            options = [self.value()]
            while self.peek() == ("op", ","):
                self.pos += 1
                options.append(self.value())
            self.take("op", ")")
            return lambda v: v.get(name) is not None and any(compare(v.get(name), "=", o) for o in options) != negate
        if (kind, tok) == ("kw", "IS") and not negate:
            self.pos += 1
            is_not = self.peek() == ("kw", "NOT")
            self.pos += is_not
            self.take("kw", "NULL")
            return lambda v: (v.get(name) is None) != is_not
        raise self.error(f"expected a comparison after {name!r}")


def parse_advanced(expression: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile an advanced filter expression into a predicate over a name -> value mapping."""
    return _Parser(expression).parse()
