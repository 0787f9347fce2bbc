"""Tool calling for a frozen chat backbone: schemas, prompt rendering, parsing, forced calls.

Everything here is independent of generation; the chat model combines it with its decode loop:

1. `to_tool_schemas` turns LangChain tools, pydantic models, Python functions or OpenAI-style
   dicts into validated OpenAI tool dicts ``{"type": "function", "function": {"name",
   "description", "parameters"}}`` with unique names.
2. `normalize_tool_choice` turns any ``tool_choice`` spelling into ``(mode, forced_name)``.
3. `render_prompt` (built on `render_messages`) renders LangChain messages into the prompt text.
4. `JsonSchemaConstraint` masks next-token logits so a *required* call is always well formed.
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

Rendering rules (`render_messages`, `render_prompt`)
----------------------------------------------------
Content: a message's content is a string or a list of blocks. Strings and ``{"type": "text"}``
blocks are concatenated without separator (like LangChain's ``message.text``); ``reasoning`` /
``thinking`` blocks and tool-call blocks (``tool_call``, ``tool_use``, ...) are dropped, the
latter because ``AIMessage.tool_calls`` carries the calls; ``image``, ``image_url``, ``audio``,
``input_audio``, ``video`` and ``file`` blocks raise ``ValueError`` naming the block type (the
backbone takes text only), as does any other unknown block type.

Roles: ``SystemMessage`` → ``system``, ``HumanMessage`` → ``user``, ``AIMessage`` →
``assistant``, ``ChatMessage`` → its own role. ``ToolMessage`` (and the legacy
``FunctionMessage``) depend on the mode:

(a) *Native mode*, when the tokenizer's chat template handles tools (its source mentions
    ``tools``, e.g. Qwen3): the tools are passed as ``apply_chat_template(..., tools=...)`` and
    the template lays everything out. ``AIMessage.tool_calls`` become
    ``{"tool_calls": [{"type": "function", "id": ..., "function": {"name": ...,
    "arguments": {...}}}]}`` (arguments as a dict, as transformers documents) and tool results
    become ``{"role": "tool", "content": ..., "tool_call_id": ..., "name": ...}``.

(b) *Prompted mode*, for plain ChatML templates (SmolLM2): a tools section is appended to the
    leading system message (one is created when the conversation has none)::

        # Tools

        You may call one or more of the following tools to help with the user's request.
        <tools>
        {"name": "...", "description": "...", "parameters": {...JSON schema...}}
        </tools>

        To call a tool, reply with one line per call, in exactly this format:
        <tool_call>{"name": "<tool name>", "arguments": {<arguments as a JSON object>}}</tool_call>
        ...

    An ``AIMessage`` with tool calls renders as its text followed by one ``<tool_call>`` line
    per call, in the very format above (so the model sees its earlier calls the way it is asked
    to write them). Tool results render as role ``user`` with content
    ``<tool_response name="...">\\n...\\n</tool_response>`` (``status="error"`` is added
    for failed tools; call ids are omitted, results follow the calls in order); consecutive
    results are merged into one user turn, one block per line. Why ``user`` and not ``tool``:
    SmolLM2's template would happily print ``<|im_start|>tool``, but the model only ever saw
    ``system``/``user``/``assistant`` headers, so an unseen role is out of distribution for a
    135M model; a user turn that quotes the result in explicit tags is what it understands
    best. It is also how SmolLM2's published tool-use prompt and Qwen's own templates render
    the ``tool`` role (``<|im_start|>user`` + ``<tool_response>``).

``tool_choice``: ``"none"`` offers no tools (earlier calls in the history are still rendered);
in prompted mode ``"required"`` adds "You must call at least one tool" and a forced name adds
"You must call the tool `<name>`" to the tools section. Native mode passes all tools and adds no
text (templates have no slot for it); `JsonSchemaConstraint` enforces required calls in both.

Constrained decoding (`JsonSchemaConstraint`)
---------------------------------------------
The constraint accepts exactly ``<tool_call>{"name": "<allowed name>", "arguments": <JSON>}
</tool_call>`` (no space before ``</tool_call>``; with ``multiline=True``, the default when
the chat template renders tools, Qwen3's layout ``<tool_call>\\n{...}\\n</tool_call>``)
followed by the end token, where ``<JSON>`` is written with ``json.dumps``' default
separators (``", "`` and ``": "``, no other whitespace) and is
valid for that tool's parameters schema under this subset of JSON schema:

* ``object`` with ``properties``: properties appear in schema order; every ``required`` one
  appears, optional ones may be skipped; no other keys. An object without ``properties`` (or
  with only ``additionalProperties``) is a free-form object: string keys, values of the
  ``additionalProperties`` schema or any JSON.
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
import copy
import json
import math
import re
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json_schema import dereference_refs

__all__ = [
    "DEFAULT_TOP_K",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "JsonSchemaConstraint",
    "ToolChoiceMode",
    "format_tool_call",
    "normalize_tool_choice",
    "parse_ai_message",
    "parse_tool_calls",
    "render_messages",
    "render_prompt",
    "split_tool_calls",
    "supports_tools",
    "to_tool_schemas",
    "tool_names",
    "tools_system_section",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
DEFAULT_TOP_K = 200
"""Candidates `JsonSchemaConstraint` tests before falling back to a scan of the vocabulary."""

ToolChoiceMode = Literal["auto", "none", "required"]

# OpenAI's rule plus dots: names are written into prompts and matched in generated text.
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_JSON_DECODER = json.JSONDecoder()
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_MEDIA_BLOCK_TYPES = frozenset(
    {"image", "image_url", "audio", "input_audio", "video", "file", "document"}
)
_DROPPED_BLOCK_TYPES = frozenset(
    {
        "reasoning",
        "thinking",
        "redacted_thinking",
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "tool_use",
        "function_call",
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
    }
)

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
    return [_function_of(schema)["name"] for schema in schemas]


def _function_of(schema: Mapping[str, Any]) -> Mapping[str, Any]:
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
# Rendering
# --------------------------------------------------------------------------------------


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tools itself (native mode).

    True when the template source mentions ``tools`` as a word (Qwen3, Llama 3.1, Mistral...);
    SmolLM2's plain ChatML template does not.
    """
    template = getattr(tokenizer, "chat_template", None)
    sources = template.values() if isinstance(template, Mapping) else [template]
    return any(isinstance(s, str) and re.search(r"\btools\b", s) for s in sources)


