"""Prompts: chat messages → prompt text → token ids, and trimming a prompt to the context.

The one home of the prompt the backbone sees; the chat model, the read routine, training,
evaluation, baselines and benchmarks all build their prompts here (a write renders its
segments message by message, `segments.encode_segments`):

1. `render_messages` turns LangChain messages (and tools) into chat-template dicts, and
   `render_prompt` applies the tokenizer's chat template to them (the final prompt text);
   `history_messages` turns a written history (memory segment dicts) into messages.
2. `prompt_ids` is that text as ``[1, T]`` token ids (`text_ids`: the tokenization the
   template's own special tokens assume, no extra ones); `chat_ids` renders a plain
   ``{"role", "content"}`` chat without the generation header, for scoring text.
3. `fit_to_context` keeps the newest messages whose prompt fits a token budget.

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

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

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

from .tool_calling import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolChoiceMode,
    format_tool_call,
    function_of,
    normalize_tool_choice,
    to_tool_schemas,
    tool_names,
)

__all__ = [
    "chat_ids",
    "content_text",
    "fit_to_context",
    "history_messages",
    "message_role",
    "prompt_ids",
    "render_messages",
    "render_prompt",
    "supports_tools",
    "text_ids",
    "tools_system_section",
]

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


def history_messages(history: Sequence[Mapping[str, str]]) -> list[BaseMessage]:
    """A written history (``{"role", "content", "source"}`` segment dicts) as prompt messages,
    for putting it in the prompt instead of memory (the full-history ceiling, the teacher's
    input): tool results quoted in a user turn, as rendered for backbones without a tool role."""
    out: list[BaseMessage] = []
    for message in history:
        role, content = message["role"], message["content"]
        if role == "assistant":
            out.append(AIMessage(content))
        elif role == "tool":
            name = str(message.get("source", "tool")).removeprefix("tool:")
            out.append(HumanMessage(f'<tool_response name="{name}">\n{content}\n</tool_response>'))
        else:
            out.append(HumanMessage(content))
    return out


# --------------------------------------------------------------------------------------
# Token ids and the context
# --------------------------------------------------------------------------------------


def text_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """``[1, T]`` ids of rendered prompt text. No special tokens are added: the chat template
    has written its own (a BOS added again would be a token the model never saw there)."""
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def prompt_ids(
    tokenizer: Any,
    messages: Sequence[BaseMessage],
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    *,
    add_generation_prompt: bool = True,
) -> torch.Tensor:
    """``[1, T]`` ids of the prompt the backbone sees for ``messages`` (and tools): the
    `render_prompt` text, tokenized with `text_ids`."""
    text = render_prompt(
        tokenizer, list(messages), tools, tool_choice, add_generation_prompt=add_generation_prompt
    )
    return text_ids(tokenizer, text)


def chat_ids(tokenizer: Any, chat: Sequence[Mapping[str, str]]) -> torch.Tensor:
    """A whole chat rendered by the template as ``[1, T]`` ids, for scoring plain text.

    Only ``role`` and ``content`` are passed on, so chats with extra keys render the same."""
    messages = [{"role": m["role"], "content": m["content"]} for m in chat]
    return text_ids(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))


def fit_to_context(
    tokenizer: Any,
    messages: Sequence[BaseMessage],
    max_tokens: int,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
) -> tuple[list[BaseMessage], torch.Tensor]:
    """The newest messages whose prompt fits ``max_tokens``, and that prompt's ids.

    Messages are dropped from the oldest; a leading system message is always kept (and
    counted), and so is the newest message: when even it does not fit, the ids are longer
    than ``max_tokens`` and the caller decides (cut them to the last tokens, or drop it).
    The kept part is the longest suffix that fits, found by bisection (a prompt only gets
    shorter as older messages go), so a long history costs a few renders, not one per message.

    Returns:
        ``(kept, ids)``: the kept messages (system message first) and their `prompt_ids`.
    """
    messages = list(messages)
    system = messages[:1] if messages and isinstance(messages[0], SystemMessage) else []
    rest = messages[len(system) :]
    rendered: dict[int, torch.Tensor] = {}

    def ids_from(start: int) -> torch.Tensor:
        if start not in rendered:
            rendered[start] = prompt_ids(tokenizer, system + rest[start:], tools, tool_choice)
        return rendered[start]

    def fits(start: int) -> bool:
        return ids_from(start).shape[1] <= max_tokens

    lo, hi = 0, max(len(rest) - 1, 0)  # hi: the newest message alone, kept even if too long
    if not fits(0):
        lo = min(1, hi)
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
    return system + rest[lo:], ids_from(lo)
