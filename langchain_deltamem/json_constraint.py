"""Constrained decoding of forced tool calls: a JSON-schema grammar over the token vocabulary.

`JsonSchemaConstraint` is a logits processor for `generation.stream_generate`; the chat model
uses it whenever ``tool_choice`` requires a call (see `tool_calling` for the call format).

The constraint accepts exactly ``<tool_call>{"name": "<allowed name>", "arguments": <JSON>}
</tool_call>`` (no space before ``</tool_call>``; with ``multiline=True``, the default when
the chat template renders tools, Qwen3's layout ``<tool_call>\\n{...}\\n</tool_call>``)
followed by the end token, where ``<JSON>`` is written with ``json.dumps``' default
separators (``", "`` and ``": "``, no other whitespace) and is
valid for that tool's parameters schema under this subset of JSON schema:

* ``object`` with ``properties``: properties appear in schema order; every ``required`` one
  appears, optional ones may be skipped; no other keys (``"properties": {}`` admits only
  ``{}``). An object without ``properties`` (or with an empty one and an explicit
  ``additionalProperties``) is free-form: string keys, values of the ``additionalProperties``
  schema or any JSON.
* ``string`` (``minLength``/``maxLength``; escapes allowed), ``integer`` (no fraction or
  exponent), ``number``, ``boolean``, ``null``, ``array`` (``items``,
  ``minItems``/``maxItems``), ``enum``/``const`` (any JSON values), ``anyOf``/``oneOf`` and type
  lists (``["string", "null"]``), single-element ``allOf``, local ``$ref`` to ``$defs`` /
  ``definitions`` (recursive references are rejected), and a missing type (any JSON value,
  nested at most three containers deep).
* ``minimum >= 0`` forbids a leading minus sign; other numeric bounds, ``pattern`` and
  ``format`` are not enforced.
* Termination: strings are capped at ``max_string_length`` characters (``maxLength`` if
  smaller), arrays at ``max_array_items`` items, free-form objects at ``max_object_keys`` keys,
  integers at 15 digits, fractions at 15 digits and exponents at 2 digits.

The validator is a character-level nondeterministic push-down automaton: a state is a small set
of immutable stacks of parse frames (``anyOf`` branches and enum values that share a prefix
are followed in parallel), and feeding one character maps each stack to its successors.
"""

from __future__ import annotations

import bisect
import codecs
import json
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .prompts import supports_tools
from .tool_calling import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, function_of

__all__ = ["DEFAULT_TOP_K", "JsonSchemaConstraint"]

DEFAULT_TOP_K = 200
"""Candidates `JsonSchemaConstraint` tests before falling back to a scan of the vocabulary."""

# --------------------------------------------------------------------------------------
# Constrained decoding: schema → grammar nodes
# --------------------------------------------------------------------------------------

_MAX_INT_DIGITS = 15
_MAX_FRACTION_DIGITS = 15
_MAX_EXPONENT_DIGITS = 2
_ANY_MAX_DEPTH = 3
_MAX_KEY_LENGTH = 64
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
# Characters some completion may need besides literal text (see _check_alphabet).
_GRAMMAR_CHARS = frozenset('{}[]",: -0123456789a')


class _Lit:
    """One of a set of fixed strings (enum values, ``true``, literal glue text)."""

    __slots__ = ("texts",)

    def __init__(self, texts: Sequence[str]) -> None:
        texts = tuple(dict.fromkeys(texts))
        if not texts or not all(texts):
            raise ValueError("a literal needs at least one non-empty text")
        self.texts = texts


class _Str:
    __slots__ = ("max_len", "min_len")

    def __init__(self, min_len: int, max_len: int) -> None:
        self.min_len, self.max_len = min_len, max_len


class _Num:
    __slots__ = ("integer", "signed")

    def __init__(self, integer: bool, signed: bool) -> None:
        self.integer, self.signed = integer, signed


class _Obj:
    """Object with ``props`` (key, node, required) in order, or free-form (``free`` node)."""

    __slots__ = ("_cands", "free", "key_node", "max_keys", "props")

    def __init__(self) -> None:
        self.props: tuple[tuple[str, Any, bool], ...] = ()
        self.free: Any = None
        self.key_node: _Str | None = None
        self.max_keys = 0
        self._cands: dict[tuple[int, bool], tuple[tuple[str, int], ...]] = {}

    def key_candidates(self, idx: int, first: bool) -> tuple[tuple[str, int], ...]:
        """``(text, j)`` for each property ``j`` that may come next (after ``idx``)."""
        cached = self._cands.get((idx, first))
        if cached is None:
            prefix = "" if first else ", "
            out = []
            for j in range(idx, len(self.props)):
                key, _, required = self.props[j]
                out.append((prefix + json.dumps(key, ensure_ascii=False) + ": ", j))
                if required:
                    break
            cached = self._cands[(idx, first)] = tuple(out)
        return cached

    def may_close(self, idx: int) -> bool:
        return not any(required for _, _, required in self.props[idx:])


class _Arr:
    __slots__ = ("item", "max_items", "min_items")

    def __init__(self, item: Any, min_items: int, max_items: int) -> None:
        self.item, self.min_items, self.max_items = item, min_items, max_items


class _Union:
    __slots__ = ("alts",)

    def __init__(self, alts: Sequence[Any]) -> None:
        if not alts:
            raise ValueError("an anyOf/oneOf/type list needs at least one alternative")
        self.alts = tuple(alts)


class _Seq:
    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = tuple(parts)