def format_tool_call(name: str, args: Mapping[str, Any], *, multiline: bool = False) -> str:
    """One call in the canonical format, e.g. ``<tool_call>{"name": "f", "arguments":
    {"x": 1}}</tool_call>`` (``multiline``: Qwen3's layout with newlines inside the tags)."""
    body = json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)
    sep = "\n" if multiline else ""
    return f"{TOOL_CALL_OPEN}{sep}{body}{sep}{TOOL_CALL_CLOSE}"


def tools_system_section(
    schemas: Sequence[Mapping[str, Any]],
    mode: ToolChoiceMode = "auto",
    forced_name: str | None = None,
) -> str:
    """The prompted-mode system-prompt section that lists tools and the call format."""
    lines = [
        "# Tools",
        "",
        "You may call one or more of the following tools to help with the user's request.",
        "<tools>",
    ]
    for schema in schemas:
        function = _function_of(schema)
        entry = {
            "name": function["name"],
            "description": function.get("description") or "",
            "parameters": function.get("parameters") or {"type": "object", "properties": {}},
        }
        lines.append(json.dumps(entry, ensure_ascii=False))
    lines += [
        "</tools>",
        "",
        "To call a tool, reply with one line per call, in exactly this format:",
        TOOL_CALL_OPEN
        + '{"name": "<tool name>", "arguments": {<arguments as a JSON object>}}'
        + TOOL_CALL_CLOSE,
        "The arguments must match the tool's parameters schema. Each result comes back in a "
        'user message as <tool_response name="<tool name>">...</tool_response>. When no tool '
        "is needed, answer normally.",
    ]
    if forced_name is not None:
        lines.append(f"You must call the tool `{forced_name}` now.")
    elif mode == "required":
        lines.append("You must call at least one tool now.")
    return "\n".join(lines)


def render_messages(
    tokenizer: Any,
    messages: Sequence[BaseMessage],
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    *,
    native: bool | None = None,
) -> list[dict[str, Any]]:
    """Convert LangChain messages into chat-template dicts for ``apply_chat_template``.

    See the module docstring for the rules. In native mode the tools are *not* part of the
    result: pass them to ``apply_chat_template(tools=...)`` (as `render_prompt` does).

    Args:
        tokenizer: The backbone's tokenizer (only its chat template is inspected).
        messages: The conversation.
        tools: Tools of any kind accepted by `to_tool_schemas`, or ``None``.
        tool_choice: Any value accepted by `normalize_tool_choice`.
        native: Force native (``True``) or prompted (``False``) mode; ``None`` decides with
            `supports_tools`.

    Returns:
        A list of ``{"role", "content", ...}`` dicts; every ``content`` is a string.

    Raises:
        ValueError: media content blocks, unknown block types, or a bad ``tool_choice``.
        TypeError: an unsupported message type.
    """
    schemas = to_tool_schemas(tools)
    mode, forced = normalize_tool_choice(tool_choice, tool_names(schemas))
    offered = [] if mode == "none" else schemas
    if native is None:
        native = supports_tools(tokenizer)
    if native:
        return _render_native(messages)
    return _render_prompted(messages, offered, mode, forced)


