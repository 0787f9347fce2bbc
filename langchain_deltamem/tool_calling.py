"""Tool calls for a frozen chat backbone: schemas, ``tool_choice``, the call format, parsing.

Everything here is independent of prompts and generation; `prompts` renders tools and earlier
calls into the prompt, and the chat model combines both with its decode loop:

1. `to_tool_schemas` turns LangChain tools, pydantic models, Python functions or OpenAI-style
   dicts into validated OpenAI tool dicts ``{"type": "function", "function": {"name",
   "description", "parameters"}}`` with unique names.
2. `normalize_tool_choice` turns any ``tool_choice`` spelling into ``(mode, forced_name)``.
3. `format_tool_call` writes one call in the call format below: the only place that builds
   call text (prompts, memory segments and training data all use it).
4. `json_constraint.JsonSchemaConstraint` (its own module) masks next-token logits so a
   *required* call is always well formed.
5. `parse_tool_calls` / `parse_ai_message` turn the generated text back into LangChain
   ``tool_calls`` and ``invalid_tool_calls``.

Call format
-----------
One call is ``<tool_call>{"name": "<tool name>", "arguments": {<JSON object>}}</tool_call>``;
several calls are several such blocks (one per line). This is the Hermes/Qwen format: Qwen3's
chat template writes exactly this, with a newline after ``<tool_call>`` and before
``</tool_call>``. SmolLM2's published tool-use prompt (model card, Ollama template) uses the
same ``<tools>``/``<tool_call>``/``<tool_response>`` tags with a JSON *list* of calls inside
one block. `parse_tool_calls` accepts all of these: both layouts, any whitespace inside the
tags, a list per block, and ``"parameters"`` instead of ``"arguments"``.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json_schema import dereference_refs

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolChoiceMode",
    "format_tool_call",
    "function_of",
    "normalize_tool_choice",
    "parse_ai_message",
    "parse_tool_calls",
    "split_tool_calls",
    "to_tool_schemas",
    "tool_names",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

ToolChoiceMode = Literal["auto", "none", "required"]

# OpenAI's rule plus dots: names are written into prompts and matched in generated text.
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_JSON_DECODER = json.JSONDecoder()
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------


def to_tool_schemas(tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Convert tools of any supported kind into validated OpenAI tool dicts.

    Args:
        tools: LangChain ``BaseTool`` objects, pydantic model classes, Python functions (with
            type hints and a docstring), OpenAI tool dicts (``{"type": "function",
            "function": {...}}``), OpenAI function dicts (``{"name", "description",
            "parameters"}``) or JSON schemas with a top-level ``title``; ``None`` means none.

    Returns:
        A new list of ``{"type": "function", "function": {"name", "description",
        "parameters"}}`` dicts (deep copies; ``description`` defaults to ``""``, missing
        ``parameters`` to an empty object schema), in input order.

    Raises:
        TypeError: ``tools`` is not a list/tuple, or an item cannot be converted.
        ValueError: an invalid name (must match ``[A-Za-z0-9_.-]{1,64}``), description or
            parameters schema (must be an object schema), or two tools with the same name
            and different parameters. The same tool given twice (equal parameters, ignoring
            ``title`` annotations and ``$ref`` indirection; e.g. a pydantic model and its
            ``model_json_schema()``, as LangChain's standard ``bind_tools`` test does) is kept
            once, at its first position.
    """
    if tools is None:
        return []
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list or tuple of tools, got {type(tools).__name__}")
    schemas: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(tools):
        try:
            converted = convert_to_openai_tool(item)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise TypeError(
                f"tools[{index}] ({type(item).__name__}) cannot be converted to a tool schema: "
                f"{exc}"
            ) from exc
        schema = _validate_tool_schema(copy.deepcopy(converted), index)
        name = schema["function"]["name"]
        if name in seen:
            first = schemas[seen[name]]["function"]["parameters"]
            if _comparable(first) == _comparable(schema["function"]["parameters"]):
                continue  # the same tool again (e.g. a model and its JSON schema): keep one
            raise ValueError(
                f"Duplicate tool name {name!r} (tools[{seen[name]}] and tools[{index}]) with "
                f"different parameters; tool names must be unique"
            )
        seen[name] = len(schemas)
        schemas.append(schema)
    return schemas


