"""Type checking of rule ASTs: numbers, text and conditions, with positioned errors."""

from __future__ import annotations

from collections.abc import Mapping

from usagehub.core.analytics import nodes as r


def check_types(root: r.Node, fields: Mapping[str, str], text: str) -> set[str]:
    """Check that ``root`` is a condition over known fields; return the field names it reads."""
    used: set[str] = set()

    def kind(node: r.Node) -> str:
        if isinstance(node, r.Num):
            return "number"
        if isinstance(node, r.Text):
            return "text"
        if isinstance(node, r.Field):
            if node.name not in fields:
                known = ", ".join(sorted(fields))
                raise r.RuleError(f"unknown feature {node.name!r} (known: {known})", node.pos, text)
            used.add(node.name)
            return fields[node.name]
        if isinstance(node, r.IsNull):
            kind(node.operand)
            return "bool"
        if isinstance(node, r.Unary):
            want = "bool" if node.op == "not" else "number"
            need(node.operand, want, f"{node.op!r} needs a {_name(want)}")
            return want
        assert isinstance(node, r.Binary)
        if node.op in ("and", "or"):
            need(node.left, "bool", f"{node.op!r} joins conditions")
            need(node.right, "bool", f"{node.op!r} joins conditions")
            return "bool"
        if node.op in ("+", "-", "*", "/"):
            need(node.left, "number", f"{node.op!r} needs numbers")
            need(node.right, "number", f"{node.op!r} needs numbers")
            return "number"
        left = kind(node.left)
        if left == "bool":
            raise r.RuleError(f"{node.op!r} compares values, not conditions", node.pos, text)
        need(node.right, left, f"{node.op!r} compares a {_name(left)} with a {_name(left)}")
        return "bool"

    def need(node: r.Node, want: str, message: str) -> None:
        if kind(node) != want:
            raise r.RuleError(message, node.pos, text)

    if kind(root) != "bool":
        raise r.RuleError("a rule must be a condition (e.g. evening_share >= 0.4)", root.pos, text)
    return used


def _name(kind: str) -> str:
    return {"bool": "condition"}.get(kind, kind)
