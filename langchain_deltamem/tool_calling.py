"""Tool calling for a frozen chat backbone: schemas, prompt rendering, parsing, forced calls.

Everything here is independent of generation; the chat model combines it with its decode loop:

1. `to_tool_schemas` turns LangChain tools, pydantic models, Python functions or OpenAI-style
   dicts into validated OpenAI tool dicts ``{"type": "function", "function": {"name",
   "description", "parameters"}}`` with unique names.
2. `normalize_tool_choice` turns any ``tool_choice`` spelling into ``(mode, forced_name)``.
3. `render_prompt` (built on `render_messages`) renders LangChain messages into the prompt text.
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
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolChoiceMode",
    "content_text",
    "format_tool_call",
    "function_of",
    "message_role",
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
        function = function_of(schema)
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


def content_text(content: Any, role: str) -> str:
    """Text of a message's content: strings and text blocks joined, reasoning and tool-call
    blocks dropped, media blocks refused with ``ValueError`` (text-only backbone)."""
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


_CHAT_MESSAGE_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "system": "system",
}


def message_role(message: BaseMessage) -> str:
    """``system``, ``user`` or ``assistant`` for a non-tool message (``ChatMessage`` roles
    ``human``/``ai`` included); any other role raises ``ValueError`` naming it."""
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ChatMessage):
        role = _CHAT_MESSAGE_ROLES.get(message.role)
        if role is None:
            raise ValueError(
                f"ChatMessage role {message.role!r} is not supported; use one of "
                f"{sorted(_CHAT_MESSAGE_ROLES)} or a ToolMessage for tool results"
            )
        return role
    raise ValueError(f"Unsupported message type {type(message).__name__} ({message.type!r})")


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
        "content": content_text(message.content, "tool"),
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
        role = message_role(message)
        entry = {"role": role, "content": content_text(message.content, role)}
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
        role = message_role(message)
        text = content_text(message.content, role)
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
