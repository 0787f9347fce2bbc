"""Tests for ``langchain_deltamem.generation``: the manual decode loop behind token streaming.

Fast tests run a tiny random Llama (``tests/helpers.py``) with a byte-level toy tokenizer whose
pieces include split UTF-8 characters and multi-character words, so held-back text and stop
strings across tokens are checked deterministically (a logits processor forces the tokens).
Slow tests run the real embedded SmolLM2-135M-Instruct with at most 12 new tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import pytest
import torch
from helpers import build_model, random_tokens

from langchain_deltamem import DeltaMemConfig, attach
from langchain_deltamem.generation import (
    REPLACEMENT_CHAR,
    GenerationChunk,
    GenerationResult,
    GenerationSettings,
    eos_token_ids,
    generate,
    stream_generate,
)

EOS = 2


class ByteTokenizer:
    """Ids 0-2 are special (pad, bos, eos); 3-97 are printable ASCII; 98+ are the pieces below."""

    eos_token_id = EOS
    PIECES = (b"He", b"llo", b" wor", b"ld", b"\xe2", b"\x82", b"\xac", b"\xc3", b"\xa9", b"\n")
    PIECES += (b"\xf0", b"\x9f", b"\x98", b"\x80")  # 😀 in four tokens
    PIECES += tuple(f" w{i}".encode() for i in range(128 - 98 - len(PIECES)))

    def __init__(self) -> None:
        self.table = {0: b"<pad>", 1: b"<s>", 2: b"</s>"}
        self.table |= {3 + i: bytes([32 + i]) for i in range(95)}
        self.table |= {98 + i: piece for i, piece in enumerate(self.PIECES)}
        self.ids = {piece: i for i, piece in self.table.items()}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None) -> str:
        keep = [i for i in ids if not (skip_special_tokens and i < 3)]
        return b"".join(self.table[i] for i in keep).decode("utf-8", errors="replace")

    def __call__(self, *pieces: str | bytes) -> list[int]:
        """Ids of the given pieces (str = printable ASCII characters, one id each)."""
        out: list[int] = []
        for piece in pieces:
            if isinstance(piece, bytes):
                out.append(self.ids[piece])
            else:
                out.extend(self.ids[c.encode()] for c in piece)
        return out


def force(sequence: list[int]):
    """A logits processor that allows only ``sequence[len(generated)]`` (then only EOS)."""

    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        target = sequence[len(generated)] if len(generated) < len(sequence) else EOS
        masked = torch.full_like(logits, float("-inf"))
        masked[target] = 0.0
        return masked

    return processor


def ban(*ids: int):
    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        logits[list(ids)] = float("-inf")
        return logits

    return processor


def run(stream) -> tuple[list[GenerationChunk], GenerationResult]:
    chunks = []
    while True:
        try:
            chunks.append(next(stream))
        except StopIteration as done:
            return chunks, done.value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread (and the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def _tiny_llama():
    return build_model("llama")


@pytest.fixture
def tiny(_tiny_llama, one_thread):
    return _tiny_llama, ByteTokenizer()


# --- settings -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -3),
        ("max_tokens", 2.0),
        ("max_tokens", True),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("temperature", "0.7"),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", float("nan")),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", 2**64),
        ("stop", "END"),
        ("stop", ("ok", "")),
        ("stop", (3,)),
    ],
)
def test_bad_settings_raise_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        GenerationSettings(**{field: value})


def test_settings_normalise() -> None:
    settings = GenerationSettings(temperature=1, top_p=1, stop=["a", "b"], seed=0)
    assert settings.stop == ("a", "b")
    assert isinstance(settings.temperature, float) and isinstance(settings.top_p, float)
    assert hash(settings) == hash(GenerationSettings(temperature=1.0, stop=("a", "b"), seed=0))


# --- the loop on a tiny Llama ---------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_equals_hf_generate(attn: str, one_thread) -> None:
    model = build_model("llama", attn)
    for seed in range(3):
        prompt = random_tokens(1, 6 + seed, seed=seed)
        result = generate(model, ByteTokenizer(), prompt, GenerationSettings(max_tokens=16))
        with torch.no_grad():
            reference = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=16,
            )
        assert result.token_ids == reference[0, prompt.shape[1] :].tolist()
        assert result.prompt_tokens == prompt.shape[1]
        assert result.completion_tokens == len(result.token_ids)


def test_chunks_concatenate_to_text_and_usage(tiny) -> None:
    model, tokenizer = tiny
    prompt = random_tokens(1, 5, seed=4)
    chunks, result = run(
        stream_generate(
            model,
            tokenizer,
            prompt[0],
            GenerationSettings(max_tokens=20),
            logits_processor=ban(0, 1, EOS),  # no special tokens: every id shows up in a chunk
        )
    )
    assert "".join(c.text for c in chunks) == result.text
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert [i for c in chunks for i in c.token_ids] == result.token_ids
    assert all(c.text for c in chunks)
    assert (result.prompt_tokens, result.completion_tokens) == (5, 20)


def test_max_tokens_gives_length_and_exactly_that_many_tokens(tiny) -> None:
    model, tokenizer = tiny
    for max_tokens in (1, 7):
        result = generate(
            model,
            tokenizer,
            random_tokens(1, 4, seed=1),
            GenerationSettings(max_tokens=max_tokens),
            logits_processor=ban(EOS),
        )
        assert result.finish_reason == "length"
        assert result.completion_tokens == len(result.token_ids) == max_tokens


def test_end_token_stops_and_is_counted_but_not_text(tiny) -> None:
    model, tokenizer = tiny
    chunks, result = run(
        stream_generate(
            model,
            tokenizer,
            random_tokens(1, 4),
            GenerationSettings(max_tokens=10),
            logits_processor=force(tokenizer("Hi!")),
        )
    )
    assert result.text == "Hi!" and result.finish_reason == "stop"
    assert result.token_ids == [*tokenizer("Hi!"), EOS]
    assert result.completion_tokens == 4
    assert "".join(c.text for c in chunks) == "Hi!"


def test_end_token_on_the_last_allowed_token_is_stop(tiny) -> None:
    model, tokenizer = tiny
    result = generate(
        model,
        tokenizer,
        random_tokens(1, 4),
        GenerationSettings(max_tokens=3),
        logits_processor=force(tokenizer("ab")),
    )
    assert (result.finish_reason, result.completion_tokens, result.text) == ("stop", 3, "ab")


def test_stop_string_spanning_tokens_is_never_streamed(tiny) -> None:
    model, tokenizer = tiny
    ids = tokenizer(b"He", b"llo", b" wor", b"ld", "!")
    seen: list[str] = []
    stream = stream_generate(
        model,
        tokenizer,
        random_tokens(1, 4),
        GenerationSettings(max_tokens=10, stop=("lo w",)),
        logits_processor=force(ids),
    )
    chunks, result = run(stream)
    for chunk in chunks:
        seen.append(chunk.text)
        assert "Hel".startswith("".join(seen))  # never any character of "lo w"
    assert seen == ["He", "l"]  # "lo" held back after "llo": it may start the stop string
    assert result.text == "Hel" and result.finish_reason == "stop"
    assert result.token_ids == ids[:3]  # ended on the token that completed the stop string


def test_earliest_stop_string_wins_and_partial_match_is_released(tiny) -> None:
    model, tokenizer = tiny
    ids = tokenizer("ab", b"He", "x", b"llo", b" wor", b"ld")
    chunks, result = run(
        stream_generate(
            model,
            tokenizer,
            random_tokens(1, 4),
            GenerationSettings(max_tokens=12, stop=("world", "Hey", "o w")),
            logits_processor=force(ids),
        )
    )
    # "He" is held (it may start "Hey") until "x" rules that out; "o" is held (it may start
    # "o w"); "o w" completes before "world" could
    assert result.text == "abHexll" and result.finish_reason == "stop"
    assert [c.text for c in chunks] == ["a", "b", "Hex", "ll"]


def test_held_back_stop_prefix_is_flushed_at_the_end(tiny) -> None:
    model, tokenizer = tiny
    result = generate(
        model,
        tokenizer,
        random_tokens(1, 4),
        GenerationSettings(max_tokens=3, stop=("Hello!",)),
        logits_processor=force(tokenizer(b"He", b"llo", "?")),
    )
    assert (result.text, result.finish_reason) == ("Hello?", "length")
    result = generate(
        model,
        tokenizer,
        random_tokens(1, 4),
        GenerationSettings(max_tokens=5, stop=("Hello!",)),
        logits_processor=force(tokenizer(b"He", b"llo")),
    )
    assert (result.text, result.finish_reason) == ("Hello", "stop")  # ended by EOS


def test_multibyte_characters_are_never_split(tiny) -> None:
    model, tokenizer = tiny
    euro, e_acute = [b"\xe2", b"\x82", b"\xac"], [b"\xc3", b"\xa9"]
    smiley = [b"\xf0", b"\x9f", b"\x98", b"\x80"]
    ids = tokenizer("a", *euro, "b", *e_acute, *smiley)
    chunks, result = run(
        stream_generate(
            model,
            tokenizer,
            random_tokens(1, 4),
            GenerationSettings(max_tokens=12),
            logits_processor=force(ids),
        )
    )
    assert [c.text for c in chunks] == ["a", "€", "b", "é", "😀"]
    assert chunks[1].token_ids == ids[1:4] and chunks[4].token_ids == ids[7:11]
    assert result.text == "a€bé😀"
    # an incomplete character at the very end is released as it decodes
    result = generate(
        model,
        tokenizer,
        random_tokens(1, 4),
        GenerationSettings(max_tokens=2),
        logits_processor=force(tokenizer("a", b"\xe2")),
    )
    assert result.text == "a" + REPLACEMENT_CHAR


def test_stop_string_after_multibyte_character(tiny) -> None:
    model, tokenizer = tiny
    ids = tokenizer(b"\xe2", b"\x82", b"\xac", "5", "!")
    result = generate(
        model,
        tokenizer,
        random_tokens(1, 4),
        GenerationSettings(max_tokens=12, stop=("€5",)),
        logits_processor=force(ids),
    )
    assert (result.text, result.completion_tokens) == ("", 4)


def test_logits_processor_forces_a_sequence_and_sees_completion_ids(tiny) -> None:
    model, tokenizer = tiny
    ids = tokenizer("{", '"', "a", '"', ":", "1", "}")
    calls: list[list[int]] = []
    inner = force(ids)

    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        calls.append(generated)
        assert logits.shape == (128,) and logits.dtype == torch.float32
        return inner(generated, logits)

    result = generate(
        model, tokenizer, random_tokens(1, 4), GenerationSettings(), logits_processor=processor
    )
    assert result.text == '{"a":1}' and result.token_ids == [*ids, EOS]
    assert calls == [ids[:i] for i in range(len(ids) + 1)]


def test_logits_processor_errors(tiny) -> None:
    model, tokenizer = tiny
    prompt = random_tokens(1, 4)
    for processor, message in [
        (lambda g, x: torch.full_like(x, float("-inf")), "every token is masked"),
        (lambda g, x: x.clone().fill_(float("nan")), "NaN"),
        (lambda g, x: x[:10], "shape"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(model, tokenizer, prompt, GenerationSettings(), logits_processor=processor)


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny) -> None:
    model, tokenizer = tiny
    prompt = random_tokens(1, 4, seed=2)
    cpu_state = torch.random.get_rng_state()

    def sample(seed: int | None) -> list[int]:
        settings = GenerationSettings(max_tokens=16, temperature=1.0, seed=seed)
        return generate(model, tokenizer, prompt, settings, logits_processor=ban(EOS)).token_ids

    assert sample(7) == sample(7)
    assert len({tuple(sample(seed)) for seed in range(4)}) > 1
    assert len({tuple(sample(None)) for _ in range(3)}) > 1  # fresh entropy without a seed
    assert torch.equal(torch.random.get_rng_state(), cpu_state)


def test_tiny_top_p_or_temperature_is_greedy(tiny) -> None:
    model, tokenizer = tiny
    prompt = random_tokens(1, 4, seed=3)
    greedy = generate(model, tokenizer, prompt, GenerationSettings(max_tokens=12)).token_ids
    for settings in (
        GenerationSettings(max_tokens=12, temperature=1.0, top_p=1e-6, seed=1),
        GenerationSettings(max_tokens=12, temperature=1e-30, seed=1),
    ):
        assert generate(model, tokenizer, prompt, settings).token_ids == greedy


def test_prompt_validation(tiny) -> None:
    model, tokenizer = tiny  # max_position_embeddings = 256
    settings = GenerationSettings()
    with pytest.raises(ValueError, match="empty"):
        stream_generate(model, tokenizer, torch.zeros(1, 0, dtype=torch.long), settings)
    with pytest.raises(ValueError, match=r"256 tokens.*256.*255"):
        stream_generate(model, tokenizer, random_tokens(1, 256), settings)
    with pytest.raises(ValueError, match="one sequence"):
        stream_generate(model, tokenizer, random_tokens(2, 4), settings)
    with pytest.raises(ValueError, match="integer"):
        stream_generate(model, tokenizer, torch.ones(1, 4), settings)


def test_context_window_caps_the_completion(tiny) -> None:
    model, tokenizer = tiny
    result = generate(
        model,
        tokenizer,
        random_tokens(1, 250),
        GenerationSettings(max_tokens=50),
        logits_processor=ban(EOS),
    )
    assert (result.completion_tokens, result.finish_reason) == (6, "length")
    assert generate(model, tokenizer, random_tokens(1, 255), GenerationSettings()).token_ids


def test_eos_ids_from_every_source(tiny) -> None:
    model, tokenizer = tiny
    assert eos_token_ids(model, tokenizer) == {EOS}
    previous = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [EOS, 5]
    try:
        assert eos_token_ids(model, tokenizer) == {EOS, 5}
        result = generate(
            model,
            tokenizer,
            random_tokens(1, 4),
            GenerationSettings(),
            logits_processor=force([*tokenizer("ab"), 5]),
        )
        assert result.token_ids[-1] == 5 and result.finish_reason == "stop"
    finally:
        model.generation_config.eos_token_id = previous


class Recorder(contextlib.AbstractContextManager):
    """A memory stand-in that records its enter/exit."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def __enter__(self):
        self.events.append("enter")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.events.append(exc_type)
        return True  # tries to suppress: the stream must re-raise anyway


