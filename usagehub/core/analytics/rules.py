"""A small, safe rule language over features: parsed to an AST (never eval), typed, evaluated or compiled to SQL.

    rule    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "=" | "==" | "!=" | "<>") sum | "is" ["not"] "null")?
    sum     := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER ["%"] | 'text' | FIELD | "(" rule ")"

``20%`` is 0.2. Missing values are NULL and follow SQL's three-valued logic
(a comparison with NULL is unknown; only a true rule makes a member), so the
Python evaluator and the SQL compiled from the same AST agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from usagehub.core.analytics.nodes import Binary, Field, IsNull, Node, Num, Rule, RuleError, Text, Unary
from usagehub.core.analytics.tokens import Token, tokenize
from usagehub.core.analytics.typing_rules import check_types

Value = Decimal | str | None
Truth = bool | None
_COMPARE = {"<", "<=", ">", ">=", "=", "==", "!=", "<>"}
MAX_RULE_LENGTH = 2000
_MAX_DEPTH = 50
__all__ = ["Rule", "RuleError", "evaluate", "parse_rule", "to_sql"]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i, self.depth = text, tokenize(text), 0, 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self, *values: str) -> Token | None:
        tok = self.peek()
        if tok.kind in ("op", "word") and tok.value in values:
            self.i += 1
            return tok
        return None

    def expect(self, value: str) -> Token:
        tok = self.take(value)
        if tok is None:
            raise RuleError(f"expected {value!r}", self.peek().pos, self.text)
        return tok

    def rule(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise RuleError("rule nests too deeply", self.peek().pos, self.text)
        node = self.binary(0)
        self.depth -= 1
        return node

    _LEVELS: tuple[tuple[str, ...], ...] = (("or",), ("and",))

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.negation()
        node = self.binary(level + 1)
        while (tok := self.take(*self._LEVELS[level])) is not None:
            node = Binary(pos=tok.pos, op=tok.value, left=node, right=self.binary(level + 1))
        return node

    def negation(self) -> Node:
        tok = self.take("not")
        return Unary(pos=tok.pos, op="not", operand=self.negation()) if tok else self.compare()

    def compare(self) -> Node:
        left = self.arith(("+", "-"))
        if (tok := self.take(*_COMPARE)) is not None:
            op = {"==": "=", "<>": "!="}.get(tok.value, tok.value)
            return Binary(pos=tok.pos, op=op, left=left, right=self.arith(("+", "-")))
        if (tok := self.take("is")) is not None:
            negated = self.take("not") is not None
            self.expect("null")
            return IsNull(pos=tok.pos, operand=left, negated=negated)
        return left

    def arith(self, ops: tuple[str, ...]) -> Node:
        node = self.arith(("*", "/")) if ops == ("+", "-") else self.unary()
        while (tok := self.take(*ops)) is not None:
            right = self.arith(("*", "/")) if ops == ("+", "-") else self.unary()
            node = Binary(pos=tok.pos, op=tok.value, left=node, right=right)
        return node

    def unary(self) -> Node:
        if (tok := self.take("-")) is not None:
            return Unary(pos=tok.pos, op="-", operand=self.unary())
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        if tok.kind == "number":
            self.i += 1
            try:
                value = Decimal(tok.value)
            except InvalidOperation as err:
                raise RuleError(f"bad number {tok.value!r}", tok.pos, self.text) from err
            return Num(pos=tok.pos, value=value / 100 if self.take("%") else value)
        if tok.kind == "text":
            self.i += 1
            return Text(pos=tok.pos, value=tok.value)
        if tok.kind == "word" and tok.value not in _KEYWORDS:
            self.i += 1
            return Field(pos=tok.pos, name=tok.value)
        if self.take("("):
            node = self.rule()
            self.expect(")")
            return node
        what = "end of rule" if tok.kind == "end" else repr(tok.value)
        raise RuleError(f"expected a number, 'text', a feature name or '(' but found {what}", tok.pos, self.text)


_KEYWORDS = {"and", "or", "not", "is", "null"}


def parse_rule(text: str, fields: Mapping[str, str]) -> Rule:
    """Parse and type-check ``text`` against ``fields`` (name -> "number" | "text")."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(f"rule longer than {MAX_RULE_LENGTH} characters", MAX_RULE_LENGTH, text)
    parser = _Parser(text)
    root = parser.rule()
    if parser.peek().kind != "end":
        raise RuleError(f"unexpected {parser.peek().value!r}", parser.peek().pos, text)
    used = check_types(root, fields, text)
    return Rule(text=text, root=root, fields=tuple(sorted(used)))


def _arith(op: str, a: Value, b: Value) -> Value:
    if not isinstance(a, Decimal) or not isinstance(b, Decimal):
        return None
    if op == "/":
        return None if b == 0 else a / b  # SQL: a / NULLIF(b, 0)
    return a + b if op == "+" else a - b if op == "-" else a * b


def _compare(op: str, a: Value, b: Value) -> Truth:
    if a is None or b is None:
        return None
    x, y = (a, b) if isinstance(a, Decimal) and isinstance(b, Decimal) else (str(a), str(b))
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "=": x == y, "!=": x != y}[op]  # type: ignore[operator]


def _value(node: Node, row: Mapping[str, Value]) -> Value:
    if isinstance(node, Num | Text):
        return node.value
    if isinstance(node, Field):
        return row.get(node.name)
    if isinstance(node, Unary):
        v = _value(node.operand, row)
        return -v if isinstance(v, Decimal) else None
    assert isinstance(node, Binary)
    return _arith(node.op, _value(node.left, row), _value(node.right, row))


def _truth(node: Node, row: Mapping[str, Value]) -> Truth:
    if isinstance(node, IsNull):
        return (_value(node.operand, row) is None) != node.negated
    if isinstance(node, Unary):
        t = _truth(node.operand, row)
        return None if t is None else not t
    assert isinstance(node, Binary)
    if node.op in ("and", "or"):
        left, right = _truth(node.left, row), _truth(node.right, row)
        decisive = node.op == "or"  # True decides "or", False decides "and"
        if decisive in (left, right):
            return decisive
        return None if None in (left, right) else not decisive
    return _compare(node.op, _value(node.left, row), _value(node.right, row))


def evaluate(rule: Rule, row: Mapping[str, Value]) -> Truth:
    """The rule's truth for one row, in SQL's three-valued logic (None: unknown)."""
    return _truth(rule.root, row)


def to_sql(rule: Rule, columns: Mapping[str, str]) -> tuple[str, list[Value]]:
    """A SQL boolean expression with bound parameters; field names map to trusted column expressions."""
    params: list[Value] = []

    def emit(node: Node) -> str:
        if isinstance(node, Num):
            params.append(node.value)
            return "%s::numeric"
        if isinstance(node, Text):
            params.append(node.value)
            return "%s::text"
        if isinstance(node, Field):
            return columns[node.name]
        if isinstance(node, IsNull):
            return f"({emit(node.operand)} IS {'NOT ' if node.negated else ''}NULL)"
        if isinstance(node, Unary):
            return f"({'NOT' if node.op == 'not' else '-'} {emit(node.operand)})"
        assert isinstance(node, Binary)
        left, right = emit(node.left), emit(node.right)
        if node.op == "/":
            return f"({left} / NULLIF({right}, 0))"
        op = {"and": "AND", "or": "OR", "!=": "<>"}.get(node.op, node.op)
        return f"({left} {op} {right})"

    return emit(rule.root), params
