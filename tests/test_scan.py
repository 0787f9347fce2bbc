"""Op tests for the delta-rule scan (flash-linear-attention style).

The chunked fast path is checked against the token-by-token reference on reads, final state and
the gradients w.r.t. q, k, v, beta and the initial state (random upstream gradients on both
outputs), in fp32 at ``atol = rtol = 1e-5``. Masks, routing and the algebraic properties of the
contract (read before write, splitting, empty sequences, zero gates, closed-form single steps,
argument validation) are tested on both implementations.

Numerics worth knowing: the chunked path forms its decay ratios from cumulative sums of
``log(1 − β)``. A near-one gate adds about −12 per token, so those sums are kept in fp64 (an
fp32 cumsum lost ~10 % of dL/dβ and drifted 4e-5 on long sequences); a gate of exactly 1 is
clamped before the log so its gradient stays finite. The tests below pin both at 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from langchain_deltamem.scan import (
    NAIVE_MAX_TOKENS,
    UPDATE_MODES,
    chunk_delta_rule_scan,
    delta_rule_scan,
    delta_rule_step,
    naive_delta_rule_scan,
    read_state,
    update_coefficients,
)

ATOL = 1e-5
RTOL = 1e-5
GRAD_NAMES = ("q", "k", "v", "beta", "state")
MODES = UPDATE_MODES  # ("standard", "gated", "plain")
IMPLS = ("naive", "chunk")

SCANS = {"naive": naive_delta_rule_scan, "chunk": chunk_delta_rule_scan}


# --------------------------------------------------------------------------------------------
# helpers


def make_inputs(
    batch: int,
    seq_len: int,
    n_states: int,
    rank: int,
    seed: int,
    *,
    extreme_gates: bool = True,
) -> dict[str, torch.Tensor]:
    """Random fp32 scan inputs: q/k tanh-then-L2 per state, β = σ(logits), S₀ ≠ 0.

    With ``extreme_gates`` about 10 % of the gate logits are +12 (β ≈ 1 − 6e-6) and 10 % are
    −12 (β ≈ 6e-6), and at least one of each is always present.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, n_states, rank)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen)

    q = F.normalize(torch.tanh(randn(*shape)), dim=-1)
    k = F.normalize(torch.tanh(randn(*shape)), dim=-1)
    v = randn(*shape)
    logits = 2.0 * randn(*shape)
    if extreme_gates and seq_len > 0:
        pick = torch.rand(shape, generator=gen)
        logits = torch.where(pick < 0.1, torch.full_like(logits, 12.0), logits)
        logits = torch.where(pick > 0.9, torch.full_like(logits, -12.0), logits)
        logits[0, 0, 0, 0] = 12.0
        logits[-1, -1, -1, -1] = -12.0
    beta = torch.sigmoid(logits)
    state = 0.5 * randn(batch, n_states, rank, rank)
    return {"q": q, "k": k, "v": v, "beta": beta, "state": state}


def run_with_grads(
    scan, inputs: dict[str, torch.Tensor], d_reads, d_state, **kwargs
) -> dict[str, torch.Tensor]:
    """Forward + backward with the given upstream gradients; returns outputs and input grads."""
    leaves = {name: inputs[name].detach().clone().requires_grad_() for name in GRAD_NAMES}
    reads, final = scan(*(leaves[name] for name in GRAD_NAMES), **kwargs)
    torch.autograd.backward((reads, final), (d_reads, d_state))
    out = {"reads": reads.detach(), "final_state": final.detach()}
    out.update({f"d{name}": leaves[name].grad for name in GRAD_NAMES})
    return out


def upstream(inputs: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 10_000)
    d_reads = torch.randn(inputs["q"].shape, generator=gen)
    d_state = torch.randn(inputs["state"].shape, generator=gen)
    return d_reads, d_state


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float = ATOL):
    torch.testing.assert_close(
        actual,
        expected,
        atol=tol,
        rtol=tol,
        msg=lambda m: f"{name}: {m}",
    )


def compare_outputs(got, ref):
    """Reads, final state and every gradient at the 1e-5 budget."""
    for name, expected in ref.items():
        assert_close(name, got[name], expected, ATOL)


