"""The subset of the Logging query language the emulator's ``entries.list`` understands.

Grammar (a real parser: anything else is a 400 naming what could not be read,
never a filter that silently matches everything)::

    filter     := and_expr
    and_expr   := or_expr (["AND"] or_expr)*      # juxtaposition is AND, as in the real language
    or_expr    := unary ("OR" unary)*             # OR binds tighter than AND, as in the real language
    unary      := ("NOT" | "-") unary | "(" and_expr ")" | comparison
    comparison := field OP value
    field      := NAME ("." (NAME | "QUOTED"))*     # jsonPayload."@type", or jsonPayload.@type
    OP         := "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
    value      := "QUOTED" | BAREWORD

Precedence is the Logging query language's: "NOT ..., followed by OR and AND in that order", so
``a OR NOT b AND NOT c OR d`` is ``(a OR (NOT b)) AND ((NOT c) OR d)``.
``=`` is equality, ``:`` is "has" (substring; on an object or a list, of any value nested in it, as
``jsonPayload:"text"`` restricts a text search to the payload; ``field:*``, a bare ``*``, tests that the
field is present), the order operators compare
timestamps as times (a date or a time without an offset is UTC), severities by
rank, numbers as numbers, anything else as text; string comparisons ignore case,
as in the real language. A missing field satisfies only ``!=``. Not supported
(400): global restrictions (a value without a field), functions
(``SEARCH``, ``sample``...), regular expressions (``=~``), ``NOT`` after ``-``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

Entry = Mapping[str, Any]
Predicate = Callable[[Entry], bool]

SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
TIME_FIELDS = frozenset({"timestamp", "receiveTimestamp"})
OPERATORS = ("!=", "<=", ">=", "=~", "!~", "=", "<", ">", ":")
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<quoted>"(?:[^"\\]|\\.)*")
  | (?P<op>!=|<=|>=|=~|!~|=|<|>|:)
  | (?P<paren>[()])
  | (?P<dot>\.)
  | (?P<word>[^\s()"=<>!:.]+(?:\.[^\s()"=<>!:.]+)*)
""", re.VERBOSE)
_NAME = re.compile(r"[@A-Za-z_][@A-Za-z0-9_\-]*")