def render_prompt(
    tokenizer: Any,
    messages: Sequence[BaseMessage],
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    *,
    add_generation_prompt: bool = True,
    native: bool | None = None,
    **template_kwargs: Any,
) -> str:
    """Render the conversation (and tools) into the backbone's final prompt text.

    Args:
        tokenizer: The backbone's tokenizer; its chat template is applied.
        messages, tools, tool_choice, native: As for `render_messages`.
        add_generation_prompt: Append the assistant header so the model writes the reply.
        **template_kwargs: Extra template variables (e.g. ``enable_thinking=False`` for
            Qwen3).

    Returns:
        The prompt string (not tokenized).
    """
    schemas = to_tool_schemas(tools)
    mode, _ = normalize_tool_choice(tool_choice, tool_names(schemas))
    if native is None:
        native = supports_tools(tokenizer)
    conversation = render_messages(tokenizer, messages, schemas, tool_choice, native=native)
    if native and schemas and mode != "none":
        template_kwargs["tools"] = schemas
    prompt = tokenizer.apply_chat_template(
        conversation,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **template_kwargs,
    )
    if not isinstance(prompt, str):  # defensive: some tokenizers return a one-item list
        prompt = prompt[0]
    return prompt


def _text_of(content: Any, role: str) -> str:
    """Text of a message's content; media blocks raise ``ValueError`` (text-only backbone)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        content = [content]
    if not isinstance(content, Sequence):
        raise ValueError(f"Unsupported {role} message content of type {type(content).__name__}")
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in _DROPPED_BLOCK_TYPES:
            continue
        elif kind in _MEDIA_BLOCK_TYPES:
            raise ValueError(
                f"A {role} message contains a {kind!r} content block, but the backbone takes "
                f"text only; send text blocks or a string"
            )
        else:
            raise ValueError(
                f"A {role} message contains an unsupported content block of type {kind!r}; "
                f"the backbone takes text only (strings or 'text' blocks)"
            )
    return "".join(parts)


def _role_of(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ChatMessage):
        return message.role
    raise TypeError(f"Unsupported message type {type(message).__name__}")


def _tool_result_of(message: BaseMessage, names_by_id: dict[str, str]) -> dict[str, Any]:
    """``{"tool_call_id", "name", "content", "status"}`` of a ToolMessage/FunctionMessage."""
    if isinstance(message, ToolMessage):
        call_id = message.tool_call_id
        name = message.name or names_by_id.get(call_id) or ""
        status = message.status
    else:
        call_id, name, status = "", message.name, "success"
    return {
        "tool_call_id": call_id,
        "name": name,
        "content": _text_of(message.content, "tool"),
        "status": status,
    }


def _render_native(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        if isinstance(message, ToolMessage | FunctionMessage):
            result = _tool_result_of(message, names_by_id)
            entry = {"role": "tool", "content": result["content"]}
            if result["tool_call_id"]:
                entry["tool_call_id"] = result["tool_call_id"]
            if result["name"]:
                entry["name"] = result["name"]
            rendered.append(entry)
            continue
        role = _role_of(message)
        entry = {"role": role, "content": _text_of(message.content, role)}
        if isinstance(message, AIMessage) and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                if call.get("id"):
                    names_by_id[call["id"]] = call["name"]
                calls.append(
                    {
                        "type": "function",
                        "id": call.get("id") or "",
                        "function": {"name": call["name"], "arguments": dict(call["args"])},
                    }
                )
            entry["tool_calls"] = calls
        rendered.append(entry)
    return rendered


def _render_prompted(
    messages: Sequence[BaseMessage],
    schemas: list[dict[str, Any]],
    mode: ToolChoiceMode,
    forced: str | None,
) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    previous_was_tool = False
    for message in messages:
        if isinstance(message, ToolMessage | FunctionMessage):
            block = _tool_response_block(_tool_result_of(message, names_by_id))
            if previous_was_tool:
                rendered[-1]["content"] += "\n" + block
            else:
                rendered.append({"role": "user", "content": block})
            previous_was_tool = True
            continue
        previous_was_tool = False
        role = _role_of(message)
        text = _text_of(message.content, role)
        if isinstance(message, AIMessage) and message.tool_calls:
            lines = [text] if text.strip() else []
            for call in message.tool_calls:
                if call.get("id"):
                    names_by_id[call["id"]] = call["name"]
                lines.append(format_tool_call(call["name"], call["args"]))
            text = "\n".join(lines)
        rendered.append({"role": role, "content": text})
    if schemas:
        section = tools_system_section(schemas, mode, forced)
        if rendered and rendered[0]["role"] == "system":
            head = rendered[0]["content"]
            rendered[0]["content"] = f"{head}\n\n{section}" if head.strip() else section
        else:
            rendered.insert(0, {"role": "system", "content": section})
    return rendered


def _tool_response_block(result: Mapping[str, Any]) -> str:
    # The call id is left out: ids are long random strings that only distract a small model;
    # results follow the calls in order and carry the tool's name.
    attrs = f' name="{_xml_attr(result["name"])}"'
    if result["status"] == "error":
        attrs += ' status="error"'
    return f"<tool_response{attrs}>\n{result['content']}\n</tool_response>"


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


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
        if properties:
            required = set(schema.get("required", []))
            node.props = tuple(
                (key, self.compile(sub, depth + 1), key in required)
                for key, sub in properties.items()
            )
        else:
            extra = schema.get("additionalProperties", True)
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
# Constrained decoding: token table and the constraint
# --------------------------------------------------------------------------------------


class _TokenTable:
    """Decoded text of every usable token of one tokenizer, sorted for prefix scans.

    A token is unusable (``None``) when it is special (control tokens such as ``<|im_end|>``
    must never appear inside JSON), decodes to nothing, or decodes to an incomplete UTF-8
    sequence (``"\\ufffd"``). Texts are decoded after a reference token and the reference's
    text is removed, so SentencePiece tokenizers keep their leading spaces.
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
        order = sorted((t, i) for i, t in enumerate(self.texts) if t is not None)
        self.sorted_texts = [t for t, _ in order]
        self.sorted_ids = [i for _, i in order]
        self.single_chars = {t for t in self.sorted_texts if len(t) == 1}


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

    Raises:
        ValueError: no schemas, an unknown ``forced_name``, an unsupported schema, no end
            token, or a tokenizer lacking a single-character token the grammar may need.
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
    ) -> None:
        functions = [_function_of(schema) for schema in schemas]
        if not functions:
            raise ValueError("JsonSchemaConstraint needs at least one tool schema")
        names = [f.get("name") for f in functions]
        if forced_name is not None and forced_name not in names:
            raise ValueError(f"forced_name {forced_name!r} is not one of the tools {names}")
        if min(max_string_length, max_array_items, max_object_keys, top_k) < 1:
            raise ValueError("top_k and the length limits must be >= 1")
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id=...")
        self.forced_name = forced_name
        self.top_k = top_k
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
        self._grammar = _Seq([_Lit([TOOL_CALL_OPEN + nl + '{"name": ']), _Union(branches)])
        self._table = _token_table(tokenizer)
        missing = (_literal_chars(self._grammar) | _GRAMMAR_CHARS) - self._table.single_chars
        if missing:
            raise ValueError(
                f"The tokenizer has no single-character token for {sorted(missing)}, so "
                f"constrained decoding could dead-end; rename the tool/enum value using them"
            )
        self.reset()

    def reset(self) -> None:
        """Start over (a new generation)."""
        self._states = tuple(_push(self._grammar, None))
        self._consumed: list[int] = []
        self._text: list[str] = []

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
        return _scan(self._states, table.sorted_texts, table.sorted_ids)

    def _allowed_top_k(self, logits: torch.Tensor, vocab: int) -> list[int]:
        k = min(self.top_k, vocab)
        top = torch.topk(logits.detach(), k).indices.tolist()
        texts = self._table.texts
        size = len(texts)
        candidates = sorted((texts[i], i) for i in top if i < size and texts[i] is not None)
        return _scan(self._states, [t for t, _ in candidates], [i for _, i in candidates])

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
        text = self._table.texts[token] if 0 <= token < len(self._table.texts) else None
        states = _feed_states(self._states, text) if text is not None else ()
        if not states:
            raise ValueError(
                f"token {token} ({text!r}) does not continue the tool call {self.text!r}"
            )
        self._states = states
        self._consumed.append(token)
        self._text.append(text)