def drop_tokens(inputs, b: int, keep: torch.Tensor, h: int | None = None):
    """Batch row ``b`` (and state ``h``) with only the tokens in ``keep``, as a batch of one."""
    states = slice(None) if h is None else slice(h, h + 1)
    out = {name: inputs[name][b : b + 1, keep, states] for name in ("q", "k", "v", "beta")}
    out["state"] = inputs["state"][b : b + 1, states]
    return out


def scan_args(inputs):
    return tuple(inputs[name] for name in GRAD_NAMES)


# --------------------------------------------------------------------------------------------
# chunked path vs reference: values, final state, gradients

SEQ_LENS = (1, 2, 7, 31, 33, 100, 1000, 4096)
CASES = [
    # mode, H, T, rank, chunk size, mask
    *(
        pytest.param(mode, h, t, 8, 32, None, id=f"{mode}-H{h}-T{t}-r8")
        for mode in MODES
        for h in (1, 4)
        for t in SEQ_LENS
    ),
    *(
        pytest.param(mode, h, t, 8, c, None, id=f"{mode}-H{h}-T{t}-r8-C{c}")
        for mode in MODES
        for h, t in ((4, 33), (4, 100), (1, 1000))
        for c in (16, 64)
    ),
    *(
        pytest.param(mode, 4, 100, r, 32, None, id=f"{mode}-H4-T100-r{r}")
        for mode in MODES
        for r in (4, 16)
    ),
    *(
        pytest.param(mode, 4, 100, 8, 32, kind, id=f"{mode}-H4-T100-r8-mask{kind}")
        for mode in MODES
        for kind in ("BT", "BTH")
    ),
]


def random_mask(inputs, kind: str, seed: int) -> torch.Tensor:
    b, t, h, _ = inputs["q"].shape
    shape = (b, t) if kind == "BT" else (b, t, h)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) > 0.3


@pytest.mark.parametrize(("mode", "n_states", "seq_len", "rank", "chunk_size", "mask"), CASES)
def test_chunk_matches_naive(mode, n_states, seq_len, rank, chunk_size, mask):
    seed = 1000 * n_states + seq_len + rank + chunk_size
    batch = 2 if seq_len >= 1000 else 3
    inputs = make_inputs(batch, seq_len, n_states, rank, seed)
    valid = None if mask is None else random_mask(inputs, mask, seed)
    d_reads, d_state = upstream(inputs, seed)

    ref = run_with_grads(naive_delta_rule_scan, inputs, d_reads, d_state, mode=mode, valid=valid)
    got = run_with_grads(
        chunk_delta_rule_scan,
        inputs,
        d_reads,
        d_state,
        mode=mode,
        valid=valid,
        chunk_size=chunk_size,
    )
    compare_outputs(got, ref)


@pytest.mark.parametrize(
    ("mode", "n_states", "seq_len", "chunk_size"),
    [
        pytest.param("standard", 4, 4096, 32, id="standard-H4-T4096-r8"),
        pytest.param("standard", 1, 1000, 64, id="standard-H1-T1000-r8-C64"),
    ],
)
def test_chunk_long_sequence_at_1e5(mode, n_states, seq_len, chunk_size):
    """Long sequences and 64-token chunks, with dβ, at the 1e-5 budget."""
    seed = 1000 * n_states + seq_len + 8 + chunk_size
    inputs = make_inputs(2, seq_len, n_states, 8, seed)
    d_reads, d_state = upstream(inputs, seed)
    ref = run_with_grads(naive_delta_rule_scan, inputs, d_reads, d_state, mode=mode)
    got = run_with_grads(
        chunk_delta_rule_scan, inputs, d_reads, d_state, mode=mode, chunk_size=chunk_size
    )
    compare_outputs(got, ref)


BETA_GRAD_CASES = [
    pytest.param(mode, t, id=f"{mode}-H4-T{t}") for mode in MODES for t in (1, 7, 100)
]


@pytest.mark.parametrize(("mode", "seq_len"), BETA_GRAD_CASES)
def test_chunk_beta_grad_matches_naive(mode, seq_len):
    inputs = make_inputs(3, seq_len, 4, 8, seed=seq_len)
    d_reads, d_state = upstream(inputs, seq_len)
    ref = run_with_grads(naive_delta_rule_scan, inputs, d_reads, d_state, mode=mode)
    got = run_with_grads(chunk_delta_rule_scan, inputs, d_reads, d_state, mode=mode)
    assert_close("dbeta", got["dbeta"], ref["dbeta"])


