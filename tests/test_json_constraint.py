"""Forced tool calls: `JsonSchemaConstraint` masks logits so every generated call is valid JSON
for its tool's schema, within the limits and token budget asked for.

Most tests drive the constraint with random "models" on a duck-typed tokenizer with a hand-made
vocabulary; tests marked ``slow`` use the real SmolLM2 tokenizer (and model) from the shared
``embedded``/``smollm2`` fixtures. Generated calls are checked with a tiny JSON-schema
validator (below) and `tool_calling.parse_tool_calls`.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
import torch
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from tool_support import (
    PING_TOOL,
    RAW_TOOL,
    REF_TOOL,
    TOOLS_TEMPLATE,
    CreateUser,
    get_weather,
)

from langchain_deltamem.json_constraint import JsonSchemaConstraint
from langchain_deltamem.prompts import render_prompt
from langchain_deltamem.tool_calling import parse_tool_calls, to_tool_schemas, tool_names

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


@pytest.fixture(scope="module")
def fake() -> FakeTokenizer:
    return FakeTokenizer()


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