def _comparable(parameters: dict[str, Any]) -> Any:
    """Parameters with local ``$ref`` inlined and ``title`` annotations dropped."""
    try:
        inlined = dereference_refs(parameters)
    except Exception:  # exotic references: compare as written
        inlined = parameters
    inlined = {k: v for k, v in inlined.items() if k not in ("$defs", "definitions")}
    return _without_titles(inlined)


def _without_titles(schema: Any, *, in_map: bool = False) -> Any:
    """A schema without its ``title`` annotations (pydantic adds them, LangChain strips them),
    for comparing two spellings of one tool; ``in_map`` marks a name → schema mapping such as
    ``properties``, whose keys are data, not keywords."""
    if isinstance(schema, Mapping):
        return {
            key: _without_titles(value, in_map=not in_map and key in _SCHEMA_MAPS)
            for key, value in schema.items()
            if in_map or key != "title"
        }
    if isinstance(schema, list):
        return [_without_titles(item) for item in schema]
    return schema


def tool_names(schemas: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of OpenAI tool (or function) dicts, in order."""
    return [function_of(schema)["name"] for schema in schemas]


def function_of(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function part of an OpenAI tool dict, or the dict itself if it is a function dict."""
    if schema.get("type") == "function" and isinstance(schema.get("function"), Mapping):
        return schema["function"]
    return schema


def _validate_tool_schema(converted: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(converted, dict) or converted.get("type") != "function":
        raise ValueError(f"{where} did not convert to an OpenAI tool dict: {converted!r}")
    function = converted.get("function")
    if not isinstance(function, dict):
        raise ValueError(f"{where} has no 'function' object: {converted!r}")
    name = function.get("name")
    if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
        raise ValueError(
            f"{where} has an invalid name {name!r}: names must be 1-64 characters from "
            f"[A-Za-z0-9_.-]"
        )
    description = function.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ValueError(f"Tool {name!r}: description must be a string, got {description!r}")
    parameters = function.get("parameters")
    if not parameters:  # missing, None or {}: a tool without arguments
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ValueError(f"Tool {name!r}: parameters must be a JSON schema object")
    kind = parameters.get("type", "object" if "properties" in parameters else None)
    if kind != "object":
        raise ValueError(
            f"Tool {name!r}: parameters must be an object schema (type 'object'), got type {kind!r}"
        )
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError(f"Tool {name!r}: parameters.properties must be an object")
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"Tool {name!r}: parameters.required must be a list of strings")
    missing = [r for r in required if r not in properties]
    if missing:
        raise ValueError(f"Tool {name!r}: required parameters {missing} are not in properties")
    function = {**function, "description": description, "parameters": parameters}
    return {**converted, "function": function}


# --------------------------------------------------------------------------------------
# tool_choice
# --------------------------------------------------------------------------------------


def normalize_tool_choice(
    tool_choice: Any, names: Sequence[str]
) -> tuple[ToolChoiceMode, str | None]:
    """Normalise a LangChain/OpenAI/Anthropic ``tool_choice`` into ``(mode, forced_name)``.

    ``mode`` is ``"auto"`` (the model decides), ``"none"`` (no tool calls) or ``"required"``
    (at least one call); ``forced_name`` is set when one particular tool must be called (mode
    is then ``"required"``).

    Accepted: ``None``/``"auto"``/``{"type": "auto"}`` → auto; ``"none"``/``{"type":
    "none"}``/``False`` → none; ``"any"``/``"required"``/``{"type": "any"}`` → required;
    ``True`` → the only tool if there is exactly one, else required (LangChain's
    ``with_structured_output`` convention); a tool name, ``{"type": "function", "function":
    {"name": ...}}`` or ``{"type": "tool", "name": ...}`` → that tool. The keywords win over a
    tool that happens to be called ``"auto"``, ``"none"``, ``"any"`` or ``"required"``.

    Raises:
        ValueError: an unknown tool name, a tool being required when there are no tools, or
            an unrecognised value.
    """
    names = list(names)
    if tool_choice is None or tool_choice == "auto":
        return "auto", None
    if tool_choice is False or tool_choice == "none":
        return "none", None
    if tool_choice is True:
        if len(names) == 1:
            return "required", names[0]
        return _required(None, names)
    if tool_choice in ("any", "required"):
        return _required(None, names)
    if isinstance(tool_choice, str):
        return _required(tool_choice, names)
    if isinstance(tool_choice, Mapping):
        kind = tool_choice.get("type")
        if kind in ("auto", "none", "any", "required") and len(tool_choice) == 1:
            return normalize_tool_choice(kind, names)
        if kind == "function" and isinstance(tool_choice.get("function"), Mapping):
            name = tool_choice["function"].get("name")
            if isinstance(name, str):
                return _required(name, names)
        if kind == "tool" and isinstance(tool_choice.get("name"), str):
            return _required(tool_choice["name"], names)
    raise ValueError(
        f"Unsupported tool_choice {tool_choice!r}: use 'auto', 'none', 'any'/'required', a tool "
        f"name or {{'type': 'function', 'function': {{'name': ...}}}}"
    )


def _required(name: str | None, names: list[str]) -> tuple[ToolChoiceMode, str | None]:
    if not names:
        raise ValueError(
            f"tool_choice requires a tool call ({name or 'any tool'!s}) but no tools were given"
        )
    if name is not None and name not in names:
        raise ValueError(f"tool_choice names unknown tool {name!r}; known tools: {names}")
    return "required", name


# --------------------------------------------------------------------------------------
# Call format
# --------------------------------------------------------------------------------------


def format_tool_call(name: str, args: Mapping[str, Any], *, multiline: bool = False) -> str:
    """One call in the canonical format, e.g. ``<tool_call>{"name": "f", "arguments":
    {"x": 1}}</tool_call>`` (``multiline``: Qwen3's layout with newlines inside the tags)."""
    body = json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)
    sep = "\n" if multiline else ""
    return f"{TOOL_CALL_OPEN}{sep}{body}{sep}{TOOL_CALL_CLOSE}"


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def parse_tool_calls(
    text: str, tool_names: Sequence[str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Extract ``<tool_call>…</tool_call>`` blocks from generated text.

    Never raises on model output. A well-formed block becomes a LangChain ``tool_call``
    (``{"name", "args", "id", "type": "tool_call"}``, id ``call_<uuid hex>``) and is removed
    from the text. A malformed one (bad JSON, no string ``name``, arguments that are not an
    object, a name not in ``tool_names`` when given, or a ``<tool_call>`` never closed) becomes
    an ``invalid_tool_call`` (``{"name", "args" (raw string), "id", "error", "type":
    "invalid_tool_call"}``) and its text is *kept* in the content, so nothing the model wrote
    is lost. A block holding a JSON list yields one entry per element.

    Args:
        text: Generated text (special tokens already removed).
        tool_names: The known tools; ``None`` accepts any name.

    Returns:
        ``(content, calls)``: the remaining text (stripped; blank lines left by removed calls
        collapsed) and the calls in order of appearance, valid and invalid mixed; tell them
        apart by ``"type"`` or with `split_tool_calls`.
    """
    known = None if tool_names is None else set(tool_names)
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    position = 0  # start of the text not yet kept or dropped
    search = 0
    while (start := text.find(TOOL_CALL_OPEN, search)) >= 0:
        body = start + len(TOOL_CALL_OPEN)
        end, entries = _read_block(text, body, known)
        kept.append(text[position:start])
        if any(entry["type"] == "invalid_tool_call" for entry in entries):
            kept.append(text[start:end])
        calls.extend(entries)
        position = search = end
    kept.append(text[position:])
    content = "".join(kept)
    content = re.sub(r"[ \t]*\n(?:[ \t]*\n)+", "\n\n", content).strip()
    return content, calls


def _read_block(text: str, body: int, known: set[str] | None) -> tuple[int, list[dict]]:
    """Parse the block whose body starts at ``body``; return its end and its entries.

    JSON-aware first, so a closing tag inside a JSON string does not end the block; then the
    first ``</tool_call>`` before the next ``<tool_call>``; else the call is unclosed (e.g.
    the length limit cut it short) and runs to the next opening tag or the end.
    """
    start = body + len(text[body:]) - len(text[body:].lstrip())
    try:
        payload, stop = _JSON_DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        payload, stop = None, -1
    if stop >= 0:
        after = stop + len(text[stop:]) - len(text[stop:].lstrip())
        if text.startswith(TOOL_CALL_CLOSE, after):
            return after + len(TOOL_CALL_CLOSE), _entries(payload, text[start:stop], known)
    close = text.find(TOOL_CALL_CLOSE, body)
    next_open = text.find(TOOL_CALL_OPEN, body)
    if close >= 0 and (next_open < 0 or close < next_open):
        return close + len(TOOL_CALL_CLOSE), _parse_block(text[body:close], known)
    end = len(text) if next_open < 0 else next_open
    raw = text[body:end].strip()
    return end, [_invalid(_guess_name(raw), raw, "the tool call is not closed with </tool_call>")]


def split_tool_calls(
    calls: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split `parse_tool_calls` output into ``(tool_calls, invalid_tool_calls)``."""
    valid = [dict(c) for c in calls if c.get("type") == "tool_call"]
    invalid = [dict(c) for c in calls if c.get("type") == "invalid_tool_call"]
    return valid, invalid


def parse_ai_message(text: str, tool_names: Sequence[str] | None = None) -> AIMessage:
    """Build the ``AIMessage`` for generated text: content, ``tool_calls`` and
    ``invalid_tool_calls`` (see `parse_tool_calls`)."""
    content, calls = parse_tool_calls(text, tool_names)
    valid, invalid = split_tool_calls(calls)
    return AIMessage(content=content, tool_calls=valid, invalid_tool_calls=invalid)


def _new_call_id() -> str:
    return "call_" + uuid.uuid4().hex


def _invalid(name: Any, raw: str, error: str) -> dict[str, Any]:
    return dict(
        invalid_tool_call(
            name=name if isinstance(name, str) else None,
            args=raw,
            id=_new_call_id(),
            error=error,
        )
    )


def _parse_block(body: str, known: set[str] | None) -> list[dict[str, Any]]:
    raw = body.strip()
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return [_invalid(_guess_name(raw), raw, f"the tool call is not valid JSON: {exc}")]
    return _entries(payload, raw, known)


def _entries(payload: Any, raw: str, known: set[str] | None) -> list[dict[str, Any]]:
    if isinstance(payload, list) and payload:
        return [_parse_call(item, json.dumps(item, ensure_ascii=False), known) for item in payload]
    return [_parse_call(payload, raw, known)]


def _parse_call(payload: Any, raw: str, known: set[str] | None) -> dict[str, Any]:
    if not isinstance(payload, dict):
        return _invalid(None, raw, "the tool call must be a JSON object with name and arguments")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return _invalid(None, raw, "the tool call has no string 'name'")
    key = "arguments" if "arguments" in payload else "parameters"
    args = payload.get(key, {})
    raw_args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    if isinstance(args, str):  # some models JSON-encode the arguments a second time
        try:
            args = json.loads(args)
        except ValueError:
            return _invalid(name, raw_args, "the tool call's arguments are not valid JSON")
    if not isinstance(args, dict):
        return _invalid(
            name, raw_args, f"the tool call's arguments must be a JSON object, got {args!r}"
        )
    if known is not None and name not in known:
        return _invalid(name, raw_args, f"unknown tool {name!r}; known tools: {sorted(known)}")
    return dict(tool_call(name=name, args=args, id=_new_call_id()))


def _guess_name(raw: str) -> str | None:
    match = re.search(r'"name"\s*:\s*"([^"\\]*)"', raw)
    return match.group(1) if match else None