@pytest.mark.parametrize("mode", MODES)
def test_chunk_beta_grad_is_finite_at_gate_one(mode):
    inputs = make_inputs(2, 40, 2, 8, seed=3)
    inputs["beta"][:, 5] = 1.0  # e.g. sigmoid(20.0) == 1.0 in fp32
    d_reads, d_state = upstream(inputs, 3)
    ref = run_with_grads(naive_delta_rule_scan, inputs, d_reads, d_state, mode=mode)
    got = run_with_grads(chunk_delta_rule_scan, inputs, d_reads, d_state, mode=mode)
    assert torch.isfinite(ref["dbeta"]).all()
    assert torch.isfinite(got["dbeta"]).all()


@pytest.mark.parametrize(
    ("mode", "seq_len"),
    [pytest.param(m, 1000, id=f"{m}-T1000") for m in ("standard", "gated")],
)
def test_reference_is_accurate_in_fp32(mode, seq_len):
    """The fp32 reference is within 1e-5 of fp64 where the chunked path is not (docstring)."""
    inputs = make_inputs(2, seq_len, 1, 8, seed=1000 + seq_len + 8 + 32)
    d_reads, d_state = upstream(inputs, 1000 + seq_len + 8 + 32)
    ref = run_with_grads(naive_delta_rule_scan, inputs, d_reads, d_state, mode=mode)
    exact = run_with_grads(
        naive_delta_rule_scan,
        {name: t.double() for name, t in inputs.items()},
        d_reads.double(),
        d_state.double(),
        mode=mode,
    )
    compare_outputs(ref, {name: t.float() for name, t in exact.items()})


@pytest.mark.parametrize("seq_len", [pytest.param(t, id=f"T{t}") for t in (1, 2, 4, 5, 33)])
@pytest.mark.parametrize("impl", IMPLS)
def test_dispatcher_routes_to_implementations(impl, seq_len):
    inputs = make_inputs(2, seq_len, 2, 8, seed=seq_len)
    reads, final = delta_rule_scan(*scan_args(inputs), mode="gated", impl=impl)
    # a few tokens (a decode step, segment writes) always take the step-by-step path
    target = naive_delta_rule_scan if seq_len <= NAIVE_MAX_TOKENS else SCANS[impl]
    ref_reads, ref_final = target(*scan_args(inputs), mode="gated")
    assert torch.equal(reads, ref_reads)
    assert torch.equal(final, ref_final)


# --------------------------------------------------------------------------------------------
# validity mask and routing


