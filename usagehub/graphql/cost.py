"""What one GraphQL document may ask: tokens, depth, aliases, fields and a cost with list sizes.

Checked before execution, on the parsed document (cached per text with the
other validation): depth counts introspection too; fragments are expanded with
a budget, so a document that multiplies through fragments stops at the field
limit instead of being walked. Cost: a field costs 1 plus its children times
the number of items it may return: ``first`` (a literal, else the field's
default, else ``MAX_PAGE`` for a variable), ``SERIES_POINTS`` for a series
whose range is not literal, ``LIST_GUESS`` for other lists.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    get_named_type,
)

from usagehub.graphql.pagination import MAX_PAGE

LIST_GUESS = 10
SERIES_POINTS = 1000
_PER_DAY = {"QUARTER": 96, "HOUR": 24, "DAY": 1}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one request; ``max_body_bytes`` and ``max_tokens`` apply before parsing."""

    max_body_bytes: int = 64 * 1024
    max_tokens: int = 2_000
    max_depth: int = 12
    max_aliases: int = 50
    max_fields: int = 1_000
    max_cost: int = 50_000


class _TooBig(Exception):
    pass


class _Walk:
    """One operation measured: depth, aliases, fields (fragments expanded) and cost."""

    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode], limits: Limits) -> None:
        self.schema, self.fragments, self.limits = schema, fragments, limits
        self.depth = self.aliases = self.fields = 0

    def selections(self, node: SelectionSetNode | None, parent: GraphQLNamedType | None, depth: int,
                   seen: tuple[str, ...] = ()) -> int:
        """The cost of a selection set under ``parent`` at ``depth``."""
        if node is None:
            return 0
        total = 0
        for sel in node.selections:
            if isinstance(sel, FieldNode):
                total += self.field(sel, parent, depth)
            elif isinstance(sel, InlineFragmentNode):
                cond = self.schema.get_type(sel.type_condition.name.value) if sel.type_condition else parent
                total += self.selections(sel.selection_set, cond, depth, seen)
            elif isinstance(sel, FragmentSpreadNode):
                name = sel.name.value
                frag = self.fragments.get(name)
                if frag is None or name in seen:  # unknown fragments and cycles are other rules' errors
                    continue
                cond = self.schema.get_type(frag.type_condition.name.value)
                total += self.selections(frag.selection_set, cond, depth, (*seen, name))
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType | None, depth: int) -> int:
        self.fields += 1
        self.aliases += node.alias is not None
        self.depth = max(self.depth, depth)
        if self.fields > self.limits.max_fields or self.depth > self.limits.max_depth:
            raise _TooBig
        definition = parent.fields.get(node.name.value) if isinstance(parent, GraphQLObjectType) else None
        if definition is None:  # __typename, introspection, unknown: children still count
            child_type = None
            if node.name.value in ("__schema", "__type"):
                child_type = self.schema.get_type("__Schema" if node.name.value == "__schema" else "__Type")
            return 1 + LIST_GUESS * self.selections(node.selection_set, child_type, depth + 1)
        children = self.selections(node.selection_set, get_named_type(definition.type), depth + 1)
        return 1 + _items(node, definition) * children


def _is_list(t: Any) -> bool:
    while isinstance(t, GraphQLNonNull):
        t = t.of_type
    return isinstance(t, GraphQLList)


def _literal(node: FieldNode, name: str) -> Any:
    """An argument's literal text; None when it is a variable; ``...`` when absent."""
    for arg in node.arguments or ():
        if arg.name.value == name:
            return None if isinstance(arg.value, VariableNode) else getattr(arg.value, "value", None)
    return ...


def _items(node: FieldNode, definition: Any) -> int:
    """How many items a field may return (1 for a single object)."""
    if "first" in definition.args:
        first = _literal(node, "first")
        if first is ...:
            default = definition.args["first"].default_value
            return int(default) if isinstance(default, int) else MAX_PAGE
        return max(1, min(int(first), MAX_PAGE)) if isinstance(first, str) and first.isdigit() else MAX_PAGE
    if "since" in definition.args and "until" in definition.args and _is_list(definition.type):
        return _series_points(node)
    if node.name.value == "edges":  # a connection's page: its field's `first` counted it already
        return 1
    return LIST_GUESS if _is_list(definition.type) else 1


def _series_points(node: FieldNode) -> int:
    since, until, bucket = _literal(node, "since"), _literal(node, "until"), _literal(node, "bucket")
    try:
        days = (date.fromisoformat(str(until)[:10]) - date.fromisoformat(str(since)[:10])).days
    except ValueError:
        return SERIES_POINTS
    per_day = _PER_DAY.get(str(bucket) if bucket is not ... else "DAY", 1)
    return max(1, min(days * per_day, 100 * SERIES_POINTS))


def _error(code: str, message: str, node: Any) -> GraphQLError:
    return GraphQLError(message, node, extensions={"code": code})


@functools.cache
def cost_rule(limits: Limits) -> type[ValidationRule]:
    """The validation rule enforcing ``limits`` (one class per limits, so ValidationCache keeps hitting)."""

    class CostRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.fragments = {d.name.value: d for d in context.document.definitions
                              if isinstance(d, FragmentDefinitionNode)}

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            schema = self.context.schema
            root = {OperationType.QUERY: schema.query_type, OperationType.MUTATION: schema.mutation_type,
                    OperationType.SUBSCRIPTION: schema.subscription_type}[node.operation]
            walk = _Walk(schema, self.fragments, limits)
            name = node.name.value if node.name else "anonymous"
            try:
                cost = walk.selections(node.selection_set, root, 1)
            except _TooBig:
                if walk.depth > limits.max_depth:
                    self.report_error(_error("QUERY_TOO_DEEP", f"'{name}' exceeds maximum operation depth "
                                                               f"of {limits.max_depth}", node))
                else:
                    self.report_error(_error("QUERY_TOO_LARGE", f"'{name}' selects more than {limits.max_fields} "
                                                                "fields (fragments expanded)", node))
                return
            if walk.aliases > limits.max_aliases:
                self.report_error(_error("QUERY_TOO_LARGE", f"'{name}' uses {walk.aliases} aliases; the limit is "
                                                            f"{limits.max_aliases}", node))
            elif cost > limits.max_cost:
                self.report_error(_error("QUERY_TOO_COSTLY", f"'{name}' may cost {cost} (fields times list sizes: "
                                                             f"ask for smaller pages or ranges); the limit is "
                                                             f"{limits.max_cost}", node))

    return CostRule
