"""Tests for ``langchain_deltamem.injection``: δ-mem attached to real (tiny) HF decoders.

Every architecture is a randomly initialised 2-layer model (``tests/helpers.py``), so nothing is
downloaded. Adapters are randomised (``_randomise``) so that corrections are large enough for a
wrong code path to show; tests that rely on corrections check that they are non-zero first.

Tolerances: fp32 with ``atol=1e-5``. ``rtol`` is also 1e-5 because the tiny models' logits reach
|x| ≈ 8, where one fp32 ulp alone is ~1e-6 and the backbone by itself (no δ-mem) already differs
by up to ~6e-6 between one prefill and a chunked prefill, or between eager and sdpa.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ARCH_NAMES, HIDDEN_SIZE, build_model, left_pad, random_tokens
from torch import nn
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
)

from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.injection import (
    ADAPTER_ATTRIBUTE,
    AttachedAdapter,
    CorrectedLinear,
    UnsupportedModelError,
    attach,
)
from langchain_deltamem.state import MemoryState

ATOL = 1e-5
RTOL = 1e-5
# Logits of a one-call TSW prefill go through the chunked (WY) scan, decoding through the
# per-token step. Both are equal in exact arithmetic (they agree to 1e-15 in fp64), but in fp32
# the chunked triangular solve's reads differ by ~1.5e-6 from the sequential ones, and the
# randomised correction heads (scale α/r = 2) and two layers amplify that to ≲2e-5 in the
# logits (measured: 1.7e-5 on qwen3/eager). A real bug (a token reading its own write, a lost
# chunk) shows up as differences of order 1e-2 or more.
SCAN_LOGITS_ATOL = 5e-5
IMPLS = ("eager", "sdpa")
TSW = DeltaMemConfig(write_granularity="token")
SSW = DeltaMemConfig(write_granularity="segment")
ALL_HEADS = ("q", "k", "v", "o")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread than on two (and the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- helpers ------------------------------------------------------------------------------
def _randomise(handle: AttachedAdapter, seed: int = 0) -> None:
    """Give every adapter parameter a random value (open gates, non-zero heads)."""
    generator = torch.Generator().manual_seed(seed)
    scales = {"memory_q_proj": 0.3, "memory_k_proj": 0.3, "memory_v_proj": 0.3}
    scales |= {"beta_proj": 0.1, "beta_bias": 1.0}
    with torch.no_grad():
        for layer_id in handle.layer_ids:
            for name, p in handle.layers[layer_id].named_parameters():
                scale = scales.get(name, 0.1)  # correction heads delta_*_proj
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def _attached(
    arch: str,
    impl: str = "eager",
    config: DeltaMemConfig = TSW,
    *,
    seed: int = 0,
    randomise: bool = True,
) -> tuple[PreTrainedModel, AttachedAdapter]:
    model = build_model(arch, impl)
    handle = attach(model, config, seed=seed)
    if randomise:
        _randomise(handle, seed)
    return model, handle


def _logits(model: PreTrainedModel, **inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _snapshot(state: MemoryState) -> list[torch.Tensor]:
    return [t.detach().clone() for t in state.layers]


def _close(
    actual: torch.Tensor, expected: torch.Tensor, msg: str = "", *, atol: float = ATOL
) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=RTOL, msg=lambda m: f"{msg}\n{m}")


def _states_close(actual: MemoryState | list, expected: MemoryState | list, msg: str = "") -> None:
    a = actual.layers if isinstance(actual, MemoryState) else actual
    b = expected.layers if isinstance(expected, MemoryState) else expected
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        _close(x.detach(), y.detach(), f"{msg} (state layer {i})")


def _states_equal(actual: MemoryState | list, expected: MemoryState | list) -> bool:
    a = actual.layers if isinstance(actual, MemoryState) else actual
    b = expected.layers if isinstance(expected, MemoryState) else expected
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _max_ratio(run) -> float:
    return max(r for heads in run.correction_ratio().values() for r in heads.values())


def _attention(model: PreTrainedModel, handle: AttachedAdapter, layer_id: int) -> nn.Module:
    return model.get_submodule(handle.paths[layer_id])


# --- 1. identity when nothing is read -----------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_zero_corrections_reproduce_the_backbone(arch: str, impl: str) -> None:
    seqs = [random_tokens(1, 10, seed=1)[0], random_tokens(1, 6, seed=2)[0]]
    batch = left_pad(seqs)
    model = build_model(arch, impl)
    bare = _logits(model, **batch)

    handle = attach(model, TSW, seed=0)
    _randomise(handle)
    # attached, outside any memory block: the backbone itself
    assert torch.equal(_logits(model, **batch), bare)

    # zero state, writes off: reads are exactly zero, so corrections are exactly zero
    state = handle.new_state(2)
    with handle.memory(state) as run:
        assert torch.equal(_logits(model, **batch), bare)
    assert all(v == 0.0 for heads in run.correction_ratio().values() for v in heads.values())
    assert all(not t.any() for t in state.layers)
    handle.detach()

    # fresh adapter with zero correction heads, writes on (TSW and SSW): still the backbone
    for granularity in ("token", "segment"):
        config = DeltaMemConfig(output_init="zero", write_granularity=granularity)
        handle = attach(model, config, seed=0)
        state = handle.new_state(2)
        segments = torch.zeros_like(batch["input_ids"])
        segments[:, -3:] = 1
        with handle.memory(state, write=True, segment_ids=segments):
            first = _logits(model, **batch)
            second = _logits(model, **batch)  # reads the state the first call wrote
        assert torch.equal(first, bare), granularity
        assert torch.equal(second, bare), granularity
        assert any(t.abs().sum() > 0 for t in state.layers), "the state should have been written"
        handle.detach()


# --- 2. TSW: prefill == chunked prefill == decoding ---------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_token_writes_are_chunking_invariant(arch: str, impl: str) -> None:
    config = DeltaMemConfig(write_granularity="token", heads=ALL_HEADS)
    model, handle = _attached(arch, impl, config)
    # 40 tokens: the one-call prefill crosses the scan's 32-token chunk boundary
    ids = random_tokens(1, 40, seed=3)

    state_full = handle.new_state()
    with handle.memory(state_full, write=True) as run:
        full = _logits(model, input_ids=ids)
    assert _max_ratio(run) > 1e-3, "corrections are too small for this test to fail"
    # read before write: the first token reads the empty state, so its logits are the
    # backbone's; the second token reads the first token's write
    bare = _logits(model, input_ids=ids)  # outside a memory block: the backbone
    assert torch.equal(full[:, 0], bare[:, 0])
    assert not torch.allclose(full[:, 1], bare[:, 1], atol=1e-3)
    assert state_full.write_counts.tolist() == [[40]]

    state_chunked = handle.new_state()
    cache = DynamicCache(config=model.config)
    pieces = []
    with handle.memory(state_chunked, write=True):
        for start, stop in ((0, 5), (5, 30), (30, 34), (34, 40)):
            pieces.append(_logits(model, input_ids=ids[:, start:stop], past_key_values=cache))
    _close(torch.cat(pieces, 1), full, "chunked prefill", atol=SCAN_LOGITS_ATOL)
    _states_close(state_chunked, state_full, "chunked prefill")
    assert state_chunked.write_counts.tolist() == [[40]]

    state_decode = handle.new_state()
    cache = DynamicCache(config=model.config)
    pieces = []
    with handle.memory(state_decode, write=True):
        pieces.append(_logits(model, input_ids=ids[:, :28], past_key_values=cache))
        for t in range(28, 40):
            pieces.append(_logits(model, input_ids=ids[:, t : t + 1], past_key_values=cache))
    _close(torch.cat(pieces, 1), full, "token-by-token decoding", atol=SCAN_LOGITS_ATOL)
    _states_close(state_decode, state_full, "token-by-token decoding")
    assert state_decode.write_counts.tolist() == [[40]]


# --- 3. sdpa == eager, padding and multi-token chunks on a cache --------------------------
def _segments(length: int, spec: list[int]) -> torch.Tensor:
    """Segment ids of ``length`` tokens: ``spec[s]`` tokens of segment s in turn, then -1."""
    ids = []
    for seg, n in enumerate(spec):
        ids += [seg] * n
    return torch.tensor(ids + [-1] * (length - len(ids)))


def _two_calls(
    model: PreTrainedModel,
    handle: AttachedAdapter,
    state: MemoryState,
    first: dict[str, torch.Tensor],
    second: dict[str, torch.Tensor],
    seg_first: torch.Tensor | None,
    seg_second: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor], float]:
    """A writing prefill then a writing 5-token chunk on top of its KV cache."""
    cache = DynamicCache(config=model.config)
    with handle.memory(state, write=True, segment_ids=seg_first) as run:
        a = _logits(model, **first, past_key_values=cache)
    after_first = _snapshot(state)
    with handle.memory(state, write=True, segment_ids=seg_second) as run2:
        b = _logits(model, **second, past_key_values=cache)
    return a, b, after_first, _snapshot(state), max(_max_ratio(run), _max_ratio(run2))


@pytest.mark.parametrize("granularity", ["token", "segment"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_sdpa_matches_eager_with_padding_and_cache(arch: str, granularity: str) -> None:
    config = DeltaMemConfig(write_granularity=granularity)
    seq_a, seq_b = random_tokens(1, 12, seed=4)[0], random_tokens(1, 7, seed=5)[0]
    more = random_tokens(2, 5, seed=6)
    seg_a, seg_b = _segments(12, [4, 5]), torch.tensor([-1, 0, 0, 0, 1, 1, 1])
    seg_more = torch.tensor([0, 0, 1, 1, 1])
    segment = granularity == "segment"

    batch = left_pad([seq_a, seq_b])
    pad = 12 - 7
    # The padding carries segment 0, not -1: only the attention mask may keep it from writing.
    seg_batch = torch.stack([seg_a, torch.cat([torch.zeros(pad, dtype=torch.long), seg_b])])
    mask2 = torch.cat([batch["attention_mask"], torch.ones(2, 5, dtype=torch.long)], 1)
    pos2 = batch["position_ids"][:, -1:] + 1 + torch.arange(5)
    second = {"input_ids": more, "attention_mask": mask2, "position_ids": pos2}

    results = {}
    for impl in IMPLS:
        model, handle = _attached(arch, impl, config)
        alone = []
        for i, (seq, seg) in enumerate(((seq_a, seg_a), (seq_b, seg_b))):
            state = handle.new_state()
            alone.append(
                _two_calls(
                    model,
                    handle,
                    state,
                    {"input_ids": seq[None]},
                    {"input_ids": more[i : i + 1]},
                    seg[None] if segment else None,
                    seg_more[None] if segment else None,
                )
            )
            expected = 4 if segment else len(seq) + 5  # 2 + 2 segments, or every token
            assert state.write_counts.tolist() == [[expected]]
        state = handle.new_state(2)
        padded = _two_calls(
            model,
            handle,
            state,
            batch,
            second,
            seg_batch if segment else None,
            seg_more.expand(2, -1) if segment else None,
        )
        # padding never writes: one write per real token (TSW) or per segment (SSW)
        if segment:
            assert state.write_counts.tolist() == [[4], [4]]
        else:
            assert state.write_counts.tolist() == [[17], [12]]
        assert padded[4] > 1e-3 and alone[0][4] > 1e-3, "corrections too small to test"
        results[impl] = (alone, padded)

    reference = results["eager"][0]
    for impl in IMPLS:
        alone, padded = results[impl]
        for i in range(2):
            tag = f"{impl} seq {i}"
            _close(alone[i][0], reference[i][0], f"{tag} alone prefill vs eager")
            _close(alone[i][1], reference[i][1], f"{tag} alone chunk vs eager")
            _states_close(alone[i][2], reference[i][2], f"{tag} alone state vs eager")
            _states_close(alone[i][3], reference[i][3], f"{tag} alone state 2 vs eager")
            real = slice(0, None) if i == 0 else slice(pad, None)
            _close(padded[0][i, real], reference[i][0][0], f"{tag} padded prefill vs alone")
            _close(padded[1][i], reference[i][1][0], f"{tag} padded cache chunk vs alone")
            _states_close(
                [t[i : i + 1] for t in padded[2]], reference[i][2], f"{tag} padded state 1"
            )
            _states_close(
                [t[i : i + 1] for t in padded[3]], reference[i][3], f"{tag} padded state 2"
            )


# --- 4. SSW: one write per segment -----------------------------------------------------------
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_segment_writes_need_segment_ids(arch: str) -> None:
    model, handle = _attached(arch, "eager", SSW)
    state = handle.new_state()
    before = _snapshot(state)
    with pytest.raises(ValueError, match="segment_ids"):
        with handle.memory(state, write=True):
            model(random_tokens(1, 6))
    assert _states_equal(state, before)
    assert state.write_counts.tolist() == [[0]]
    # reading without segment ids is fine
    with handle.memory(state):
        model(random_tokens(1, 6))


def _capture_attention_inputs(
    model: PreTrainedModel, handle: AttachedAdapter
) -> tuple[dict[int, list[torch.Tensor]], list]:
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in handle.layer_ids}
    hooks = []
    for layer_id in handle.layer_ids:

        def hook(module, args, kwargs, layer_id=layer_id):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured[layer_id].append(hidden.detach().clone())

        hooks.append(
            _attention(model, handle, layer_id).register_forward_pre_hook(hook, with_kwargs=True)
        )
    return captured, hooks


def _hand_segment_writes(
    handle: AttachedAdapter,
    layer_id: int,
    start: torch.Tensor,
    h: torch.Tensor,
    segments: torch.Tensor,
) -> torch.Tensor:
    """One standard delta-rule step per segment on the mean input, H = 1."""
    layer = handle.layers[layer_id]
    s_mat = start.clone()
    for seg in range(int(segments.max()) + 1):
        members = segments == seg
        if not members.any():
            continue
        mean = h[members].mean(0)
        k = F.normalize(torch.tanh(layer.memory_k_proj @ mean), dim=-1)
        v = layer.memory_v_proj @ mean
        beta = torch.sigmoid(layer.beta_proj @ mean + layer.beta_bias)
        s_mat = (1 - beta)[:, None] * s_mat + beta[:, None] * torch.outer(v - s_mat @ k, k)
    return s_mat


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_segment_writes_one_step_per_segment(arch: str) -> None:
    model, handle = _attached(arch, "eager", SSW)
    state = handle.new_state()
    history = random_tokens(1, 8, seed=7)
    with handle.memory(state, write=True, segment_ids=_segments(8, [3, 5])[None]) as run:
        model(history)
    assert run.writes.tolist() == [[2]] and state.write_counts.tolist() == [[2]]

    ids = random_tokens(1, 12, seed=8)
    segments = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 1, 1, -1, 2, 2]])
    before = _snapshot(state)
    with handle.memory(state.clone()) as run:  # same pre-call state, writes off
        read_only = _logits(model, input_ids=ids)
    assert _max_ratio(run) > 1e-3, "corrections are too small for this test to fail"

    captured, hooks = _capture_attention_inputs(model, handle)
    with handle.memory(state, write=True, segment_ids=segments) as run:
        written = _logits(model, input_ids=ids)
    for hook in hooks:
        hook.remove()
    assert run.writes.tolist() == [[3]]
    assert state.write_counts.tolist() == [[5]]
    # every token of the call reads the state from before the call
    assert torch.equal(written, read_only)
    for pos, layer_id in enumerate(handle.layer_ids):
        (h,) = captured[layer_id]
        with torch.no_grad():
            expected = _hand_segment_writes(handle, layer_id, before[pos][0, 0], h[0], segments[0])
        _close(state.layers[pos][0, 0], expected, f"layer {layer_id}")
        assert not torch.equal(state.layers[pos], before[pos])


@pytest.mark.parametrize("granularity", ["token", "segment"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_a_call_without_segments_writes_nothing(arch: str, granularity: str) -> None:
    model, handle = _attached(arch, "eager", DeltaMemConfig(write_granularity=granularity))
    state = handle.new_state()
    with handle.memory(state, write=True, segment_ids=torch.full((1, 10), -1)) as run:
        logits = _logits(model, input_ids=random_tokens(1, 10, seed=9))
    assert run.writes.tolist() == [[0]] and state.write_counts.tolist() == [[0]]
    assert all(not t.any() for t in state.layers)
    assert torch.equal(logits, _logits(model, input_ids=random_tokens(1, 10, seed=9)))


@pytest.mark.parametrize("granularity", ["token", "segment"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_unsegmented_tokens_never_write(arch: str, granularity: str) -> None:
    config = DeltaMemConfig(write_granularity=granularity)
    model, handle = _attached(arch, "eager", config)
    ids = random_tokens(1, 10, seed=9)

    # changing the tokens of segment -1 does not change what layer 0 writes (its attention
    # input is per token: embedding + norm, no mixing across tokens yet)
    segments = torch.tensor([[-1, -1, 0, 0, 0, -1, 1, 1, -1, -1]])
    other = ids.clone()
    other[segments < 0] = random_tokens(1, 10, seed=10)[segments < 0]
    states = []
    for tokens in (ids, other):
        state = handle.new_state()
        with handle.memory(state, write=True, segment_ids=segments) as run:
            model(tokens)
        expected = 5 if granularity == "token" else 2
        assert run.writes.tolist() == [[expected]]
        states.append(state)
    first = handle.layer_ids.index(0)
    assert states[0].layers[first].abs().sum() > 0
    _close(states[1].layers[first], states[0].layers[first], "layer 0 state")


# --- 5. MSW routing ---------------------------------------------------------------------------
def _route_cases() -> list[tuple[str, object, torch.Tensor]]:
    """(name, routes, expected [S=2, H=4] routing matrix)."""
    one_hot = torch.zeros(2, 4, dtype=torch.bool)
    one_hot[0, 1] = one_hot[1, 3] = True
    both_2 = torch.zeros(2, 4, dtype=torch.bool)
    both_2[:, 2] = True
    split = torch.zeros(2, 4, dtype=torch.bool)
    split[0, 0] = split[1, 1] = split[1, 3] = True
    return [
        ("list", [[2], [2]], both_2),
        ("list-two", [[0], [1, 3]], split),
        ("bool[S,H]", one_hot, one_hot),
        ("bool[B,S,H]", one_hot[None], one_hot),
    ]


@pytest.mark.parametrize("granularity", ["token", "segment"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_routed_segments_change_only_their_states(arch: str, granularity: str) -> None:
    config = DeltaMemConfig(num_states=4, write_granularity=granularity)
    model, handle = _attached(arch, "eager", config)
    base = handle.new_state()
    history = random_tokens(1, 6, seed=11)
    with handle.memory(base, write=True, segment_ids=_segments(6, [3, 3])[None]):
        model(history)  # default routes: every segment writes every state
    assert all(t[0, j].abs().sum() > 0 for t in base.layers for j in range(4))

    ids = random_tokens(1, 12, seed=12)
    segments = _segments(12, [5, 5])[None]
    per_segment = 5 if granularity == "token" else 1
    for name, routes, matrix in _route_cases():
        state = base.clone()
        before_counts = state.write_counts.clone()
        with handle.memory(state, write=True, segment_ids=segments, routes=routes) as run:
            model(ids)
        expected = (matrix.sum(0) * per_segment)[None]
        assert run.writes.tolist() == expected.tolist(), name
        assert (state.write_counts - before_counts).tolist() == expected.tolist(), name
        for pos, tensor in enumerate(state.layers):
            for j in range(4):
                same = torch.equal(tensor[0, j], base.layers[pos][0, j])
                routed = bool(matrix[:, j].any())
                assert same != routed, f"{name}: layer {pos} state {j}"


BAD_ROUTES = {
    "index-4": [[0], [4]],
    "index-minus-1": [[-1], [0]],
    "too-few-segments": [[0]],
    "too-many-segments": [[0], [1], [2]],
    "flat-list": [0, 1],
    "tensor-S-3": torch.ones(2, 3, dtype=torch.bool),
    "tensor-3-H": torch.ones(3, 4, dtype=torch.bool),
    "tensor-batch-2": torch.ones(2, 2, 4, dtype=torch.bool),
    "tensor-1d": torch.ones(4, dtype=torch.bool),
}


@pytest.mark.parametrize("case", list(BAD_ROUTES))
@pytest.mark.parametrize("granularity", ["token", "segment"])
def test_bad_routes_are_refused(granularity: str, case: str) -> None:
    config = DeltaMemConfig(num_states=4, write_granularity=granularity)
    model, handle = _attached("llama", "eager", config)
    state = handle.new_state()
    segments = _segments(8, [4, 4])[None]  # 2 segments, batch 1
    with (
        pytest.raises(ValueError, match="route"),
        handle.memory(state, write=True, segment_ids=segments, routes=BAD_ROUTES[case]),
    ):
        model(random_tokens(1, 8))
    assert all(not t.any() for t in state.layers)
    assert state.write_counts.tolist() == [[0, 0, 0, 0]]


def test_routes_need_segment_ids() -> None:
    _, handle = _attached("llama", "eager", DeltaMemConfig(num_states=4, write_granularity="token"))
    with (
        pytest.raises(ValueError, match="segment_ids"),
        handle.memory(handle.new_state(), write=True, routes=[[0]]),
    ):
        pass


# --- 6. generation --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_generation_reads_without_writing(arch: str) -> None:
    model, handle = _attached(arch, "sdpa", TSW)
    prompt = random_tokens(1, 5, seed=13)
    settings = {"max_new_tokens": 5, "do_sample": False, "min_new_tokens": 5}
    settings |= {"return_dict_in_generate": True, "output_logits": True}

    zero = handle.new_state()
    with torch.no_grad(), handle.memory(zero):
        out_zero = model.generate(prompt, **settings)
    assert all(not t.any() for t in zero.layers)

    state = handle.new_state()
    with handle.memory(state, write=True):
        model(random_tokens(1, 16, seed=14))
    snapshot, counts = _snapshot(state), state.write_counts.clone()
    with torch.no_grad(), handle.memory(state) as run:
        out = model.generate(prompt, **settings)
    assert _states_equal(state, snapshot)
    assert torch.equal(state.write_counts, counts)
    assert run.writes.tolist() == [[0]]
    assert _max_ratio(run) > 1e-3
    diff = max((a - b).abs().max().item() for a, b in zip(out.logits, out_zero.logits, strict=True))
    assert diff > 1e-3, "the written memory should change the generation logits"


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_padded_batch_generation_matches_single_generation(arch: str) -> None:
    model, handle = _attached(arch, "sdpa", TSW)
    prompts = [random_tokens(1, 7, seed=26)[0], random_tokens(1, 4, seed=27)[0]]
    histories = [random_tokens(1, 9, seed=28), random_tokens(1, 5, seed=29)]
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    settings |= {"return_dict_in_generate": True, "output_logits": True}
    states = []
    for history in histories:
        state = handle.new_state()
        with handle.memory(state, write=True):
            model(history)
        states.append(state)

    alone = []
    for prompt, state in zip(prompts, states, strict=True):
        with torch.no_grad(), handle.memory(state) as run:
            alone.append(model.generate(prompt[None], **settings))
        assert _max_ratio(run) > 1e-3
    batch = left_pad(prompts)
    del batch["position_ids"]  # generate derives positions from the mask
    state = MemoryState.concat(states)
    snapshot = _snapshot(state)
    with torch.no_grad(), handle.memory(state):
        out = model.generate(**batch, **settings)
    assert _states_equal(state, snapshot)
    for i in range(2):
        for step, (got, expected) in enumerate(zip(out.logits, alone[i].logits, strict=True)):
            _close(got[i], expected[0], f"conversation {i} step {step}")


# --- 7. conversations in one batch are isolated ----------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batched_conversations_do_not_share_memory(arch: str, impl: str) -> None:
    model, handle = _attached(arch, impl, TSW)

    def written(seed: int) -> MemoryState:
        state = handle.new_state()
        with handle.memory(state, write=True):
            model(random_tokens(1, 9, seed=seed))
        return state

    state_a, state_b, state_c = written(15), written(16), written(17)
    queries = random_tokens(2, 6, seed=18)

    def run(states: list[MemoryState], tokens: torch.Tensor) -> tuple[torch.Tensor, MemoryState]:
        state = MemoryState.concat([s.clone() for s in states])
        with handle.memory(state, write=True):
            logits = _logits(model, input_ids=tokens)
        return logits, state

    batch_logits, batch_state = run([state_a, state_b], queries)
    for i, single in enumerate((state_a, state_b)):
        logits, state = run([single], queries[i : i + 1])
        _close(batch_logits[i : i + 1], logits, f"conversation {i}")
        _states_close([t[i : i + 1] for t in batch_state.layers], state, f"conversation {i}")

    other_logits, other_state = run([state_a, state_c], queries)
    assert not torch.allclose(other_logits[1], batch_logits[1], atol=1e-3)
    # same shapes, same kernels: conversation 1 is bit-for-bit unaffected by conversation 2
    assert torch.equal(other_logits[0], batch_logits[0])
    assert _states_equal([t[:1] for t in other_state.layers], [t[:1] for t in batch_state.layers])


# --- 8. correction ratio --------------------------------------------------------------------
STRATEGIES = {
    "TSW": DeltaMemConfig(write_granularity="token"),
    "SSW": DeltaMemConfig(write_granularity="segment"),
    "MSW-TSW": DeltaMemConfig(write_granularity="token", num_states=4),
    "MSW-SSW": DeltaMemConfig(write_granularity="segment", num_states=4, heads=ALL_HEADS),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_correction_ratio_covers_every_layer_and_head(arch: str, impl: str, strategy: str) -> None:
    config = STRATEGIES[strategy]
    model, handle = _attached(arch, impl, config)
    state = handle.new_state(2)
    batch = left_pad([random_tokens(1, 9, seed=19)[0], random_tokens(1, 6, seed=20)[0]])
    segments = _segments(9, [4, 5])[None].expand(2, -1)
    routes = [[0, 1], [2, 3]] if config.num_states > 1 else None
    with handle.memory(state, write=True, segment_ids=segments, routes=routes) as run:
        model(**batch)
    with handle.memory(state) as run:
        model(**batch)
    ratios = run.correction_ratio()
    assert sorted(ratios) == list(handle.layer_ids)
    for layer_id, heads in ratios.items():
        assert sorted(heads) == sorted(config.heads), layer_id
        for head, value in heads.items():
            assert value > 0, (layer_id, head)


# --- 9. detach, freezing, gradients -----------------------------------------------------------
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_detach_restores_the_backbone(arch: str) -> None:
    model = build_model(arch, "sdpa")
    model.get_input_embeddings().weight.requires_grad_(False)  # a mixed set of flags
    ids = random_tokens(1, 8, seed=21)
    bare = _logits(model, input_ids=ids)
    names = [(n, p.requires_grad) for n, p in model.named_parameters()]
    module_names = [n for n, _ in model.named_modules()]
    attentions = [m for m in model.modules() if hasattr(m, "q_proj")]
    projections = [
        {n: getattr(m, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")} for m in attentions
    ]
    hooks = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]

    handle = attach(model, DeltaMemConfig(write_granularity="token", heads=ALL_HEADS), seed=0)
    _randomise(handle)
    assert len(handle.layer_ids) == 2
    for attention in attentions:
        for head in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert isinstance(getattr(attention, head), CorrectedLinear)
        assert isinstance(getattr(attention, ADAPTER_ATTRIBUTE), nn.Module)
    adapter_ids = {id(p) for p in handle.parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in adapter_ids), name
    assert len(adapter_ids) == 2 * 9
    with pytest.raises(ValueError, match="already attached"):
        attach(model, TSW)
    state = handle.new_state()
    with handle.memory(state, write=True):
        model(ids)
    with handle.memory(state):
        assert not torch.allclose(_logits(model, input_ids=ids), bare, atol=1e-3)

    assert handle.detach() is model
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == names
    assert [n for n, _ in model.named_modules()] == module_names
    assert not any(ADAPTER_ATTRIBUTE in n for n in module_names)
    for attention, original in zip(attentions, projections, strict=True):
        for name, module in original.items():
            assert getattr(attention, name) is module
        assert not hasattr(attention, ADAPTER_ATTRIBUTE)
    assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()] == hooks
    assert not hasattr(model, "_deltamem_handle")
    assert torch.equal(_logits(model, input_ids=ids), bare)
    attach(model, TSW).detach()  # attachable again


@pytest.mark.parametrize("granularity", ["token", "segment"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_gradients_flow_through_the_state(arch: str, granularity: str) -> None:
    config = DeltaMemConfig(write_granularity=granularity)
    model, handle = _attached(arch, "sdpa", config)
    history = random_tokens(1, 10, seed=22)
    question = random_tokens(1, 6, seed=23)
    state = handle.new_state()
    with handle.memory(state, write=True, segment_ids=_segments(10, [4, 6])[None]):
        model(history)  # write pass, gradients kept
    assert all(t.requires_grad for t in state.layers)
    with handle.memory(state):  # read pass, writes off
        loss = model(question, labels=question).loss
    loss.backward()
    for layer_id in handle.layer_ids:
        layer = handle.layers[layer_id]
        for name in ("memory_k_proj", "memory_v_proj", "beta_proj", "memory_q_proj"):
            grad = getattr(layer, name).grad
            assert grad is not None and grad.abs().sum() > 0, (layer_id, name)
    assert all(p.grad is None for n, p in model.named_parameters() if "delta_mem" not in n)


# --- 10. refusals ---------------------------------------------------------------------------
def test_unsupported_architectures_are_named() -> None:
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=128, n_embd=HIDDEN_SIZE, n_layer=2, n_head=4, n_positions=64)
    )
    with pytest.raises(UnsupportedModelError, match="GPT2Attention"):
        attach(gpt2, TSW)
    assert all(p.requires_grad for p in gpt2.parameters()), "a refused attach changed the model"
    assert not hasattr(gpt2, "_deltamem_handle")

    phi3 = Phi3ForCausalLM(  # fused qkv_proj
        Phi3Config(
            vocab_size=128,
            hidden_size=HIDDEN_SIZE,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    )
    with pytest.raises(UnsupportedModelError, match="Phi3Attention"):
        attach(phi3, TSW)

    class FusedProjection(nn.Module):  # e.g. a quantised or fused stand-in for nn.Linear
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(HIDDEN_SIZE, HIDDEN_SIZE))

    model = build_model("llama")
    model.model.layers[1].self_attn.q_proj = FusedProjection()
    with pytest.raises(UnsupportedModelError, match="LlamaAttention"):
        attach(model, TSW)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(ADAPTER_ATTRIBUTE in n for n, _ in model.named_modules())


def test_state_batch_must_match_the_input() -> None:
    model, handle = _attached("qwen3", "eager", TSW)
    for state_batch, input_batch in ((1, 2), (2, 1)):
        state = handle.new_state(state_batch)
        with handle.memory(state, write=True):
            model(random_tokens(state_batch, 4, seed=24))
        before, counts = _snapshot(state), state.write_counts.clone()
        with pytest.raises(ValueError, match="batch"), handle.memory(state, write=True):
            model(random_tokens(input_batch, 4, seed=25))
        assert _states_equal(state, before), "no silent reset"
        assert torch.equal(state.write_counts, counts)
        assert state.batch_size == state_batch


def test_state_of_another_adapter_is_refused() -> None:
    _, handle = _attached("llama", "eager", TSW, seed=0, randomise=False)
    other_model, other = _attached("llama", "eager", TSW, seed=1, randomise=False)
    foreign = other.new_state()
    with other.memory(foreign, write=True):
        other_model(random_tokens(1, 4))
    with pytest.raises(ValueError, match="adapter"), handle.memory(foreign):
        pass
    # and the same seed gives the same adapter, whose states are accepted
    same_model, same = _attached("llama", "eager", TSW, seed=0, randomise=False)
    with same.memory(handle.new_state()):
        same_model(random_tokens(1, 4))


def test_correction_tracking_can_be_switched_off_without_changing_outputs() -> None:
    model = build_model("llama", "sdpa", seed=0)
    handle = attach(model, DeltaMemConfig(write_granularity="token"), seed=0)
    ids = random_tokens(1, 12, seed=1)
    state = handle.new_state()
    with torch.no_grad(), handle.memory(state, write=True):
        model(ids)
    with torch.no_grad(), handle.memory(state) as tracked:
        tracked_logits = model(ids).logits
    with torch.no_grad(), handle.memory(state, track_corrections=False) as untracked:
        untracked_logits = model(ids).logits
    assert torch.equal(tracked_logits, untracked_logits)
    assert tracked.correction_ratio() and untracked.correction_ratio() == {}
