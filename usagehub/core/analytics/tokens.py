"""Tokens of the rule language, each with its character position."""

from __future__ import annotations

import re
from dataclasses import dataclass

from usagehub.core.analytics.nodes import RuleError

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?|\.\d+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<text>'(?:[^'\\]|\\.)*')
  | (?P<op><=|>=|==|!=|<>|[<>=()+\-*/%])
""", re.VERBOSE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """One token: kind (number, word, text, op, end), its text and 0-based position."""

    kind: str
    value: str
    pos: int


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` ending with an ``end`` token; an unknown character is a RuleError."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] == "'":
                raise RuleError("text literal is not closed", pos, text)
            raise RuleError(f"unexpected character {text[pos]!r}", pos, text)
        kind = match.lastgroup or ""
        if kind == "text":
            tokens.append(Token(kind=kind, value=re.sub(r"\\(.)", r"\1", match.group()[1:-1]), pos=pos))
        elif kind == "word":
            tokens.append(Token(kind=kind, value=match.group().lower() if match.group().lower() in _KW
                                else match.group(), pos=pos))
        elif kind != "space":
            tokens.append(Token(kind=kind, value=match.group(), pos=pos))
        pos = match.end()
    tokens.append(Token(kind="end", value="", pos=len(text)))
    return tokens


_KW = {"and", "or", "not", "is", "null"}