def test_memory_exits_on_end_close_and_error(tiny) -> None:
    model, tokenizer = tiny
    prompt = random_tokens(1, 4)
    settings = GenerationSettings(max_tokens=6)
    memory = Recorder()
    stream = stream_generate(model, tokenizer, prompt, settings, memory=memory)
    assert memory.events == []  # entered lazily, at the first next()
    run(stream)
    assert memory.events == ["enter", None]

    memory = Recorder()
    stream = stream_generate(
        model, tokenizer, prompt, settings, memory=memory, logits_processor=force(tokenizer("ab"))
    )
    next(stream)
    stream.close()
    assert memory.events == ["enter", GeneratorExit]

    def broken(generated, logits):
        raise KeyError("boom")

    memory = Recorder()
    with pytest.raises(KeyError, match="boom"):
        generate(model, tokenizer, prompt, settings, memory=memory, logits_processor=broken)
    assert memory.events == ["enter", KeyError]


def test_memory_run_is_private_to_the_stream(one_thread) -> None:
    """δ-mem on a tiny model: every forward reads the run, even when the stream is resumed from
    fresh contexts (as LangChain's executor-based astream does); between chunks the consumer
    sees no active run and no inference mode; on_first_forward runs inside the block."""
    model = build_model("llama")
    tokenizer = ByteTokenizer()
    handle = attach(model, DeltaMemConfig(write_granularity="token"), seed=0)
    try:
        state = handle.new_state()
        with torch.no_grad(), handle.memory(state, write=True):
            model(random_tokens(1, 12, seed=5))
        seen: list[bool] = []
        hook = model.register_forward_pre_hook(
            lambda module, args: seen.append(handle.active_run() is not None)
        )
        runs = []

        def first() -> None:
            runs.append(handle.active_run())
            runs[-1].track_corrections = False

        def settings() -> GenerationSettings:
            return GenerationSettings(max_tokens=8, temperature=1.0, seed=3)

        prompt = random_tokens(1, 4, seed=6)
        reference = generate(
            model,
            tokenizer,
            prompt,
            settings(),
            memory=handle.memory(state),
            on_first_forward=first,
            logits_processor=ban(0, 1, EOS),
        )
        assert seen == [True] * 8 and runs[0] is not None
        assert all(len(norms) == 1 for norms in runs[0]._norms.values())  # prefill only
        seen.clear()

        stream = stream_generate(
            model,
            tokenizer,
            prompt,
            settings(),
            memory=handle.memory(state),
            on_first_forward=first,
            logits_processor=ban(0, 1, EOS),
        )
        tokens: list[int] = []
        while True:
            try:
                chunk = contextvars.copy_context().run(next, stream)
            except StopIteration as done:
                result = done.value
                break
            tokens.extend(chunk.token_ids)
            assert handle.active_run() is None
            assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
        hook.remove()
        assert seen == [True] * 8
        assert result.token_ids == tokens == reference.token_ids
        assert handle.active_run() is None
    finally:
        handle.detach()


