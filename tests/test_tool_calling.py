"""Tool calling: schema conversion, tool_choice, rendering and parsing.

Most tests run offline on a one-word ``tokenizers`` tokenizer carrying a chat template (rendering
is text-only). Tests marked ``slow`` use the real SmolLM2 tokenizer from the shared ``embedded``
fixture: ``backbones.py`` has no tokenizer-only loader. Forced-call decoding is tested in
``test_json_constraint.py``; the tools both use are in ``tool_support.py``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from tokenizers import Tokenizer, models
from tool_support import (
    PING_TOOL,
    RAW_SCHEMA,
    RAW_TOOL,
    REF_TOOL,
    TOOLS_TEMPLATE,
    CreateUser,
    get_weather,
    search,
)
from transformers import PreTrainedTokenizerFast

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
# Tokenizers for the tests
# --------------------------------------------------------------------------------------


CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's chat template, verbatim."""


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
