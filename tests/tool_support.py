"""Tools shared by the tool-calling and JSON-constraint tests, and a template that renders tools.

The tools cover a LangChain tool, a nested pydantic model, a plain function, a raw JSON schema
with enums and ``anyOf``, one with ``$ref``/``allOf`` and one without arguments.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.tools import tool
from pydantic import BaseModel, Field


@tool
def get_weather(city: str, units: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather for a city."""
    return f"sunny in {city}"


class Address(BaseModel):
    street: str
    number: int = Field(ge=0)


class CreateUser(BaseModel):
    """Create a user account."""

    name: str = Field(min_length=1, max_length=12)
    age: int | None = None
    role: Literal["admin", "user", "guest"]
    addresses: list[Address]
    scores: dict[str, int]
    active: bool
    weight: float
    matrix: list[list[int]] = []


def search(query: str, limit: int = 10) -> list[str]:
    """Search the web.

    Args:
        query: What to look for.
        limit: How many results.
    """
    return []


RAW_SCHEMA = {
    "type": "object",
    "properties": {
        "tags": {
            "type": "array",
            "items": {"type": "string", "enum": ["a", "ab", "abc"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "count": {"type": "integer", "enum": [1, 10, 100]},
        "payload": {},
        "mode": {"type": ["string", "null"]},
        "label": {"type": "string", "minLength": 2, "maxLength": 5},
        "flag": {"const": True},
    },
    "required": ["tags", "count", "payload", "label"],
}
RAW_TOOL = {"type": "function", "function": {"name": "raw", "parameters": RAW_SCHEMA}}

REF_TOOL = {
    "name": "move",
    "description": "Move to a point.",
    "parameters": {
        "type": "object",
        "$defs": {
            "Point": {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x", "y"],
            }
        },
        "properties": {"to": {"$ref": "#/$defs/Point"}, "speed": {"allOf": [{"type": "integer"}]}},
        "required": ["to"],
    },
}

PING_TOOL = {"name": "ping", "description": "Ping.", "parameters": {}}


TOOLS_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n' }}
    {%- endif %}
    {{- '# Tools\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'tool' %}
        {{- '<|im_start|>user\\n<tool_response id="' + message.tool_call_id + '" name="' }}
        {{- message.name + '">\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' + message.content }}
        {%- for tc in message.tool_calls or [] %}
            {{- '\\n<tool_call>\\n{"name": "' + tc.function.name + '", "arguments": ' }}
            {{- (tc.function.arguments | tojson) + '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role != 'system' %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
"""A small Qwen3-like template that renders ``tools`` itself (native mode)."""