def test_two_threads_share_one_model(tiny) -> None:
    model, tokenizer = tiny
    prompts = [random_tokens(1, 5, seed=s) for s in (10, 11)]
    settings = GenerationSettings(max_tokens=24)
    expected = [generate(model, tokenizer, p, settings).token_ids for p in prompts]
    results: dict[int, list[list[int]]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            results[i].append(generate(model, tokenizer, prompts[i], settings).token_ids)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: [expected[0]] * 3, 1: [expected[1]] * 3}


# --- the real embedded SmolLM2 --------------------------------------------------------------
def _chat(tokenizer, text: str) -> torch.Tensor:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


@pytest.fixture(scope="module")
def greedy_reference(embedded) -> tuple[torch.Tensor, list[int]]:
    """A prompt and HF ``generate``'s greedy 12 tokens for it."""
    model, tokenizer = embedded
    prompt = _chat(tokenizer, "Name three colours of the rainbow.")
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12
        )
    return prompt, out[0, prompt.shape[1] :].tolist()


@pytest.mark.slow
def test_real_greedy_equals_generate_and_streams(embedded, greedy_reference) -> None:
    model, tokenizer = embedded
    prompt, reference = greedy_reference
    chunks, result = run(
        stream_generate(model, tokenizer, prompt, GenerationSettings(max_tokens=12))
    )
    assert result.token_ids == reference
    assert "".join(c.text for c in chunks) == result.text
    text_ids = [i for i in reference if i not in eos_token_ids(model, tokenizer)]
    assert result.text == tokenizer.decode(
        text_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    assert "<|im_end|>" not in result.text
    assert result.prompt_tokens == prompt.shape[1]
    assert result.completion_tokens == len(reference)
    expected_finish = "stop" if reference[-1] == tokenizer.eos_token_id else "length"
    assert result.finish_reason == expected_finish


@pytest.mark.slow
def test_real_stop_string_across_two_tokens(embedded, greedy_reference) -> None:
    model, tokenizer = embedded
    prompt, reference = greedy_reference
    pieces = [
        tokenizer.decode(reference[: i + 1], clean_up_tokenization_spaces=False)
        for i in range(len(reference))
    ]
    # a boundary between two word tokens whose last/first two characters occur nowhere earlier
    for i in range(1, len(reference) - 1):
        left, right = pieces[i - 1], pieces[i]
        if len(right) - len(left) >= 3 and len(left) >= 2 and right.startswith(left):
            stop = left[-2:] + right[len(left) : len(left) + 2]
            if right.find(stop) == len(left) - 2:
                break
    else:
        pytest.fail(f"no suitable token boundary in {pieces[-1]!r}")
    chunks, result = run(
        stream_generate(model, tokenizer, prompt, GenerationSettings(max_tokens=12, stop=[stop]))
    )
    streamed = ""
    for chunk in chunks:
        streamed += chunk.text
        assert left[:-2].startswith(streamed), (stop, [c.text for c in chunks])
    assert result.text == streamed == left[:-2]
    assert result.finish_reason == "stop"
    assert result.token_ids == reference[: i + 1]


@pytest.mark.slow
def test_real_max_tokens_and_forced_sequence(embedded) -> None:
    model, tokenizer = embedded
    prompt = _chat(tokenizer, "Tell me a long story about a dragon.")
    result = generate(model, tokenizer, prompt, GenerationSettings(max_tokens=4))
    assert (result.finish_reason, result.completion_tokens, len(result.token_ids)) == (
        "length",
        4,
        4,
    )
    forced = tokenizer(' {"city": "Zürich"}', add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id

    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        target = forced[len(generated)] if len(generated) < len(forced) else eos
        masked = torch.full_like(logits, float("-inf"))
        masked[target] = 0.0
        return masked

    chunks, result = run(
        stream_generate(
            model, tokenizer, prompt, GenerationSettings(max_tokens=12), logits_processor=processor
        )
    )
    assert result.token_ids == [*forced, eos] and result.finish_reason == "stop"
    assert result.text == ' {"city": "Zürich"}' == "".join(c.text for c in chunks)
    assert all(REPLACEMENT_CHAR not in c.text for c in chunks)


@pytest.mark.slow
def test_real_seeded_sampling(embedded) -> None:
    model, tokenizer = embedded
    prompt = _chat(tokenizer, "Invent a name for a pet.")

    def sample(seed: int) -> str:
        settings = GenerationSettings(max_tokens=6, temperature=1.2, top_p=0.95, seed=seed)
        return generate(model, tokenizer, prompt, settings).text

    first = sample(1)
    assert sample(1) == first
    assert any(sample(seed) != first for seed in (2, 3))


@pytest.mark.slow
def test_real_empty_memory_reads_like_the_bare_model(embedded, greedy_reference) -> None:
    model, tokenizer = embedded
    prompt, reference = greedy_reference
    handle = attach(model, DeltaMemConfig(), seed=0)
    try:
        state = handle.new_state()
        before = state.to_bytes()
        runs = []

        def first() -> None:
            runs.append(handle.active_run())
            runs[-1].track_corrections = False

        result = generate(
            model,
            tokenizer,
            prompt,
            GenerationSettings(max_tokens=12),
            memory=handle.memory(state),
            on_first_forward=first,
        )
        assert result.token_ids == reference
        assert state.to_bytes() == before
        assert int(state.write_counts.sum()) == 0
        assert len(runs) == 1 and sorted(runs[0].correction_ratio()) == list(range(30))
    finally:
        handle.detach()


# --- library warnings -----------------------------------------------------------------------
def test_the_decode_loops_print_no_library_warnings(tiny) -> None:
    """The KV cache goes in under the installed transformers' current name (``cache``): the
    deprecated ``past_key_values`` printed a FutureWarning and a log line into replies."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from langchain_deltamem.batched_generation import BatchRequest, generate_batch

    model, tokenizer = tiny
    logged: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    handler = Recorder()
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(model, tokenizer, torch.tensor(tokenizer("Hi")), GenerationSettings(4))
            requests = [
                BatchRequest(torch.tensor(tokenizer(t)), GenerationSettings(3))
                for t in ("a", "bcd")
            ]
            generate_batch(model, tokenizer, requests)
    finally:
        hf_logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == []
    assert logged == []