class _Compiler:
    """Compile a tool's JSON schema into grammar nodes (see the module docstring)."""

    def __init__(
        self, root: Mapping[str, Any], max_string: int, max_items: int, max_keys: int
    ) -> None:
        self.root = root
        self.max_string, self.max_items, self.max_keys = max_string, max_items, max_keys
        self.active_refs: set[str] = set()
        self.any_nodes: dict[int, Any] = {}
        self.key_node = _Str(0, min(_MAX_KEY_LENGTH, max_string))

    def compile(self, schema: Any, depth: int = 0) -> Any:
        if schema is True or schema is None or (isinstance(schema, Mapping) and not schema):
            return self.any_value(depth)
        if not isinstance(schema, Mapping):
            raise ValueError(f"unsupported JSON schema {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], depth)
        if "const" in schema:
            return _Lit([_dump(schema["const"])])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"enum must be a non-empty list, got {values!r}")
            return _Lit([_dump(v) for v in values])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return _Union([self.compile(alt, depth) for alt in schema[key]])
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise ValueError("allOf is only supported with a single schema")
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            return self.compile({**parts[0], **merged}, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise ValueError("an empty type list admits no value")
            return _Union([self.compile({**schema, "type": k}, depth) for k in kind])
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                return self.any_value(depth)
        if kind == "string":
            max_len = schema.get("maxLength", self.max_string)
            max_len = min(max_len, self.max_string)
            min_len = min(schema.get("minLength", 0), max_len)
            return _Str(min_len, max_len)
        if kind in ("integer", "number"):
            minimum = schema.get("minimum", schema.get("exclusiveMinimum"))
            signed = not (isinstance(minimum, int | float) and minimum >= 0)
            return _Num(kind == "integer", signed)
        if kind == "boolean":
            return _Lit(["true", "false"])
        if kind == "null":
            return _Lit(["null"])
        if kind == "array":
            item = self.compile(schema.get("items", {}), depth + 1)
            min_items = int(schema.get("minItems", 0))
            max_items = int(schema.get("maxItems", max(self.max_items, min_items)))
            if min_items > max_items:
                raise ValueError(f"minItems {min_items} > maxItems {max_items}")
            return _Arr(item, min_items, max_items)
        if kind == "object":
            return self.object(schema, depth)
        raise ValueError(f"unsupported JSON schema type {kind!r}")

    def object(self, schema: Mapping[str, Any], depth: int) -> _Obj:
        node = _Obj()
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        # Listed properties close the object (even none: a tool without arguments gets
        # ``{}``, not invented keys); only an object without them, or with an explicit
        # ``additionalProperties`` and no listed ones, is free-form.
        if properties or ("properties" in schema and extra in (None, False)):
            required = set(schema.get("required", []))
            node.props = tuple(
                (key, self.compile(sub, depth + 1), key in required)
                for key, sub in properties.items()
            )
        else:
            extra = True if extra is None else extra
            node.free = self.compile(extra if isinstance(extra, Mapping) else {}, depth + 1)
            node.key_node = self.key_node
            node.max_keys = 0 if extra is False else self.max_keys
        return node

    def any_value(self, depth: int) -> Any:
        """Any JSON value; containers only up to `_ANY_MAX_DEPTH` levels, so it terminates."""
        node = self.any_nodes.get(depth)
        if node is None:
            alts: list[Any] = [
                _Str(0, self.max_string),
                _Num(False, True),
                _Lit(["true", "false", "null"]),
            ]
            if depth < _ANY_MAX_DEPTH:
                inner = self.any_value(depth + 1)
                alts.append(_Arr(inner, 0, self.max_items))
                obj = _Obj()
                obj.free, obj.key_node, obj.max_keys = inner, self.key_node, self.max_keys
                alts.append(obj)
            node = self.any_nodes[depth] = _Union(alts)
        return node

    def ref(self, ref: Any, depth: int) -> Any:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise ValueError(f"only local $ref values are supported, got {ref!r}")
        if ref in self.active_refs:
            raise ValueError(f"recursive $ref {ref!r} is not supported by constrained decoding")
        target: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise ValueError(f"unresolvable $ref {ref!r}")
            target = target[part]
        self.active_refs.add(ref)
        try:
            return self.compile(target, depth)
        finally:
            self.active_refs.discard(ref)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _literal_chars(node: Any, seen: set[int] | None = None) -> set[str]:
    """Every character of the fixed texts (literals, property names) reachable from ``node``."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return set()
    seen.add(id(node))
    if isinstance(node, _Lit):
        return set("".join(node.texts))
    chars: set[str] = set()
    children: list[Any] = []
    if isinstance(node, _Obj):
        chars.update("".join(_dump(key) for key, _, _ in node.props))
        children = [sub for _, sub, _ in node.props] + [node.free]
    elif isinstance(node, _Arr):
        children = [node.item]
    elif isinstance(node, _Union):
        children = list(node.alts)
    elif isinstance(node, _Seq):
        children = list(node.parts)
    for child in children:
        chars |= _literal_chars(child, seen)
    return chars


# --------------------------------------------------------------------------------------
# Constrained decoding: the character-level automaton
# --------------------------------------------------------------------------------------
# A stack is None (the whole call is complete) or ``(frame, parent_stack)``; frames are
# tuples whose first item is the kind. All of it is immutable and hashable, so a state is a
# tuple of distinct stacks and branching costs nothing.
#   LIT: (LIT, texts, pos)             matching one of ``texts``; ``pos`` characters matched
#   STR: (STR, node, length, esc)      esc -1 before '"', 0 plain, 1 after '\', 2-5 in \uXXXX
#   NUM: (NUM, node, phase, digits)    phases below
#   OBJ: (OBJ, node, phase, idx, count, cands, pos)
#   ARR: (ARR, node, phase, count)
#   SEQ: (SEQ, node, index)            waiting for part ``index``

_LIT, _STR, _NUM, _OBJ, _ARR, _SEQ = range(6)

# number phases; the "complete" ones may end the number before any character
_N_START, _N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(9)
_N_COMPLETE = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})

# object phases
_O_OPEN, _O_NEXT, _O_MATCH, _O_VALUE, _O_KEY = range(5)
# pseudo property indices used in _O_MATCH for free-form objects
_FREE_KEY, _FREE_COLON = -1, -2

# array phases
_A_OPEN, _A_FIRST, _A_AFTER, _A_COMMA, _A_ITEM = range(5)


def _push(node: Any, parent: Any) -> list[Any]:
    """Stacks that start parsing ``node`` on top of ``parent``."""
    if isinstance(node, _Lit):
        return [((_LIT, node.texts, 0), parent)]
    if isinstance(node, _Str):
        return [((_STR, node, 0, -1), parent)]
    if isinstance(node, _Num):
        return [((_NUM, node, _N_START, 0), parent)]
    if isinstance(node, _Obj):
        return [((_OBJ, node, _O_OPEN, 0, 0, (), 0), parent)]
    if isinstance(node, _Arr):
        return [((_ARR, node, _A_OPEN, 0), parent)]
    if isinstance(node, _Union):
        return [s for alt in node.alts for s in _push(alt, parent)]
    if isinstance(node, _Seq):
        return _push(node.parts[0], ((_SEQ, node, 0), parent))
    raise TypeError(f"not a grammar node: {node!r}")


def _complete(stack: Any) -> list[Any]:
    """Stacks after the child on top of ``stack`` finished its value."""
    if stack is None:
        return [None]
    frame, parent = stack
    kind = frame[0]
    if kind == _SEQ:
        node, index = frame[1], frame[2] + 1
        if index < len(node.parts):
            return _push(node.parts[index], ((_SEQ, node, index), parent))
        return _complete(parent)
    if kind == _OBJ:
        _, node, phase, idx, count, _, _ = frame
        if phase == _O_KEY:  # free-form key done: expect ": "
            return [((_OBJ, node, _O_MATCH, idx, count, ((": ", _FREE_COLON),), 0), parent)]
        return [((_OBJ, node, _O_NEXT, idx, count, (), 0), parent)]
    if kind == _ARR:
        return [((_ARR, frame[1], _A_AFTER, frame[3]), parent)]
    raise AssertionError(f"frame kind {kind} has no children")


def _feed(stack: Any, ch: str) -> list[Any]:
    """All stacks reachable from ``stack`` by consuming the character ``ch``."""
    if stack is None:
        return []
    frame, parent = stack
    kind = frame[0]
    if kind == _LIT:
        texts, pos = frame[1], frame[2]
        out: list[Any] = []
        rest = []
        for text in texts:
            if text[pos] == ch:
                if len(text) == pos + 1:
                    out.extend(_complete(parent))
                else:
                    rest.append(text)
        if rest:
            out.append(((_LIT, tuple(rest), pos + 1), parent))
        return out
    if kind == _STR:
        return _feed_string(frame, parent, ch)
    if kind == _NUM:
        return _feed_number(frame, parent, ch)
    if kind == _OBJ:
        return _feed_object(frame, parent, ch)
    if kind == _ARR:
        return _feed_array(frame, parent, ch)
    raise AssertionError(f"frame kind {kind} cannot be on top")


def _feed_string(frame: tuple, parent: Any, ch: str) -> list[Any]:
    _, node, length, esc = frame
    if esc == 0:
        if ch == '"':
            return _complete(parent) if length >= node.min_len else []
        if length >= node.max_len or ch < " ":
            return []
        if ch == "\\":
            return [((_STR, node, length, 1), parent)]
        return [((_STR, node, length + 1, 0), parent)]
    if esc == -1:
        return [((_STR, node, 0, 0), parent)] if ch == '"' else []
    if esc == 1:
        if ch in _SIMPLE_ESCAPES:
            return [((_STR, node, length + 1, 0), parent)]
        return [((_STR, node, length, 2), parent)] if ch == "u" else []
    if ch not in _HEX:
        return []
    if esc == 5:
        return [((_STR, node, length + 1, 0), parent)]
    return [((_STR, node, length, esc + 1), parent)]


def _feed_number(frame: tuple, parent: Any, ch: str) -> list[Any]:
    _, node, phase, digits = frame
    out: list[Any] = []
    new: tuple[int, int] | None = None
    is_digit = ch in _DIGITS
    if phase in (_N_START, _N_MINUS):
        if ch == "-" and phase == _N_START and node.signed:
            new = (_N_MINUS, 0)
        elif ch == "0":
            new = (_N_ZERO, 0)
        elif is_digit:
            new = (_N_INT, 1)
    elif phase in (_N_ZERO, _N_INT):
        if is_digit and phase == _N_INT and digits < _MAX_INT_DIGITS:
            new = (_N_INT, digits + 1)
        elif ch == "." and not node.integer:
            new = (_N_DOT, 0)
        elif ch in "eE" and not node.integer:
            new = (_N_E, 0)
    elif phase in (_N_DOT, _N_FRAC):
        if is_digit and digits < _MAX_FRACTION_DIGITS:
            new = (_N_FRAC, digits + 1)
        elif ch in "eE" and phase == _N_FRAC:
            new = (_N_E, 0)
    elif phase in (_N_E, _N_ESIGN):
        if ch in "+-" and phase == _N_E:
            new = (_N_ESIGN, 0)
        elif is_digit:
            new = (_N_EXP, 1)
    elif phase == _N_EXP and is_digit and digits < _MAX_EXPONENT_DIGITS:
        new = (_N_EXP, digits + 1)
    if new is not None:
        out.append(((_NUM, node, new[0], new[1]), parent))
    if phase in _N_COMPLETE:  # the number may already be over: ``ch`` belongs to the parent
        for resumed in _complete(parent):
            out.extend(_feed(resumed, ch))
    return out


def _feed_object(frame: tuple, parent: Any, ch: str) -> list[Any]:
    _, node, phase, idx, count, cands, pos = frame
    if phase == _O_OPEN:
        return [((_OBJ, node, _O_NEXT, 0, 0, (), 0), parent)] if ch == "{" else []
    if phase == _O_NEXT:
        out: list[Any] = []
        if node.free is not None:
            if ch == "}":
                out.extend(_complete(parent))
            if count < node.max_keys:
                cands = ((('"' if count == 0 else ', "'), _FREE_KEY),)
        else:
            if ch == "}" and node.may_close(idx):
                out.extend(_complete(parent))
            cands = node.key_candidates(idx, count == 0)
        if cands:
            out.extend(_feed_object((_OBJ, node, _O_MATCH, idx, count, cands, 0), parent, ch))
        return out
    if phase == _O_MATCH:
        out = []
        rest = []
        for text, j in cands:
            if text[pos] != ch:
                continue
            if len(text) > pos + 1:
                rest.append((text, j))
            elif j == _FREE_KEY:  # opening quote of a free-form key consumed
                key = (
                    (_STR, node.key_node, 0, 0),
                    ((_OBJ, node, _O_KEY, idx, count, (), 0), parent),
                )
                out.append(key)
            elif j == _FREE_COLON:
                waiting = ((_OBJ, node, _O_VALUE, idx, count + 1, (), 0), parent)
                out.extend(_push(node.free, waiting))
            else:
                waiting = ((_OBJ, node, _O_VALUE, j + 1, count + 1, (), 0), parent)
                out.extend(_push(node.props[j][1], waiting))
        if rest:
            out.append(((_OBJ, node, _O_MATCH, idx, count, tuple(rest), pos + 1), parent))
        return out
    raise AssertionError("an object waiting for a child cannot be on top")


def _feed_array(frame: tuple, parent: Any, ch: str) -> list[Any]:
    _, node, phase, count = frame
    if phase == _A_OPEN:
        return [((_ARR, node, _A_FIRST, 0), parent)] if ch == "[" else []
    if phase == _A_FIRST:
        out: list[Any] = []
        if ch == "]" and node.min_items == 0:
            out.extend(_complete(parent))
        if node.max_items > 0:
            for stack in _push(node.item, ((_ARR, node, _A_ITEM, 1), parent)):
                out.extend(_feed(stack, ch))
        return out
    if phase == _A_AFTER:
        if ch == "]":
            return _complete(parent) if count >= node.min_items else []
        if ch == "," and count < node.max_items:
            return [((_ARR, node, _A_COMMA, count), parent)]
        return []
    if phase == _A_COMMA:
        if ch != " ":
            return []
        return _push(node.item, ((_ARR, node, _A_ITEM, count + 1), parent))
    raise AssertionError("an array waiting for an item cannot be on top")


def _feed_states(states: tuple, text: str) -> tuple:
    """Feed every character of ``text``; an empty tuple means the text is not allowed."""
    for ch in text:
        if len(states) == 1:
            nxt = _feed(states[0], ch)
        else:
            nxt = [s for stack in states for s in _feed(stack, ch)]
        if len(nxt) > 1:
            nxt = list(dict.fromkeys(nxt))
        if not nxt:
            return ()
        states = tuple(nxt)
    return states


# --------------------------------------------------------------------------------------
# Constrained decoding: the fewest characters that finish a parse (the token budget)
# --------------------------------------------------------------------------------------
# Every character of a shortest completion is a single-character token (checked by the
# constraint), so "characters left" bounds "tokens left": keeping it within the remaining
# budget after every token guarantees the call closes before ``max_tokens``.


class _Costs:
    """Exact minimum completion lengths, memoised per grammar node and per parse stack."""

    def __init__(self) -> None:
        self._nodes: dict[int, int] = {}
        self._stacks: dict[Any, int] = {}

    def of_states(self, states: tuple) -> int:
        return min((self.stack(s) for s in states), default=_NO_COMPLETION)

    def stack(self, stack: Any) -> int:
        if stack is None:
            return 0
        cached = self._stacks.get(stack)
        if cached is None:
            frame, parent = stack
            after = min((self.stack(s) for s in _complete(parent)), default=_NO_COMPLETION)
            cached = self._stacks[stack] = self._rest(frame) + after
        return cached

    def node(self, node: Any) -> int:
        """Shortest text of a whole value of ``node``."""
        key = id(node)
        cached = self._nodes.get(key)
        if cached is not None:
            return cached
        self._nodes[key] = _NO_COMPLETION  # guards a cycle; grammars are acyclic in practice
        if isinstance(node, _Lit):
            cost = min(len(text) for text in node.texts)
        elif isinstance(node, _Str):
            cost = 2 + node.min_len
        elif isinstance(node, _Num):
            cost = 1
        elif isinstance(node, _Obj):
            cost = 1 + self._object_tail(node, 0, first=True)
        elif isinstance(node, _Arr):
            cost = 1 + self._array_tail(node, 0)
        elif isinstance(node, _Union):
            cost = min(self.node(alt) for alt in node.alts)
        elif isinstance(node, _Seq):
            cost = sum(self.node(part) for part in node.parts)
        else:
            raise TypeError(f"not a grammar node: {node!r}")
        self._nodes[key] = cost
        return cost

    def _object_tail(self, node: _Obj, idx: int, *, first: bool) -> int:
        """The required properties from ``idx`` on, then ``}``."""
        if node.free is not None:
            return 1
        cost = 1
        for key, sub, required in node.props[idx:]:
            if required:
                cost += (0 if first else 2) + len(_dump(key)) + 2 + self.node(sub)
                first = False
        return cost

    def _array_tail(self, node: _Arr, count: int) -> int:
        """The items still required after ``count`` of them, then ``]``."""
        need = max(0, node.min_items - count)
        if need == 0:
            return 1
        return need * self.node(node.item) + (need - (count == 0)) * 2 + 1

    def _rest(self, frame: tuple) -> int:
        """Characters that finish the value of a frame on top of the stack."""
        kind = frame[0]
        if kind == _LIT:
            return min(len(text) for text in frame[1]) - frame[2]
        if kind == _STR:
            node, length, esc = frame[1], frame[2], frame[3]
            if esc == -1:
                return 2 + node.min_len
            if esc == 0:
                return max(0, node.min_len - length) + 1
            pending = 1 if esc == 1 else 6 - esc  # the escape's own characters still due
            return pending + max(0, node.min_len - length - 1) + 1
        if kind == _NUM:
            return 0 if frame[2] in _N_COMPLETE else 1
        if kind == _OBJ:
            _, node, phase, idx, count, cands, pos = frame
            if phase == _O_OPEN:
                return self.node(node)
            if phase == _O_NEXT:
                return self._object_tail(node, idx, first=count == 0)
            if phase == _O_MATCH:
                return min(len(text) - pos + self._after_match(node, j) for text, j in cands)
        if kind == _ARR:
            node, phase, count = frame[1], frame[2], frame[3]
            if phase == _A_OPEN:
                return self.node(node)
            if phase in (_A_FIRST, _A_AFTER):
                return self._array_tail(node, count)
            if phase == _A_COMMA:  # ", " half written, then an item
                return 1 + self.node(node.item) + self._array_tail(node, count + 1)
        raise AssertionError(f"frame {frame[:3]} cannot be on top of a stack")

    def _after_match(self, node: _Obj, j: int) -> int:
        if j == _FREE_KEY:  # the key's closing quote, ": ", a value, "}"
            return node.key_node.min_len + 1 + 2 + self.node(node.free) + 1
        if j == _FREE_COLON:
            return self.node(node.free) + 1
        return self.node(node.props[j][1]) + self._object_tail(node, j + 1, first=False)


_NO_COMPLETION = 1 << 30


# --------------------------------------------------------------------------------------
# Constrained decoding: token table and the constraint
# --------------------------------------------------------------------------------------


class _TokenTable:
    """Decoded text of every usable token of one tokenizer, sorted for prefix scans.

    A token's text is ``None`` when it is special (control tokens such as ``<|im_end|>`` must
    never appear inside JSON), decodes to nothing, or decodes to an incomplete UTF-8 sequence
    (``"\\ufffd"``). Texts are decoded after a reference token and the reference's text is
    removed, so SentencePiece tokenizers keep their leading spaces.

    ``partial`` holds the raw bytes of the incomplete-UTF-8 tokens, so a string value can be
    built from pieces of a character (CJK, emoji); it is filled only when the tokenizer's
    pieces map back to bytes (byte-level BPE, or ``<0xNN>`` byte-fallback tokens), that mapping
    reproduces a multi-byte test string exactly, and every continuation byte has a token of
    its own (so a started character can always be finished). Otherwise it is empty and such
    characters are written as ``\\uXXXX`` escapes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.size = len(tokenizer)
        special: set[int] = set(getattr(tokenizer, "all_special_ids", None) or ())
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
        decode_kwargs = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        reference = tokenizer.encode("a", add_special_tokens=False)
        texts: list[str]
        if reference:
            ref = reference[-1]
            ref_text = tokenizer.decode([ref], **decode_kwargs)
            pairs = tokenizer.batch_decode([[ref, i] for i in range(self.size)], **decode_kwargs)
            singles = None
            texts = []
            for i, pair in enumerate(pairs):
                if pair.startswith(ref_text):
                    texts.append(pair[len(ref_text) :])
                else:
                    if singles is None:
                        singles = tokenizer.batch_decode(
                            [[k] for k in range(self.size)], **decode_kwargs
                        )
                    texts.append(singles[i])
        else:
            texts = tokenizer.batch_decode([[i] for i in range(self.size)], **decode_kwargs)
        self.texts: list[str | None] = [
            None if (i in special or not t or "\ufffd" in t or "\U0010ffff" in t) else t
            for i, t in enumerate(texts)
        ]
        broken = [
            i
            for i, t in enumerate(texts)
            if i not in special and t and ("\ufffd" in t or "\U0010ffff" in t)
        ]
        self.partial: dict[int, bytes] = _partial_bytes(tokenizer, broken, self.texts)
        order = sorted((t, i) for i, t in enumerate(self.texts) if t is not None)
        self.sorted_texts = [t for t, _ in order]
        self.sorted_ids = [i for _, i in order]
        self.single_chars = {t for t in self.sorted_texts if len(t) == 1}