class FilterError(ValueError):
    """The filter (or a part of it) cannot be read; the message quotes the part and its position."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    out, position = [], 0
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None:
            raise FilterError(f"cannot read {text[position:position + 20]!r} at character {position + 1} of the filter")
        kind = found.lastgroup or ""
        if kind != "space":
            out.append(_Token(kind, found.group(), position))
        position = found.end()
    return out


def parse(text: str) -> Predicate:
    """A predicate over LogEntry JSON objects; an empty filter matches every entry (as the API's)."""
    if len(text) > 20_000:
        raise FilterError("the filter is longer than 20,000 characters")
    tokens = _tokens(text)
    if not tokens:
        return lambda entry: True
    parser = _Parser(tokens, text)
    predicate = parser.and_expr()
    if parser.index < len(tokens):
        token = tokens[parser.index]
        raise FilterError(f"unexpected {token.text!r} at character {token.position + 1} of the filter")
    return predicate


class _Parser:
    def __init__(self, tokens: list[_Token], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("the filter ends where a comparison, a value or ')' was expected")
        self.index += 1
        return token

    def and_expr(self) -> Predicate:
        terms = [self.or_expr()]
        while True:
            token = self.peek()
            if token is None or (token.kind == "paren" and token.text == ")"):
                break
            if self._keyword("AND"):
                self.index += 1
            terms.append(self.or_expr())
        return terms[0] if len(terms) == 1 else (lambda entry: all(term(entry) for term in terms))

    def or_expr(self) -> Predicate:
        terms = [self.unary()]
        while self._keyword("OR"):
            self.index += 1
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else (lambda entry: any(term(entry) for term in terms))

    def unary(self) -> Predicate:
        token = self.take()
        if token.kind == "word" and token.text in ("NOT", "-"):
            inner = self.unary()
            return lambda entry: not inner(entry)
        if token.kind == "word" and token.text.startswith("-") and len(token.text) > 1:
            self.tokens[self.index - 1] = _Token("word", token.text[1:], token.position + 1)
            self.index -= 1
            inner = self.unary()
            return lambda entry: not inner(entry)
        if token.kind == "paren" and token.text == "(":
            inner = self.and_expr()
            closing = self.take()
            if closing.text != ")":
                raise FilterError(f"expected ')' at character {closing.position + 1}, found {closing.text!r}")
            return inner
        self.index -= 1
        return self.comparison()

    def comparison(self) -> Predicate:
        start = self.peek()
        path = self.field()
        operator = self.peek() or _Token("end", "", len(self.text))
        self.index += 1
        if operator.kind != "op":
            raise FilterError(
                f"{'.'.join(path)!r} at character {start.position + 1 if start else 0} is not followed by a comparison "
                f"operator (=, !=, <, <=, >, >=, :): global restrictions (a value without a field) are not "
                f"supported by the emulator")
        if operator.text in ("=~", "!~"):
            raise FilterError(f"regular expressions ({operator.text} at character {operator.position + 1}) are not "
                              "supported by the emulator")
        value_token = self.take()
        if operator.text == ":" and value_token.kind == "word" and value_token.text == "*":
            return _present(path)
        if value_token.kind == "quoted":
            value = _unquote(value_token.text)
        elif value_token.kind == "word" and value_token.text not in ("AND", "OR", "NOT"):
            value = value_token.text
        else:
            raise FilterError(f"expected a value after {operator.text!r} at character {value_token.position + 1}, "
                              f"found {value_token.text!r}")
        return _compare(path, operator.text, value)

    def field(self) -> list[str]:
        token = self.take()
        if token.kind not in ("word", "quoted"):
            raise FilterError(f"expected a field name at character {token.position + 1}, found {token.text!r}")
        parts = self._segments(token)
        while (following := self.peek()) is not None and following.kind == "dot":
            self.index += 1
            segment = self.take()
            if segment.kind not in ("word", "quoted"):
                raise FilterError(f"expected a field name after '.' at character {segment.position + 1}")
            parts += self._segments(segment)
        if parts[0] in ("SEARCH", "sample", "log_id", "source"):
            raise FilterError(f"function {parts[0]}() is not supported by the emulator")
        return parts

    @staticmethod
    def _segments(token: _Token) -> list[str]:
        """A quoted segment as is; a bare one split on dots, each a plain name."""
        if token.kind == "quoted":
            return [_unquote(token.text)]
        parts = token.text.split(".")
        for part in parts:
            if not _NAME.fullmatch(part):
                raise FilterError(f"{part!r} (at character {token.position + 1}) is not a field name: quote a name "
                                  'with special characters, e.g. jsonPayload."my-field"')
        return parts

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.text == word


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _lookup(entry: Entry, path: list[str]) -> Any:
    value: Any = entry
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _time(text: str) -> datetime | None:
    """An RFC 3339 time (a date alone, or a time without an offset, is read as UTC), or None."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _ordered(path: list[str], left: Any, right: str) -> tuple[Any, Any] | None:
    """Comparable forms of the entry's value and the filter's, or None when they cannot be ordered."""
    if path[-1] in TIME_FIELDS or path == ["timestamp"]:
        a, b = _time(str(left)), _time(right)
        if a is None or b is None:
            raise FilterError(f"{right!r} is not an RFC 3339 time (compared with {'.'.join(path)})")
        return a, b
    if path == ["severity"]:
        if right.upper() not in SEVERITIES:
            raise FilterError(f"{right!r} is not a severity ({', '.join(SEVERITIES)})")
        return SEVERITIES.index(str(left).upper()) if str(left).upper() in SEVERITIES else 0, SEVERITIES.index(right.upper())
    try:
        return float(left), float(right)
    except (TypeError, ValueError):
        return str(left).casefold(), right.casefold()


def _leaves(value: Any) -> list[Any]:
    """The scalar values in ``value`` (itself when a scalar; an object's values and a list's items, nested)."""
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _present(path: list[str]) -> Predicate:
    """``field:*``: the entry has the field, whatever its value."""
    return lambda entry: _lookup(entry, path) is not None


def _compare(path: list[str], operator: str, value: str) -> Predicate:
    if operator in ("<", "<=", ">", ">=") or path == ["severity"] or path[-1] in TIME_FIELDS:
        _ordered(path, "2000-01-01T00:00:00Z" if path[-1] in TIME_FIELDS else ("DEFAULT" if path == ["severity"] else 0),
                 value)  # validate the value now: a bad time or severity is a 400, not "no match"

    def test(entry: Entry) -> bool:
        actual = _lookup(entry, path)
        if operator == ":" and actual is not None:
            return any(value.lower() in str(leaf).lower() for leaf in _leaves(actual))
        if actual is None or isinstance(actual, (Mapping, list)):
            return operator == "!="
        if operator in ("=", "!="):
            if path == ["severity"]:
                equal = str(actual).upper() == value.upper()
            elif path[-1] in TIME_FIELDS:
                left, right = _ordered(path, actual, value) or (None, None)
                equal = left == right
            elif isinstance(actual, bool):
                equal = str(actual).lower() == value.lower()
            else:
                equal = str(actual).casefold() == value.casefold()
            return equal if operator == "=" else not equal
        ordered = _ordered(path, actual, value)
        if ordered is None:
            return False
        left, right = ordered
        if type(left) is not type(right):
            return False
        return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[operator]

    return test