@pytest.mark.parametrize("kind", ["BT", "BTH"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_masked_tokens_are_absent(impl, mode, kind):
    """A masked token leaves the state as if it had been removed from the sequence."""
    inputs = make_inputs(3, 75, 3, 8, seed=7)
    valid = random_mask(inputs, kind, seed=7)
    valid[0, :5] = False  # leading masked run
    valid[1, -9:] = False  # trailing masked run (and padding in the last chunk)
    reads, final = SCANS[impl](*scan_args(inputs), mode=mode, valid=valid)
    n_batch, _, n_states, _ = inputs["q"].shape
    for b in range(n_batch):
        for h in range(n_states) if kind == "BTH" else (None,):
            keep = (valid[b] if h is None else valid[b, :, h]).nonzero().squeeze(-1)
            sub = drop_tokens(inputs, b, keep, h)
            sub_reads, sub_final = naive_delta_rule_scan(*scan_args(sub), mode=mode)
            states = slice(None) if h is None else slice(h, h + 1)
            where = f"batch {b}" + ("" if h is None else f", state {h}")
            assert_close(f"final state ({where})", final[b : b + 1, states], sub_final)
            assert_close(f"reads ({where})", reads[b : b + 1, keep, states], sub_reads)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_unrouted_state_is_bitwise_unchanged(impl, mode):
    inputs = make_inputs(3, 100, 4, 8, seed=11)
    state_before = inputs["state"].clone()

    valid = random_mask(inputs, "BTH", seed=11)
    valid[:, :, 2] = False  # state 2 never routed, in every batch row
    valid[1, :, 0] = False  # state 0 of batch row 1 never routed
    _, final = SCANS[impl](*scan_args(inputs), mode=mode, valid=valid)
    assert torch.equal(final[:, 2], state_before[:, 2])
    assert torch.equal(final[1, 0], state_before[1, 0])
    assert not torch.equal(final[0, 0], state_before[0, 0])

    valid_bt = random_mask(inputs, "BT", seed=12)
    valid_bt[2] = False  # batch row 2 fully masked
    _, final = SCANS[impl](*scan_args(inputs), mode=mode, valid=valid_bt)
    assert torch.equal(final[2], state_before[2])
    assert torch.equal(inputs["state"], state_before)  # never modified in place


# --------------------------------------------------------------------------------------------
# properties of the contract


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_first_read_is_initial_state(impl, mode):
    inputs = make_inputs(3, 33, 4, 8, seed=13)
    reads, _ = SCANS[impl](*scan_args(inputs), mode=mode)
    expected = torch.einsum("bhij,bhj->bhi", inputs["state"], inputs["q"][:, 0])
    assert_close("reads[:, 0]", reads[:, 0], expected)


@pytest.mark.parametrize("split", [pytest.param(s, id=f"split{s}") for s in (1, 37, 64)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_two_halves_equal_one_scan(impl, mode, split):
    inputs = make_inputs(3, 100, 4, 8, seed=17)
    scan = SCANS[impl]
    reads, final = scan(*scan_args(inputs), mode=mode)
    head = {name: t[:, :split] for name, t in inputs.items() if name != "state"}
    tail = {name: t[:, split:] for name, t in inputs.items() if name != "state"}
    reads_1, mid = scan(*scan_args({**head, "state": inputs["state"]}), mode=mode)
    reads_2, final_2 = scan(*scan_args({**tail, "state": mid}), mode=mode)
    assert_close("reads", torch.cat([reads_1, reads_2], dim=1), reads)
    assert_close("final state", final_2, final)


@pytest.mark.parametrize("impl", [*IMPLS, "dispatch"])
def test_empty_sequence_returns_state_unchanged(impl):
    inputs = make_inputs(2, 0, 3, 8, seed=19)
    scan = delta_rule_scan if impl == "dispatch" else SCANS[impl]
    reads, final = scan(*scan_args(inputs), mode="standard")
    assert reads.shape == (2, 0, 3, 8)
    assert torch.equal(final, inputs["state"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_zero_gates_keep_state_exactly(impl, mode):
    inputs = make_inputs(3, 100, 4, 8, seed=23)
    inputs["beta"] = torch.zeros_like(inputs["beta"])
    reads, final = SCANS[impl](*scan_args(inputs), mode=mode)
    assert torch.equal(final, inputs["state"])
    assert_close("reads", reads, read_state(inputs["state"], inputs["q"]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_read_state_equals_reads_with_zero_gates(impl, mode):
    inputs = make_inputs(2, 40, 3, 16, seed=29)
    inputs["beta"] = torch.zeros_like(inputs["beta"])
    reads, _ = SCANS[impl](*scan_args(inputs), mode=mode)
    assert_close("read_state", read_state(inputs["state"], inputs["q"]), reads)


def closed_form_step(q, k, v, beta, state, mode):
    """The update formulas written out row by row in fp64 (β_i, v_i: row i, the value index).

    standard S' = (1-β)S + β(v - Sk)kᵀ, gated S' = (1-β)S(I - βkkᵀ) + βvkᵀ,
    plain S' = S + β(v - Sk)kᵀ, each row with its own gate.
    """
    q, k, v, beta, state = (t.double() for t in (q, k, v, beta, state))
    n_batch, n_states, rank = q.shape
    eye = torch.eye(rank, dtype=torch.float64)
    new = torch.empty_like(state)
    read = torch.empty_like(q)
    for b in range(n_batch):
        for h in range(n_states):
            s, kk = state[b, h], k[b, h]
            read[b, h] = s @ q[b, h]
            for i in range(rank):
                g, vi, row = beta[b, h, i], v[b, h, i], s[i]
                if mode == "standard":
                    new[b, h, i] = (1 - g) * row + g * (vi - row @ kk) * kk
                elif mode == "gated":
                    new[b, h, i] = (1 - g) * row @ (eye - g * torch.outer(kk, kk)) + g * vi * kk
                else:
                    new[b, h, i] = row + g * (vi - row @ kk) * kk
    return read, new


@pytest.mark.parametrize("mode", MODES)
def test_single_step_matches_closed_form(mode):
    inputs = make_inputs(2, 1, 3, 4, seed=31)
    q, k, v, beta = (inputs[name][:, 0] for name in ("q", "k", "v", "beta"))
    state = inputs["state"]
    exp_read, exp_state = closed_form_step(q, k, v, beta, state, mode)
    read, new_state = delta_rule_step(q, k, v, beta, state, mode)
    assert_close("read", read.double(), exp_read)
    assert_close("new state", new_state.double(), exp_state)
    for impl, scan in SCANS.items():
        reads, final = scan(*scan_args(inputs), mode=mode)
        assert_close(f"{impl} read", reads[:, 0].double(), exp_read)
        assert_close(f"{impl} final state", final.double(), exp_state)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_gates_act_on_rows(impl, mode):
    """β_i gates row i (value index): with only row 1 gated, only row 1 moves."""
    inputs = make_inputs(2, 33, 2, 8, seed=37, extreme_gates=False)
    inputs["beta"][..., [0, *range(2, 8)]] = 0.0
    _, final = SCANS[impl](*scan_args(inputs), mode=mode)
    others = [0, *range(2, 8)]
    assert torch.equal(final[:, :, others], inputs["state"][:, :, others])
    assert not torch.equal(final[:, :, 1], inputs["state"][:, :, 1])


def test_update_coefficients():
    beta = torch.tensor([0.0, 0.25, 1.0])
    keep, erase = update_coefficients(beta, "standard")
    assert torch.equal(keep, 1 - beta) and torch.equal(erase, beta)
    keep, erase = update_coefficients(beta, "gated")
    assert torch.equal(keep, 1 - beta) and torch.equal(erase, (1 - beta) * beta)
    keep, erase = update_coefficients(beta, "plain")
    assert keep is None and torch.equal(erase, beta)


# --------------------------------------------------------------------------------------------
# argument validation


def _bad(name: str):
    """Inputs (B=2, T=5, H=3, r=4) with argument ``name`` of the wrong shape."""
    inputs = make_inputs(2, 5, 3, 4, seed=41)
    valid = None
    if name == "q":
        inputs["q"] = inputs["q"][:, :, 0]  # 3-D
    elif name in ("k", "v", "beta"):
        inputs[name] = inputs[name][..., :3]
    elif name == "state":
        inputs["state"] = inputs["state"][:, :2]
    elif name == "valid":
        valid = torch.ones(2, 5, 2, dtype=torch.bool)
    return inputs, valid


BAD_NAMES = ("q", "k", "v", "beta", "state", "valid")


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("impl", [*IMPLS, "dispatch"])
def test_bad_shape_raises_naming_argument(impl, name):
    inputs, valid = _bad(name)
    scan = delta_rule_scan if impl == "dispatch" else SCANS[impl]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        scan(*scan_args(inputs), valid=valid)


def test_dispatcher_rejects_low_rank_q_with_value_error():
    inputs = make_inputs(2, 5, 3, 4, seed=41)
    with pytest.raises(ValueError, match=r"\bq\b"):
        delta_rule_scan(torch.zeros(4), *scan_args(inputs)[1:])


@pytest.mark.parametrize("impl", [*IMPLS, "dispatch"])
def test_unknown_mode_raises(impl):
    inputs = make_inputs(2, 5, 3, 4, seed=43)
    scan = delta_rule_scan if impl == "dispatch" else SCANS[impl]
    with pytest.raises(ValueError, match="mode"):
        scan(*scan_args(inputs), mode="hebbian")


def test_unknown_mode_raises_in_step_and_coefficients():
    q, k, v, beta, state = (torch.zeros(1, 1, 4),) * 4 + (torch.zeros(1, 1, 4, 4),)
    with pytest.raises(ValueError, match="mode"):
        delta_rule_step(q, k, v, beta, state, "hebbian")
    with pytest.raises(ValueError, match="mode"):
        update_coefficients(beta, "hebbian")


@pytest.mark.parametrize(
    "seq_len",
    [5, 1],
    ids=["T5", "T1"],
)
def test_unknown_impl_raises(seq_len):
    inputs = make_inputs(2, seq_len, 3, 4, seed=47)
    with pytest.raises(ValueError, match="impl"):
        delta_rule_scan(*scan_args(inputs), impl="fast")