_UTF8_PROBE = "naïve café 你好世界 😀"


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character standing for each byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in chars.items()}


def _partial_bytes(
    tokenizer: Any, ids: Sequence[int], texts: Sequence[str | None]
) -> dict[int, bytes]:
    """Raw bytes of the incomplete-UTF-8 tokens ``ids``, or ``{}`` when they cannot be trusted."""
    if not ids or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return {}
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    alphabet = _byte_level_alphabet()
    out: dict[int, bytes] = {}
    for token, piece in zip(ids, pieces, strict=True):
        if not isinstance(piece, str) or not piece:
            continue
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                out[token] = bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        elif all(char in alphabet for char in piece):
            out[token] = bytes(alphabet[char] for char in piece)
    continuation = {raw[0] for raw in out.values() if len(raw) == 1 and 0x80 <= raw[0] < 0xC0}
    if len(continuation) < 0x40:
        return {}
    probe = tokenizer.encode(_UTF8_PROBE, add_special_tokens=False)
    rebuilt = b"".join(
        out[i] if i in out else (texts[i] or "").encode() if 0 <= i < len(texts) else b"?"
        for i in probe
    )
    return out if rebuilt.strip() == _UTF8_PROBE.encode() else {}


def _utf8_split(data: bytes) -> tuple[str, bytes] | None:
    """The complete characters of ``data`` and its unfinished tail; None if it is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return None
    return text, decoder.getstate()[0]


def _utf8_missing(tail: bytes) -> int:
    """Continuation bytes still due after the unfinished character ``tail``."""
    lead = tail[0]
    size = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return size - len(tail)


def _inside_strings(states: tuple) -> tuple:
    """The stacks that are inside a string with room for one more character."""
    return tuple(
        stack
        for stack in states
        if stack is not None
        and stack[0][0] == _STR
        and stack[0][3] == 0
        and stack[0][2] < stack[0][1].max_len
    )


_TABLES: weakref.WeakKeyDictionary[Any, _TokenTable] = weakref.WeakKeyDictionary()
_TABLES_BY_ID: dict[int, tuple[Any, _TokenTable]] = {}


def _token_table(tokenizer: Any) -> _TokenTable:
    """The cached `_TokenTable` of ``tokenizer`` (rebuilt if its vocabulary size changed)."""
    try:
        table = _TABLES.get(tokenizer)
    except TypeError:  # not weak-referenceable: keep it alive in a plain dict
        entry = _TABLES_BY_ID.get(id(tokenizer))
        table = entry[1] if entry is not None and entry[0] is tokenizer else None
    if table is None or table.size != len(tokenizer):
        table = _TokenTable(tokenizer)
        try:
            _TABLES[tokenizer] = table
        except TypeError:
            _TABLES_BY_ID[id(tokenizer)] = (tokenizer, table)
    return table


def _scan(states: tuple, texts: Sequence[str], ids: Sequence[int]) -> list[int]:
    """Ids whose text keeps ``states`` alive; ``texts`` sorted, ``ids`` aligned with them.

    Walks the implicit trie of the sorted texts: each distinct prefix is fed once, and a
    rejected prefix discards all texts below it with one binary search.
    """
    allowed: list[int] = []
    work = [(0, len(texts), 0, states)]
    while work:
        lo, hi, depth, current = work.pop()
        i = lo
        while i < hi:
            text = texts[i]
            if len(text) == depth:  # this token ends exactly at the prefix, which is valid
                allowed.append(ids[i])
                i += 1
                continue
            end = bisect.bisect_right(texts, text[: depth + 1] + "\U0010ffff", i, hi)
            after = _feed_states(current, text[depth])
            if after:
                work.append((i, end, depth + 1, after))
            i = end
    return allowed


class JsonSchemaConstraint:
    """Logits processor that forces one well-formed tool call, then the end token.

    The generated text is exactly ``<tool_call>{"name": "<name>", "arguments": <JSON>}
    </tool_call>`` (nothing between ``}`` and the closing tag; Qwen3's newline layout with
    ``multiline=True``, the default for templates that render tools) where ``<name>`` is
    ``forced_name`` or any of the tools and ``<JSON>`` is valid for that tool's parameters
    schema (subset and limits in the module docstring); afterwards only ``eos_token_id`` is
    allowed. Use a fresh instance (or `reset`) per generation; one instance is not
    thread-safe.

    Call it as ``constraint(generated_ids, logits)`` (the signature of
    ``langchain_deltamem.generation.LogitsProcessor``): ``generated_ids`` are the ids
    generated so far (prompt excluded), ``logits`` the next token's ``[vocab]`` logits. It
    returns a copy in which every disallowed token is ``-inf`` and every allowed one finite.

    Token choice: the ``top_k`` highest-logit tokens are tested first and, if any fits, only
    those that fit stay allowed; otherwise the whole vocabulary is scanned and every token
    that fits stays allowed. Greedy decoding is therefore exact (the best valid token is
    always kept) and sampling is top-k truncated whenever the top-k holds a valid token.

    Never a dead end: every reachable parser state has a completion whose next character is a
    literal character of the grammar or one of ``{}[]",: -0123456789a``; the constructor
    checks that each of those is a single-character token, so the full scan always finds one.

    Within budget: with ``max_tokens`` (the generation's limit, end token included) a token is
    allowed only if the shortest completion after it still fits in the tokens left. That
    length is counted in characters (`_Costs`, exact for this grammar), each of them a
    single-character token, so the call is always closed in time: a string the model would
    run on for a thousand characters is closed early instead of being cut off unparsable.

    Non-ASCII text: tokens that carry only part of a UTF-8 character (how byte-level BPE
    writes most CJK text and emoji) are allowed inside strings when the tokenizer's bytes
    can be recovered (see `_TokenTable`); until the character is complete only tokens that
    continue it are allowed.

    Complexity (V vocabulary size, L mean token length, F the cost of feeding one character,
    O(1) for the usual single parse branch):

    * once per tokenizer (cached): decode V tokens and sort them, O(V log V), about 0.4 s
      for SmolLM2's 49k tokens;
    * per call: O(k log k + P_k · F) to test the top-k (P_k ≤ k·L distinct prefixes); the
      fallback visits the trie of the vocabulary only below valid prefixes, O(P_valid · (F +
      log V)), which is small wherever few tokens fit (fixed text, numbers, names) and about
      the whole trie (≈ V·L) inside a free string — where the top-k almost always fits.
    * the state advances by the new tokens only, O(L · F) per generated token.

    Args:
        tokenizer: The backbone's tokenizer.
        schemas: Tool schemas (OpenAI tool or function dicts, e.g. from `to_tool_schemas`).
        forced_name: The tool that must be called, or ``None`` for any of ``schemas``.
        eos_token_id: The end token allowed after the call; defaults to the tokenizer's.
        multiline: Qwen3's layout, with newlines just inside the tags. ``None`` (default)
            follows the prompt mode: multiline when the chat template renders tools itself
            (`supports_tools`, the layout such templates show the model), else single-line
            (the prompted-mode format, e.g. SmolLM2).
        top_k: How many highest-logit tokens to test before scanning the vocabulary.
        max_string_length, max_array_items, max_object_keys: Caps that guarantee termination.
        max_tokens: The generation's token limit (end token included); when given, the call
            is always complete within it (see "Within budget").

    Raises:
        ValueError: no schemas, an unknown ``forced_name``, an unsupported schema, no end
            token, a tokenizer lacking a single-character token the grammar may need, or a
            ``max_tokens`` smaller than the shortest call (`min_tokens`).
    """

    def __init__(
        self,
        tokenizer: Any,
        schemas: Sequence[Mapping[str, Any]],
        forced_name: str | None = None,
        *,
        eos_token_id: int | None = None,
        multiline: bool | None = None,
        top_k: int = DEFAULT_TOP_K,
        max_string_length: int = 1000,
        max_array_items: int = 64,
        max_object_keys: int = 32,
        max_tokens: int | None = None,
    ) -> None:
        functions = [function_of(schema) for schema in schemas]
        if not functions:
            raise ValueError("JsonSchemaConstraint needs at least one tool schema")
        names = [f.get("name") for f in functions]
        if forced_name is not None and forced_name not in names:
            raise ValueError(f"forced_name {forced_name!r} is not one of the tools {names}")
        limits = (max_string_length, max_array_items, max_object_keys)
        self._check_settings(tokenizer, eos_token_id, top_k, *limits)
        self.forced_name = forced_name
        if multiline is None:
            multiline = supports_tools(tokenizer)
        self.multiline = multiline
        nl = "\n" if multiline else ""
        branches = []
        for function in functions:
            name = function["name"]
            if forced_name is not None and name != forced_name:
                continue
            parameters = function.get("parameters") or {"type": "object", "properties": {}}
            compiler = _Compiler(parameters, max_string_length, max_array_items, max_object_keys)
            try:
                arguments = compiler.compile(parameters)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"Tool {name!r}: {exc}") from exc
            head = _Lit([_dump(name) + ', "arguments": '])
            branches.append(_Seq([head, arguments, _Lit(["}" + nl + TOOL_CALL_CLOSE])]))
        grammar = _Seq([_Lit([TOOL_CALL_OPEN + nl + '{"name": ']), _Union(branches)])
        self._build(tokenizer, grammar, max_tokens)

    @classmethod
    def for_document(
        cls,
        tokenizer: Any,
        schema: Mapping[str, Any],
        *,
        eos_token_id: int | None = None,
        top_k: int = DEFAULT_TOP_K,
        max_string_length: int = 1000,
        max_array_items: int = 64,
        max_object_keys: int = 32,
        max_tokens: int | None = None,
    ) -> JsonSchemaConstraint:
        """A constraint for a bare JSON document valid for ``schema`` (then the end token):
        the chat model's JSON mode (``{"type": "object"}``) and ``json_schema`` output.
        Same subset, limits and guarantees as a tool call's arguments."""
        self = cls.__new__(cls)
        limits = (max_string_length, max_array_items, max_object_keys)
        self._check_settings(tokenizer, eos_token_id, top_k, *limits)
        self.forced_name = None
        self.multiline = False
        compiler = _Compiler(schema, max_string_length, max_array_items, max_object_keys)
        try:
            grammar = compiler.compile(schema)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"JSON schema: {exc}") from exc
        self._build(tokenizer, _Seq([grammar]), max_tokens)
        return self

    def _check_settings(
        self, tokenizer: Any, eos_token_id: int | None, top_k: int, *limits: int
    ) -> None:
        if min(top_k, *limits) < 1:
            raise ValueError("top_k and the length limits must be >= 1")
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id=...")
        self.top_k = top_k

    def _build(self, tokenizer: Any, grammar: Any, max_tokens: int | None) -> None:
        self._grammar = grammar
        self._table = _token_table(tokenizer)
        missing = (_literal_chars(self._grammar) | _GRAMMAR_CHARS) - self._table.single_chars
        if missing:
            raise ValueError(
                f"The tokenizer has no single-character token for {sorted(missing)}, so "
                f"constrained decoding could dead-end; rename the tool/enum value using them"
            )
        self._costs = _Costs()
        self.max_tokens = max_tokens
        self.reset()
        if max_tokens is not None and max_tokens < self.min_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} is too small for the shortest valid call "
                f"({self.min_tokens} tokens)"
            )

    def reset(self) -> None:
        """Start over (a new generation)."""
        self._states = tuple(_push(self._grammar, None))
        self._pending = b""  # bytes of a character that is not finished yet
        self._consumed: list[int] = []
        self._text: list[str] = []

    @property
    def min_tokens(self) -> int:
        """Tokens in the shortest valid call from the start (a lower bound for max_tokens)."""
        return self._costs.of_states(tuple(_push(self._grammar, None)))

    @property
    def is_complete(self) -> bool:
        """Whether the whole call has been generated (only the end token may follow)."""
        return None in self._states

    @property
    def text(self) -> str:
        """The text generated so far (as the constraint decoded it)."""
        return "".join(self._text)

    def __call__(
        self, generated_ids: Sequence[int] | torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """Mask ``logits`` (``[vocab]``) for the token after ``generated_ids``."""
        self._sync(generated_ids)
        if logits.dim() != 1:
            raise ValueError(f"logits must have shape [vocab], got {tuple(logits.shape)}")
        vocab = logits.shape[0]
        if self.is_complete:
            allowed = [self.eos_token_id]
        else:
            allowed = self._allowed_top_k(logits, vocab)
            if not allowed:  # fall back to every token that fits and has a logit
                allowed = [i for i in self.allowed_token_ids() if i < vocab]
        if not allowed:
            raise RuntimeError("constrained decoding has no allowed token (grammar bug)")
        index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        values = logits.index_select(0, index)
        if not bool(torch.isfinite(values).all()):
            finite = values[torch.isfinite(values)]
            fill = float(finite.min()) if finite.numel() else 0.0
            values = torch.where(torch.isfinite(values), values, torch.full_like(values, fill))
        masked = torch.full_like(logits, -math.inf)
        masked.index_copy_(0, index, values)
        return masked

    def allowed_token_ids(self, generated_ids: Sequence[int] | None = None) -> list[int]:
        """Every token allowed next (full vocabulary scan), after ``generated_ids`` if given."""
        if generated_ids is not None:
            self._sync(generated_ids)
        if self.is_complete:
            return [self.eos_token_id]
        table = self._table
        whole = [] if self._pending else _scan(self._states, table.sorted_texts, table.sorted_ids)
        return self._within_budget(whole) + self._partial_allowed(table.partial)

    def _allowed_top_k(self, logits: torch.Tensor, vocab: int) -> list[int]:
        k = min(self.top_k, vocab)
        top = torch.topk(logits.detach(), k).indices.tolist()
        table = self._table
        texts, size = table.texts, len(table.texts)
        whole: list[int] = []
        if not self._pending:
            candidates = sorted((texts[i], i) for i in top if i < size and texts[i] is not None)
            whole = _scan(self._states, [t for t, _ in candidates], [i for _, i in candidates])
        return self._within_budget(whole) + self._partial_allowed(
            {i: table.partial[i] for i in top if i in table.partial}
        )

    def _partial_allowed(self, candidates: Mapping[int, bytes]) -> list[int]:
        """The part-of-a-character tokens among ``candidates`` that may come next."""
        return [token for token in candidates if self._fits(self._step(token))]

    def _within_budget(self, tokens: list[int]) -> list[int]:
        """``tokens`` (each already known to continue the call) that leave room to finish."""
        if self.max_tokens is None:
            return tokens
        return [token for token in tokens if self._fits(self._step(token))]

    def _fits(self, step: tuple[tuple, bytes, str] | None) -> bool:
        if step is None:
            return False
        if self.max_tokens is None:
            return True
        left = self.max_tokens - len(self._consumed) - 1  # after this token
        return self._cost(step[0], step[1]) <= left

    def _cost(self, states: tuple, pending: bytes) -> int:
        """Fewest tokens that finish the call from ``states`` (with ``pending`` bytes)."""
        if len(self._costs._stacks) > 200_000:  # bound the memo on very long generations
            self._costs = _Costs()
        if not pending:
            return self._costs.of_states(states)
        finished = _feed_states(states, "\u00e9")  # any non-ASCII character continues alike
        return _utf8_missing(pending) + self._costs.of_states(finished)

    def _step(self, token: int) -> tuple[tuple, bytes, str] | None:
        """``(states, pending bytes, new text)`` after ``token``, or None if it may not come."""
        table = self._table
        text = table.texts[token] if 0 <= token < len(table.texts) else None
        if text is not None and not self._pending:
            states = _feed_states(self._states, text)
            return (states, b"", text) if states else None
        raw = table.partial.get(token)
        if raw is None:
            return None
        split = _utf8_split(self._pending + raw)
        if split is None:
            return None
        text, tail = split
        states = _feed_states(self._states, text) if text else self._states
        if tail:
            states = _inside_strings(states)
        return (states, tail, text) if states else None

    def _sync(self, generated_ids: Sequence[int] | torch.Tensor) -> None:
        ids = generated_ids.tolist() if isinstance(generated_ids, torch.Tensor) else generated_ids
        ids = [int(i) for i in ids]
        n = len(self._consumed)
        if len(ids) < n or ids[:n] != self._consumed:
            self.reset()
            n = 0
        for token in ids[n:]:
            self._advance(token)

    def _advance(self, token: int) -> None:
        if self.is_complete:
            if token != self.eos_token_id:
                raise ValueError(f"token {token} after a complete tool call (only EOS allowed)")
            self._consumed.append(token)
            return
        step = self._step(token)
        if step is None:
            raise ValueError(f"token {token} does not continue the tool call {self.text!r}")
        self._states, self._pending, text = step
        self._consumed.append(token)
        self._text.append(text)
