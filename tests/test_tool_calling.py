"""Tool calling: schema conversion, tool_choice, rendering, parsing and forced-call decoding.

Most tests run offline on tiny tokenizers: a duck-typed one with a hand-made vocabulary (for
the constraint) and a one-word ``tokenizers`` tokenizer carrying a chat template (for
rendering). Tests marked ``slow`` use the real SmolLM2 tokenizer (and model) from the shared
``embedded``/``smollm2`` fixtures: ``backbones.py`` has no tokenizer-only loader.
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any, Literal

import pytest
import torch
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from langchain_deltamem.json_constraint import JsonSchemaConstraint
from langchain_deltamem.prompts import render_messages, render_prompt, supports_tools
from langchain_deltamem.tool_calling import (
    format_tool_call,
    normalize_tool_choice,
    parse_ai_message,
    parse_tool_calls,
    split_tool_calls,
    to_tool_schemas,
    tool_names,
)

CALL_ID_RE = re.compile(r"^call_[0-9a-f]{32}$")

# --------------------------------------------------------------------------------------
# Tools used throughout
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# A tiny JSON-schema validator (the subset the constraint promises) for the tests
# --------------------------------------------------------------------------------------


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def validate(value: Any, schema: Any, root: dict) -> bool:
    """Whether ``value`` is valid for ``schema`` and objects list keys in schema order."""
    if schema is True or not schema:
        return True
    schema = _resolve(schema, root)
    if "const" in schema:
        return _same_json(value, schema["const"])
    if "enum" in schema:
        return any(_same_json(value, option) for option in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return any(validate(value, alt, root) for alt in schema[key])
    if "allOf" in schema:
        return all(validate(value, part, root) for part in schema["allOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return any(validate(value, {**schema, "type": k}, root) for k in kind)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind is None:
        return True
    if kind == "string":
        return isinstance(value, str) and schema.get("minLength", 0) <= len(value) <= schema.get(
            "maxLength", math.inf
        )
    if kind in ("integer", "number"):
        ok_type = int if kind == "integer" else int | float
        if not isinstance(value, ok_type) or isinstance(value, bool):
            return False
        minimum = schema.get("minimum", schema.get("exclusiveMinimum"))
        return minimum is None or minimum < 0 or value >= 0
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf)
            and all(validate(item, schema.get("items", {}), root) for item in value)
        )
    if kind == "object":
        if not isinstance(value, dict):
            return False
        properties = schema.get("properties") or {}
        if properties:
            order = list(properties)
            if not set(value) <= set(order) or not set(schema.get("required", [])) <= set(value):
                return False
            if [k for k in order if k in value] != list(value):
                return False
            return all(validate(v, properties[k], root) for k, v in value.items())
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return not value
        return all(
            validate(v, extra if isinstance(extra, dict) else {}, root) for v in value.values()
        )
    raise AssertionError(f"unexpected schema type {kind!r}")


def test_validator_sanity() -> None:
    """The test validator itself accepts and rejects what it should."""
    schema = to_tool_schemas([CreateUser])[0]["function"]["parameters"]
    good = {
        "name": "bo",
        "role": "user",
        "addresses": [{"street": "x", "number": 3}],
        "scores": {"a": 1},
        "active": True,
        "weight": 1.5,
    }
    assert validate(good, schema, schema)
    assert not validate({**good, "role": "boss"}, schema, schema)
    assert not validate({**good, "active": 1}, schema, schema)
    assert not validate({k: v for k, v in good.items() if k != "name"}, schema, schema)
    assert not validate({**good, "extra": 1}, schema, schema)
    assert not validate(dict(reversed(list(good.items()))), schema, schema)  # order


# --------------------------------------------------------------------------------------
# Tokenizers for the tests
# --------------------------------------------------------------------------------------


class FakeTokenizer:
    """Duck-typed tokenizer over a fixed vocabulary: decoding concatenates token texts.

    Ids 0 and 1 are special (``<eos>``, ``<|im_start|>``); the rest are every printable ASCII
    character (minus ``exclude``), a newline, a tab and multi-character pieces that straddle
    JSON structure, plus one token decoding to U+FFFD (an incomplete byte sequence).
    """

    PIECES = (
        "<tool_call>",
        "</tool_call>",
        "<tool",
        "_call",
        '{"',
        '": ',
        '": "',
        '", "',
        '"}',
        "}}",
        '"]',
        '["',
        "[{",
        "}, {",
        ", ",
        ', "',
        "name",
        "arguments",
        "null",
        "true",
        "false",
        "10",
        "100",
        "0.",
        "e+",
        "-1",
        "\\u00",
        "\\n",
        '\\"',
        "celsius",
        "fahrenheit",
        "get_weather",
        "CreateUser",
        "admin",
        " the",
        "hello",
        " world",
        "Paris",
        "é",
        "日本",
        '"\n',
        "\ufffd",
        "ab",
        "abc",
        '"a',
    )

    def __init__(self, exclude: str = "") -> None:
        singles = [c for c in string.printable if c not in "\r\x0b\x0c" and c not in exclude]
        self.vocab = ["<eos>", "<|im_start|>", *dict.fromkeys(singles), *self.PIECES]
        self.eos_token_id = 0
        self.all_special_ids = [0, 1]
        self.added_tokens_decoder: dict[int, Any] = {}
        self._ids = {text: i for i, text in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids: list[int], skip_special_tokens: bool = False, **_: Any) -> str:
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return "".join(self.vocab[i] for i in ids if i not in skip)

    def batch_decode(self, batch: list[list[int]], **kwargs: Any) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in batch]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Greedy longest-match tokenization."""
        out, i = [], 0
        longest = max(len(v) for v in self.vocab)
        while i < len(text):
            for size in range(min(longest, len(text) - i), 0, -1):
                if text[i : i + size] in self._ids and self._ids[text[i : i + size]] > 1:
                    out.append(self._ids[text[i : i + size]])
                    i += size
                    break
            else:
                raise ValueError(f"cannot tokenize {text[i]!r}")
        return out


CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's chat template, verbatim."""

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


def template_tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A one-word tokenizer that only carries a chat template (rendering is text-only)."""
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_end|>": 1}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", unk_token="<unk>"
    )
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chatml() -> PreTrainedTokenizerFast:
    return template_tokenizer(CHATML)


@pytest.fixture(scope="module")
def native() -> PreTrainedTokenizerFast:
    return template_tokenizer(TOOLS_TEMPLATE)


@pytest.fixture(scope="module")
def fake() -> FakeTokenizer:
    return FakeTokenizer()


# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------


def test_schema_from_langchain_tool() -> None:
    (schema,) = to_tool_schemas([get_weather])
    function = schema["function"]
    assert schema["type"] == "function"
    assert function["name"] == "get_weather"
    assert function["description"] == "Get the current weather for a city."
    assert function["parameters"]["required"] == ["city"]
    assert function["parameters"]["properties"]["units"]["enum"] == ["celsius", "fahrenheit"]


def test_schema_from_pydantic_model() -> None:
    (schema,) = to_tool_schemas([CreateUser])
    parameters = schema["function"]["parameters"]
    assert schema["function"]["name"] == "CreateUser"
    assert list(parameters["properties"])[:3] == ["name", "age", "role"]
    assert "age" not in parameters["required"]


def test_schema_from_function() -> None:
    (schema,) = to_tool_schemas([search])
    function = schema["function"]
    assert function["name"] == "search"
    assert function["description"] == "Search the web."
    assert function["parameters"]["properties"]["query"]["description"] == "What to look for."
    assert function["parameters"]["required"] == ["query"]


def test_schema_from_openai_dicts() -> None:
    schemas = to_tool_schemas([RAW_TOOL, REF_TOOL, PING_TOOL])
    assert tool_names(schemas) == ["raw", "move", "ping"]
    assert schemas[0]["function"]["description"] == ""  # defaulted
    assert schemas[0]["function"]["parameters"] == RAW_SCHEMA
    assert schemas[0]["function"]["parameters"] is not RAW_SCHEMA  # deep copy
    assert schemas[2]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_schema_from_json_schema_with_title() -> None:
    (schema,) = to_tool_schemas(
        [{"title": "lookup", "description": "Look up.", "type": "object", "properties": {}}]
    )
    assert schema["function"]["name"] == "lookup"


def test_schema_same_tool_twice_is_kept_once() -> None:
    """LangChain's standard bind_tools test passes a model and its JSON schema (which differ
    only in ``title`` annotations)."""
    schemas = to_tool_schemas([CreateUser, get_weather, CreateUser.model_json_schema()])
    assert tool_names(schemas) == ["CreateUser", "get_weather"]
    assert tool_names(to_tool_schemas([get_weather, get_weather])) == ["get_weather"]


def test_schema_missing_parameters_defaults_to_empty_object() -> None:
    (schema,) = to_tool_schemas([{"type": "function", "function": {"name": "now"}}])
    assert schema["function"]["parameters"] == {"type": "object", "properties": {}}
    assert to_tool_schemas(None) == []
    assert to_tool_schemas(()) == []


@pytest.mark.parametrize(
    ("tools", "error", "match"),
    [
        ([get_weather, {"name": "get_weather", "parameters": {"properties": {}}}], ValueError,
         "Duplicate tool name 'get_weather'"),
        ([{"name": "x", "parameters": {"properties": {"title": {"type": "string"}}}},
          {"name": "x", "parameters": {"properties": {"title": {"type": "integer"}}}}],
         ValueError, "Duplicate tool name 'x'"),
        ([{"type": "function", "function": {"name": "bad name"}}], ValueError, "invalid name"),
        ([{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}],
         ValueError, "object schema"),
        ([{"type": "function", "function": {"name": "x", "parameters": {
            "type": "object", "properties": {}, "required": ["y"]}}}], ValueError, "required"),
        ([{"type": "function", "function": {"name": "x", "description": 3}}], ValueError,
         "description"),
        ([{"foo": 1}], TypeError, r"tools\[0\]"),
        ([42], TypeError, r"tools\[0\] \(int\)"),
        (get_weather, TypeError, "list or tuple"),
        ({"name": "x"}, TypeError, "list or tuple"),
    ],
)  # fmt: skip
def test_schema_errors(tools: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        to_tool_schemas(tools)


# --------------------------------------------------------------------------------------
# tool_choice
# --------------------------------------------------------------------------------------

NAMES = ["get_weather", "search"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ("auto", None)),
        ("auto", ("auto", None)),
        ({"type": "auto"}, ("auto", None)),
        ("none", ("none", None)),
        (False, ("none", None)),
        ({"type": "none"}, ("none", None)),
        ("any", ("required", None)),
        ("required", ("required", None)),
        ({"type": "any"}, ("required", None)),
        (True, ("required", None)),
        ("search", ("required", "search")),
        ({"type": "function", "function": {"name": "get_weather"}}, ("required", "get_weather")),
        ({"type": "tool", "name": "search"}, ("required", "search")),
    ],
)
def test_tool_choice_normalisation(choice: Any, expected: tuple) -> None:
    assert normalize_tool_choice(choice, NAMES) == expected


def test_tool_choice_true_with_one_tool_forces_it() -> None:
    assert normalize_tool_choice(True, ["only"]) == ("required", "only")


@pytest.mark.parametrize(
    ("choice", "names", "match"),
    [
        ("nope", NAMES, "unknown tool 'nope'"),
        ({"type": "function", "function": {"name": "nope"}}, NAMES, "unknown tool"),
        ("any", [], "no tools"),
        ("search", [], "no tools"),
        (3, NAMES, "Unsupported tool_choice"),
        ({"type": "function"}, NAMES, "Unsupported tool_choice"),
    ],
)
def test_tool_choice_errors(choice: Any, names: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalize_tool_choice(choice, names)


def test_tool_choice_none_and_auto_need_no_tools() -> None:
    assert normalize_tool_choice("none", []) == ("none", None)
    assert normalize_tool_choice("auto", []) == ("auto", None)


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def test_parse_single_call() -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    text = f"Let me check.\n{call}"
    content, calls = parse_tool_calls(text, NAMES)
    assert content == "Let me check."
    (call,) = calls
    assert call["type"] == "tool_call"
    assert call["name"] == "get_weather"
    assert call["args"] == {"city": "Paris"}
    assert CALL_ID_RE.match(call["id"])


def test_parse_qwen3_layout_and_multiple_calls() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "search", "arguments": {"query": "rain", "limit": 2}}\n</tool_call>'
    )
    content, calls = parse_tool_calls(text, NAMES)
    assert content == ""
    assert [(c["name"], c["args"]) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("search", {"query": "rain", "limit": 2}),
    ]
    assert len({c["id"] for c in calls}) == 2


def test_parse_variants() -> None:
    """A JSON list per block, "parameters" instead of "arguments", doubly-encoded args,
    missing arguments (= no arguments)."""
    text = (
        '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
        '</tool_call><tool_call>{"name": "c", "parameters": {"y": 2}}</tool_call>'
        '<tool_call>{"name": "d", "arguments": "{\\"z\\": 3}"}</tool_call>'
        '<tool_call>{"name": "e"}</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [(c["name"], c["args"]) for c in calls] == [
        ("a", {"x": 1}),
        ("b", {}),
        ("c", {"y": 2}),
        ("d", {"z": 3}),
        ("e", {}),
    ]


@pytest.mark.parametrize(
    ("block", "name", "args", "error"),
    [
        ('{"name": "search", "arguments": {"query": }', "search", '{"name": "search", '
         '"arguments": {"query": }', "not valid JSON"),
        ('{"name": "launch", "arguments": {}}', "launch", "{}", "unknown tool 'launch'"),
        ('{"name": "search", "arguments": [1, 2]}', "search", "[1, 2]", "must be a JSON object"),
        ('{"name": "search", "arguments": "nope"}', "search", "nope", "not valid JSON"),
        ('{"arguments": {}}', None, '{"arguments": {}}', "no string 'name'"),
        ('"search"', None, '"search"', "JSON object"),
    ],
)  # fmt: skip
def test_parse_malformed_call(block: str, name: str | None, args: str, error: str) -> None:
    text = f"Before <tool_call>{block}</tool_call> after"
    content, calls = parse_tool_calls(text, NAMES)
    assert content == text  # the malformed call's text is kept
    (call,) = calls
    assert call["type"] == "invalid_tool_call"
    assert call["name"] == name
    assert call["args"] == args
    assert error in call["error"]
    assert CALL_ID_RE.match(call["id"])


def test_parse_unclosed_call_is_invalid_and_kept() -> None:
    text = 'ok <tool_call>{"name": "search", "arguments": {"query": "x"'
    content, calls = parse_tool_calls(text, NAMES)
    assert content == text
    (call,) = calls
    assert call["type"] == "invalid_tool_call"
    assert call["name"] == "search"
    assert "not closed" in call["error"]


def test_parse_mixed_valid_and_invalid() -> None:
    good = '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
    bad = "<tool_call>{oops}</tool_call>"
    content, calls = parse_tool_calls(f"{good}\n{bad}\n{good}", NAMES)
    assert content == bad
    assert [c["type"] for c in calls] == ["tool_call", "invalid_tool_call", "tool_call"]
    valid, invalid = split_tool_calls(calls)
    assert len(valid) == 2 and len(invalid) == 1


def test_parse_without_calls_and_unknown_names_allowed() -> None:
    assert parse_tool_calls("  just text  ") == ("just text", [])
    _, calls = parse_tool_calls('<tool_call>{"name": "anything", "arguments": {}}</tool_call>')
    assert calls[0]["type"] == "tool_call"


def test_parse_ai_message() -> None:
    message = parse_ai_message(
        'Hi <tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>'
        "<tool_call>nope</tool_call>",
        NAMES,
    )
    assert isinstance(message, AIMessage)
    assert message.content == "Hi <tool_call>nope</tool_call>"
    assert [c["name"] for c in message.tool_calls] == ["search"]
    assert len(message.invalid_tool_calls) == 1
    assert message.invalid_tool_calls[0]["args"] == "nope"


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def conversation() -> list:
    return [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Paris and Rome?"),
        AIMessage(
            "Checking.",
            tool_calls=[
                {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"},
                {"name": "get_weather", "args": {"city": "Rome"}, "id": "c2"},
            ],
        ),
        ToolMessage("sunny", tool_call_id="c1"),
        ToolMessage("unknown city", tool_call_id="c2", status="error"),
        HumanMessage([{"type": "text", "text": "Thanks."}, " And tomorrow?"]),
    ]


def test_supports_tools(chatml, native) -> None:
    assert not supports_tools(chatml)
    assert supports_tools(native)
    assert not supports_tools(template_tokenizer("{{ messages }} no tool words"))


def test_prompted_rendering(chatml) -> None:
    rendered = render_messages(chatml, conversation(), [get_weather, search], "auto")
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user", "user"]
    system = rendered[0]["content"]
    assert system.startswith("Be brief.\n\n# Tools\n")
    tools_block = system.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line)["name"] for line in tools_block] == ["get_weather", "search"]
    listed = json.loads(tools_block[0])
    assert listed["description"] == "Get the current weather for a city."
    assert listed["parameters"]["required"] == ["city"]
    assert '<tool_call>{"name": "<tool name>", "arguments": {' in system
    assert "You must call" not in system
    assert rendered[2]["content"] == (
        "Checking.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    )
    assert rendered[3]["content"] == (
        '<tool_response name="get_weather">\nsunny\n</tool_response>\n'
        '<tool_response name="get_weather" status="error">\nunknown city\n</tool_response>'
    )
    assert rendered[4] == {"role": "user", "content": "Thanks. And tomorrow?"}


def test_prompted_rendering_round_trips_calls(chatml) -> None:
    """The model sees its earlier calls in the format `parse_tool_calls` reads back."""
    rendered = render_messages(chatml, conversation(), [get_weather])
    content, calls = parse_tool_calls(rendered[2]["content"], ["get_weather"])
    assert content == "Checking."
    assert [c["args"] for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]


def test_prompted_rendering_creates_system_and_tool_choice_lines(chatml) -> None:
    messages = [HumanMessage("hi")]
    forced = render_messages(chatml, messages, [get_weather, search], "search")
    assert forced[0]["role"] == "system"
    assert forced[0]["content"].startswith("# Tools")
    assert forced[0]["content"].endswith("You must call the tool `search` now.")
    required = render_messages(chatml, messages, [get_weather, search], "any")
    assert required[0]["content"].endswith("You must call at least one tool now.")
    none = render_messages(chatml, messages, [get_weather], "none")
    assert none == [{"role": "user", "content": "hi"}]
    assert render_messages(chatml, messages) == [{"role": "user", "content": "hi"}]


def test_prompted_history_without_tools_still_renders_calls(chatml) -> None:
    rendered = render_messages(chatml, conversation()[1:], None)
    assert rendered[0]["role"] == "user"
    assert "<tool_call>" in rendered[1]["content"]
    assert rendered[2]["content"].startswith('<tool_response name="get_weather">')


def test_prompted_prompt_text(chatml) -> None:
    prompt = render_prompt(chatml, conversation(), [get_weather], "get_weather")
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '<|im_start|>user\n<tool_response name="get_weather">\nsunny\n' in prompt
    assert "<|im_start|>tool" not in prompt
    assert prompt.endswith(
        "<|im_start|>user\nThanks. And tomorrow?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_message_roles_and_legacy_function_message(chatml) -> None:
    rendered = render_messages(
        chatml,
        [
            ChatMessage(role="human", content="hi"),
            ChatMessage(role="ai", content="hello"),
            FunctionMessage(name="f", content="42"),
        ],
    )
    assert rendered == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": '<tool_response name="f">\n42\n</tool_response>'},
    ]
    # a role neither the prompt nor memory can place is refused by name
    with pytest.raises(ValueError, match="ChatMessage role 'critic' is not supported"):
        render_messages(chatml, [ChatMessage(role="critic", content="hmm")])


def test_content_blocks(chatml) -> None:
    message = AIMessage(
        [
            {"type": "reasoning", "reasoning": "think"},
            {"type": "text", "text": "a"},
            "b",
            {"type": "tool_call", "name": "x", "args": {}, "id": "1"},
        ]
    )
    assert render_messages(chatml, [message]) == [{"role": "assistant", "content": "ab"}]


@pytest.mark.parametrize("kind", ["image_url", "image", "audio", "input_audio", "file"])
def test_media_blocks_rejected(chatml, native, kind: str) -> None:
    message = HumanMessage([{"type": "text", "text": "look"}, {"type": kind, "url": "x"}])
    for tokenizer in (chatml, native):
        with pytest.raises(ValueError, match=rf"'{kind}'.*text only"):
            render_messages(tokenizer, [message])


def test_unknown_block_rejected(chatml) -> None:
    with pytest.raises(ValueError, match="'mystery'"):
        render_messages(chatml, [HumanMessage([{"type": "mystery"}])])


def test_native_rendering(native) -> None:
    rendered = render_messages(native, conversation(), [get_weather], "auto")
    assert rendered[0] == {"role": "system", "content": "Be brief."}  # tools go to the template
    assert rendered[2] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "type": "function",
                "id": "c1",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "type": "function",
                "id": "c2",
                "function": {"name": "get_weather", "arguments": {"city": "Rome"}},
            },
        ],
    }
    assert rendered[3] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": "c1",
        "name": "get_weather",  # looked up from the AIMessage's call id
    }
    assert rendered[4]["role"] == "tool" and rendered[4]["content"] == "unknown city"


def test_native_prompt_text(native) -> None:
    prompt = render_prompt(native, conversation(), [get_weather, search])
    assert prompt.startswith("<|im_start|>system\nBe brief.\n# Tools\n<tools>\n")
    tools_block = prompt.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line)["function"]["name"] for line in tools_block] == NAMES
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        in prompt
    )
    assert '<tool_response id="c1" name="get_weather">\nsunny\n</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # The template's call layout is what the multiline constraint writes and the parser reads.
    _, calls = parse_tool_calls(prompt.split("<|im_start|>assistant\n")[1], NAMES)
    assert [c["args"] for c in calls if c["type"] == "tool_call"] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    without = render_prompt(native, conversation(), [get_weather], "none")
    assert "<tools>" not in without


def test_forced_mode_override(chatml, native) -> None:
    assert render_messages(native, [HumanMessage("hi")], [get_weather], native=False)[0][
        "content"
    ].startswith("# Tools")
    assert render_messages(chatml, [HumanMessage("hi")], [get_weather], native=True) == [
        {"role": "user", "content": "hi"}
    ]


def test_format_tool_call() -> None:
    assert format_tool_call("f", {"x": "é"}) == (
        '<tool_call>{"name": "f", "arguments": {"x": "é"}}</tool_call>'
    )
    assert format_tool_call("f", {}, multiline=True) == (
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    )


# --------------------------------------------------------------------------------------
# Constrained decoding
# --------------------------------------------------------------------------------------

LIMITS = {"max_string_length": 12, "max_array_items": 3, "max_object_keys": 3}


def drive(
    constraint: JsonSchemaConstraint,
    tokenizer: Any,
    seed: int,
    *,
    greedy: bool = False,
    check_full_scan: bool = False,
    boost: list[int] | None = None,
    max_steps: int = 3000,
) -> str:
    """Generate with a random "model" through the constraint; return the decoded text."""
    generator = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer) + 5  # a padded embedding matrix: ids past the tokenizer
    ids: list[int] = []
    constraint.reset()
    for _ in range(max_steps):
        logits = torch.randn(vocab, generator=generator) * 4
        if boost:
            logits[boost] += 100.0  # a model that loves invalid tokens
        masked = constraint(ids, logits)
        assert masked.shape == logits.shape
        finite = torch.isfinite(masked)
        assert bool(finite.any()), f"dead end after {constraint.text!r}"
        assert not bool(finite[len(tokenizer) :].any())
        assert bool(torch.equal(masked[finite], logits[finite]))
        if check_full_scan:
            allowed = set(torch.nonzero(finite).flatten().tolist())
            assert allowed <= set(constraint.allowed_token_ids())
        if greedy:
            token = int(torch.argmax(masked))
        else:
            token = int(torch.multinomial(torch.softmax(masked, -1), 1, generator=generator))
        ids.append(token)
        if token == constraint.eos_token_id:
            assert constraint.is_complete
            text = tokenizer.decode(ids, skip_special_tokens=True)
            assert text == constraint.text
            return text
        assert token != constraint.eos_token_id
    raise AssertionError(f"no end after {max_steps} tokens: {constraint.text!r}")


def assert_valid_call(text: str, schemas: list[dict], allowed: list[str], multiline=False):
    nl = "\n" if multiline else ""
    assert text.startswith("<tool_call>" + nl + '{"name": ')
    assert text.endswith("}" + nl + "</tool_call>")
    content, calls = parse_tool_calls(text, allowed)
    assert content == ""
    (call,) = calls
    assert call["type"] == "tool_call", call
    parameters = {f["function"]["name"]: f["function"]["parameters"] for f in schemas}
    schema = parameters[call["name"]]
    assert validate(call["args"], schema, schema), (call["args"], schema)
    # the canonical layout: json.dumps' separators and no other whitespace outside strings
    body = text[len("<tool_call>" + nl) : -len(nl + "</tool_call>")]
    assert body.startswith(json.dumps({"name": call["name"]})[:-1] + ', "arguments": ')
    assert_canonical_spacing(body)
    return call


def assert_canonical_spacing(body: str) -> None:
    in_string = escaped = False
    for i, ch in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch.isspace():
            assert ch == " " and body[i - 1] in ",:" and not body[i + 1].isspace(), body


SCHEMA_CASES = {
    "langchain_tool": [get_weather],
    "nested_pydantic": [CreateUser],
    "raw_enums_any": [RAW_TOOL],
    "ref_allof": [REF_TOOL],
    "no_arguments": [PING_TOOL],
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_constraint_random_model_always_yields_valid_call(fake, case: str) -> None:
    schemas = to_tool_schemas(SCHEMA_CASES[case])
    names = tool_names(schemas)
    constraint = JsonSchemaConstraint(fake, schemas, names[0], **LIMITS)
    for seed in range(25):
        text = drive(constraint, fake, seed, check_full_scan=seed < 3)
        call = assert_valid_call(text, schemas, names)
        assert call["name"] == names[0]


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_document_constraint_yields_valid_json(fake, case: str) -> None:
    """JSON mode / json_schema output: a bare document valid for the schema, then the end."""
    schema = to_tool_schemas(SCHEMA_CASES[case])[0]["function"]["parameters"]
    constraint = JsonSchemaConstraint.for_document(fake, schema, **LIMITS)
    for seed in range(10):
        text = drive(constraint, fake, seed, check_full_scan=seed < 2)
        assert validate(json.loads(text), schema, schema), (text, schema)
        assert_canonical_spacing(text)
    free = JsonSchemaConstraint.for_document(fake, {"type": "object"}, **LIMITS)
    assert isinstance(json.loads(drive(free, fake, 0)), dict)
    limit = constraint.min_tokens + 10
    budget = JsonSchemaConstraint.for_document(fake, schema, max_tokens=limit, **LIMITS)
    for seed in range(5):  # closed within the budget, end token included
        text = drive(budget, fake, seed)
        assert len(budget._consumed) <= limit
        json.loads(text)
    with pytest.raises(ValueError, match="JSON schema: "):
        JsonSchemaConstraint.for_document(fake, {"type": "object", "properties": {"a": 7}})


def test_constraint_any_tool_and_greedy(fake) -> None:
    schemas = to_tool_schemas([get_weather, CreateUser, RAW_TOOL, REF_TOOL, PING_TOOL])
    names = tool_names(schemas)
    constraint = JsonSchemaConstraint(fake, schemas, None, **LIMITS)
    chosen = set()
    for seed in range(40):
        chosen.add(assert_valid_call(drive(constraint, fake, seed), schemas, names)["name"])
        assert_valid_call(drive(constraint, fake, seed, greedy=True), schemas, names)
    assert len(chosen) >= 3  # the name itself is free among the tools


def test_constraint_hostile_model_and_tiny_top_k(fake) -> None:
    """A model that always prefers EOS, control and special tokens, with top_k=1 so the
    fallback scan runs at almost every step."""
    schemas = to_tool_schemas([CreateUser, RAW_TOOL])
    hostile = [0, 1, fake.vocab.index("\t"), fake.vocab.index("\ufffd"), fake.vocab.index("}")]
    for top_k in (1, 3):
        constraint = JsonSchemaConstraint(fake, schemas, None, top_k=top_k, **LIMITS)
        for seed in range(10):
            text = drive(constraint, fake, seed, boost=hostile, check_full_scan=True)
            assert_valid_call(text, schemas, tool_names(schemas))


def test_constraint_multiline_layout(fake) -> None:
    schemas = to_tool_schemas([get_weather])
    assert not JsonSchemaConstraint(fake, schemas).multiline  # no template: prompted layout
    templated = FakeTokenizer()
    templated.chat_template = TOOLS_TEMPLATE  # renders tools: default to its layout
    assert JsonSchemaConstraint(templated, schemas).multiline
    constraint = JsonSchemaConstraint(fake, schemas, multiline=True, **LIMITS)
    for seed in range(5):
        text = drive(constraint, fake, seed)
        assert_valid_call(text, schemas, ["get_weather"], multiline=True)


def test_constraint_greedy_is_exact_with_top_k(fake) -> None:
    """Whenever the top-k holds a valid token, the best valid token survives the mask."""
    schemas = to_tool_schemas([CreateUser])
    constraint = JsonSchemaConstraint(fake, schemas, top_k=20, **LIMITS)
    generator = torch.Generator().manual_seed(0)
    ids: list[int] = []
    while not constraint.is_complete:
        logits = torch.randn(len(fake), generator=generator)
        masked = constraint(ids, logits)
        allowed = constraint.allowed_token_ids()
        best = max(allowed, key=lambda i: float(logits[i]))
        assert int(torch.argmax(masked)) == best
        ids.append(best)
    masked = constraint(ids, torch.randn(len(fake), generator=generator))
    assert torch.isfinite(masked).nonzero().flatten().tolist() == [fake.eos_token_id]


def test_constraint_state_tracking(fake) -> None:
    schemas = to_tool_schemas([get_weather])
    constraint = JsonSchemaConstraint(fake, schemas, **LIMITS)
    prefix = fake.encode('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa')
    allowed = constraint.allowed_token_ids(prefix)
    assert fake.vocab.index('"') in allowed  # close the string
    assert fake.vocab.index("\t") not in allowed  # control characters need escaping
    assert fake.vocab.index('\\"') in allowed  # an escape
    assert constraint.text.endswith('"Pa')
    # a different history resets and replays
    other = fake.encode('<tool_call>{"name": "get_weather", "arguments": {"city": "x", ')
    assert fake.vocab.index('"') in constraint.allowed_token_ids(other)
    assert constraint.text.endswith('"x", ')
    # after "city" only the optional "units" key may follow; it accepts only its enum
    units = fake.encode('<tool_call>{"name": "get_weather", "arguments": {"city": "x", "units": ')
    allowed = {fake.vocab[i] for i in constraint.allowed_token_ids(units)}
    assert allowed == {'"'}
    with pytest.raises(ValueError, match="does not continue the tool call"):
        constraint([*units, fake.vocab.index("1")], torch.zeros(len(fake)))


def test_constraint_eos_only_after_complete(fake) -> None:
    schemas = to_tool_schemas([PING_TOOL])
    constraint = JsonSchemaConstraint(fake, schemas, **LIMITS)
    ids = fake.encode('<tool_call>{"name": "ping", "arguments": {}}</tool_call')
    assert fake.eos_token_id not in constraint.allowed_token_ids(ids)
    assert not constraint.is_complete
    ids += fake.encode(">")
    masked = constraint(ids, torch.zeros(len(fake)))
    assert constraint.is_complete
    assert torch.isfinite(masked).nonzero().flatten().tolist() == [fake.eos_token_id]
    # non-finite logits of allowed tokens are replaced so something can always be picked
    masked = constraint(ids, torch.full((len(fake),), -math.inf))
    assert masked[fake.eos_token_id] == 0.0
    constraint([*ids, fake.eos_token_id], torch.zeros(len(fake)))
    with pytest.raises(ValueError, match="only EOS"):
        constraint([*ids, 5], torch.zeros(len(fake)))


def test_constraint_enum_prefixes_and_numbers(fake) -> None:
    """Enum values that prefix each other ("a", "ab"; 1, 10, 100) and number grammar."""
    schemas = to_tool_schemas([RAW_TOOL])
    constraint = JsonSchemaConstraint(fake, schemas, **LIMITS)
    head = '<tool_call>{"name": "raw", "arguments": {"tags": ["a'
    after = {fake.vocab[i] for i in constraint.allowed_token_ids(fake.encode(head))}
    assert {'"', "b", '"]'} <= after and "c" not in after and "x" not in after
    head = '<tool_call>{"name": "raw", "arguments": {"tags": ["ab"], "count": 1'
    after = {fake.vocab[i] for i in constraint.allowed_token_ids(fake.encode(head))}
    assert {"0", ","} <= after and "1" not in after and "." not in after


def test_constraint_validation_errors(fake) -> None:
    schemas = to_tool_schemas([get_weather])
    with pytest.raises(ValueError, match="forced_name 'nope'"):
        JsonSchemaConstraint(fake, schemas, "nope")
    with pytest.raises(ValueError, match="at least one tool"):
        JsonSchemaConstraint(fake, [])
    recursive = {
        "name": "tree",
        "parameters": {
            "type": "object",
            "properties": {"child": {"$ref": "#"}},
            "required": ["child"],
        },
    }
    with pytest.raises(ValueError, match="recursive"):
        JsonSchemaConstraint(fake, [recursive])
    with pytest.raises(ValueError, match="enum"):
        JsonSchemaConstraint(
            fake, [{"name": "e", "parameters": {"properties": {"x": {"enum": []}}}}]
        )
    # a character with no single-character token could dead-end: refused up front
    with pytest.raises(ValueError, match=r"single-character token for \['z'\]"):
        JsonSchemaConstraint(FakeTokenizer(exclude="z"), [{"name": "zap", "parameters": {}}])


def test_constraint_excludes_special_and_broken_tokens(fake) -> None:
    constraint = JsonSchemaConstraint(fake, to_tool_schemas([RAW_TOOL]), **LIMITS)
    inside_string = fake.encode('<tool_call>{"name": "raw", "arguments": {"tags": ["a"], '
                                '"count": 1, "payload": "')  # fmt: skip
    allowed = set(constraint.allowed_token_ids(inside_string))
    assert fake.vocab.index("é") in allowed and fake.vocab.index("日本") in allowed
    assert not allowed & {0, 1, fake.vocab.index("\ufffd"), fake.vocab.index("\n")}


def test_a_tool_with_empty_properties_gets_only_an_empty_object(fake) -> None:
    """``"properties": {}`` (a LangChain tool without arguments) closes the object: a model
    that loves letters and quotes cannot invent keys."""

    @tool
    def clock() -> str:
        """Tell the time."""
        return "noon"

    schemas = to_tool_schemas([clock])
    assert schemas[0]["function"]["parameters"].get("properties") == {}
    constraint = JsonSchemaConstraint(fake, schemas, "clock", **LIMITS)
    hostile = [fake.vocab.index('"'), fake.vocab.index("a")]
    for seed in range(5):
        text = drive(constraint, fake, seed, boost=hostile)
        assert text == '<tool_call>{"name": "clock", "arguments": {}}</tool_call>'


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_a_token_budget_always_closes_the_call_in_time(fake, case: str) -> None:
    """With ``max_tokens``, a model that would write letters forever still ends a valid call
    within the budget, at the tightest budget the constraint accepts and above it."""
    schemas = to_tool_schemas(SCHEMA_CASES[case])
    names = tool_names(schemas)
    loose = {"max_string_length": 500, "max_array_items": 50, "max_object_keys": 50}
    shortest = JsonSchemaConstraint(fake, schemas, names[0], **loose).min_tokens
    letters = [fake.vocab.index(c) for c in "abc"]
    for budget in (shortest, shortest + 1, shortest + 7, shortest + 40):
        constraint = JsonSchemaConstraint(fake, schemas, names[0], max_tokens=budget, **loose)
        for seed in range(4):
            text = drive(constraint, fake, seed, boost=letters, max_steps=budget)
            assert assert_valid_call(text, schemas, names)["name"] == names[0]
            assert len(constraint._consumed) <= budget


def test_a_budget_below_the_shortest_call_is_refused(fake) -> None:
    schemas = to_tool_schemas([get_weather])
    shortest = JsonSchemaConstraint(fake, schemas, "get_weather").min_tokens
    # the shortest call: the fixed text around an empty city string
    assert shortest == len(
        '<tool_call>{"name": "get_weather", "arguments": {"city": ""}}</tool_call>'
    )
    with pytest.raises(ValueError, match="too small for the shortest valid call"):
        JsonSchemaConstraint(fake, schemas, "get_weather", max_tokens=shortest - 1)


# --------------------------------------------------------------------------------------
# The real SmolLM2 tokenizer and model (slow: loads the embedded backbone)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_prompted_rendering(embedded) -> None:
    _, tokenizer = embedded
    assert not supports_tools(tokenizer)
    prompt = render_prompt(tokenizer, conversation(), [get_weather], "any")
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "You must call at least one tool now.<|im_end|>\n" in prompt
    assert (
        '<|im_start|>assistant\nChecking.\n<tool_call>{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}</tool_call>\n' in prompt
    )
    assert '<|im_start|>user\n<tool_response name="get_weather">\nsunny\n' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # no system message of our own and no tools: SmolLM2's default system prompt stays
    plain = render_prompt(tokenizer, [HumanMessage("hi")])
    assert plain.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.slow
def test_smollm2_constraint_random_logits(embedded) -> None:
    _, tokenizer = embedded
    schemas = to_tool_schemas([get_weather, CreateUser, RAW_TOOL])
    names = tool_names(schemas)
    limits = {"max_string_length": 24, "max_array_items": 3, "max_object_keys": 3}
    for index, name in enumerate(names):
        constraint = JsonSchemaConstraint(tokenizer, schemas, name, **limits)
        for seed in range(2):
            check = index == seed == 0  # full scans inside free strings take ~0.1 s each
            text = drive(constraint, tokenizer, 10 * index + seed, check_full_scan=check)
            assert assert_valid_call(text, schemas, names)["name"] == name


@pytest.mark.slow
def test_smollm2_forced_call_end_to_end(smollm2) -> None:
    """The real model, greedy, forced to call a tool: the reply parses into a valid call."""
    model, tokenizer = smollm2
    schemas = to_tool_schemas([get_weather])
    prompt = render_prompt(
        tokenizer, [HumanMessage("What is the weather in Paris?")], schemas, "get_weather"
    )
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    constraint = JsonSchemaConstraint(tokenizer, schemas, "get_weather", max_string_length=40)
    generated: list[int] = []
    past = None
    with torch.inference_mode():
        step_ids = input_ids
        for _ in range(80):
            out = model(input_ids=step_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(torch.argmax(constraint(generated, out.logits[0, -1].float())))
            generated.append(token)
            if token == constraint.eos_token_id:
                break
            step_ids = torch.tensor([[token]])
    text = tokenizer.decode(generated, skip_special_tokens=True)
    call = assert_valid_call(text, schemas, ["get_weather"])
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str)


CJK_TOOL = {
    "name": "translate",
    "description": "Store a translation.",
    "parameters": {
        "type": "object",
        "properties": {"text": {"type": "string"}, "note": {"type": "string"}},
        "required": ["text", "note"],
    },
}


@pytest.mark.slow
def test_smollm2_forced_call_accepts_characters_split_across_tokens(embedded) -> None:
    """SmolLM2 writes most CJK characters and emoji as several byte tokens; the tokenizer's
    own encoding of a valid call holding them is accepted token by token, and a closing
    quote is refused while a character is half written."""
    _, tokenizer = embedded
    schemas = to_tool_schemas([CJK_TOOL])
    constraint = JsonSchemaConstraint(tokenizer, schemas, "translate")
    args = {"text": "你好世界", "note": "naïve café 😀"}
    call = '<tool_call>{"name": "translate", "arguments": ' + json.dumps(args, ensure_ascii=False)
    call += "}</tool_call>"
    ids = tokenizer.encode(call, add_special_tokens=False)
    quote = tokenizer.encode('"', add_special_tokens=False)
    split_seen = False
    for i, token in enumerate(ids):
        allowed = set(constraint.allowed_token_ids(ids[:i]))
        assert token in allowed, (i, tokenizer.decode(ids[:i]))
        if constraint._pending:
            split_seen = True
            assert quote[0] not in allowed
    assert split_seen  # the test string really does split characters across tokens
    assert constraint.allowed_token_ids(ids) == [constraint.eos_token_id]
    assert constraint.text == call
    (parsed,) = parse_tool_calls(constraint.text, ["translate"])[1]
    assert parsed["args"] == args


@pytest.mark.slow
def test_smollm2_random_logits_within_a_budget_with_multibyte_text(embedded) -> None:
    """Random logits biased towards byte tokens: every call is valid UTF-8 JSON within the
    budget."""
    _, tokenizer = embedded
    schemas = to_tool_schemas([CJK_TOOL])
    table_bytes = list(JsonSchemaConstraint(tokenizer, schemas)._table.partial)
    assert len(table_bytes) >= 64
    budget = JsonSchemaConstraint(tokenizer, schemas).min_tokens + 20
    constraint = JsonSchemaConstraint(tokenizer, schemas, "translate", max_tokens=budget)
    for seed in range(3):
        text = drive(constraint, tokenizer, seed, boost=table_bytes[:300], max_steps=budget)
        assert_valid_call(text, schemas, ["translate"])
