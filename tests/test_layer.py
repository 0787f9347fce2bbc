"""`DeltaMemLayer` on its own (no backbone): the write-inputs hook research probes use.

The layer's maths is tested through an attached model in ``test_injection.py`` and its scan in
``test_scan.py``; here a hook must see what the layer writes, may change it, and must leave no
trace when its block ends.
"""

from __future__ import annotations

import pytest
import torch

from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.layer import DeltaMemLayer, hook_write_inputs

HIDDEN = 16


def _layer(granularity: str = "token", seed: int = 0) -> DeltaMemLayer:
    torch.manual_seed(seed)
    config = DeltaMemConfig(rank=4, write_granularity=granularity, output_init="zero")
    layer = DeltaMemLayer(config, HIDDEN, {"q": HIDDEN, "o": HIDDEN})
    with torch.no_grad():
        layer.beta_bias.fill_(2.0)  # open gates, so writes are large
    return layer


def _write(layer: DeltaMemLayer, h: torch.Tensor) -> torch.Tensor:
    state = torch.zeros(1, 1, 4, 4)
    _, new_state = layer(h, state, write=True)
    return new_state


def test_a_hook_sees_the_write_inputs_and_may_keep_the_layers_own() -> None:
    layer = _layer()
    h = torch.randn(1, 5, HIDDEN)
    plain = _write(layer, h)
    seen: list[tuple[DeltaMemLayer, torch.Tensor]] = []

    def recording(hooked, inputs, default):  # type: ignore[no-untyped-def]
        seen.append((hooked, inputs))
        return default(inputs)

    with hook_write_inputs(recording, [layer]):
        hooked = _write(layer, h)
    assert len(seen) == 1 and seen[0][0] is layer and torch.equal(seen[0][1], h)
    assert torch.equal(hooked, plain)
    assert "write_inputs_hook" not in vars(layer) and layer.write_inputs_hook is None
    _write(layer, h)
    assert len(seen) == 1  # the block has ended


@pytest.mark.parametrize("granularity", ["token", "segment"])
def test_a_hook_changes_what_is_written(granularity: str) -> None:
    layer = _layer(granularity)
    h = torch.randn(1, 5, HIDDEN)
    pool = torch.full((1, 1, 5), 1 / 5) if granularity == "segment" else None

    def write(target: DeltaMemLayer) -> torch.Tensor:
        state = torch.zeros(1, 1, 4, 4)
        return target(h, state, write=True, segment_pool=pool)[1]

    def no_values(hooked, inputs, default):  # type: ignore[no-untyped-def]
        k, v, beta = default(inputs)
        return k, torch.zeros_like(v), beta

    plain = write(layer)
    assert plain.abs().sum() > 0
    with hook_write_inputs(no_values, [layer]):
        assert not write(layer).any()  # v = 0 writes nothing into a zero state
    assert torch.equal(write(layer), plain)


def test_without_layers_every_layer_is_hooked_those_built_inside_too() -> None:
    before = _layer(seed=1)
    h = torch.randn(1, 3, HIDDEN)
    calls: list[DeltaMemLayer] = []

    def counting(hooked, inputs, default):  # type: ignore[no-untyped-def]
        calls.append(hooked)
        return default(inputs)

    with hook_write_inputs(counting):
        inside = _layer(seed=2)
        _write(before, h)
        _write(inside, h)
    assert calls == [before, inside]
    _write(inside, h)
    assert len(calls) == 2 and DeltaMemLayer.write_inputs_hook is None


def test_blocks_nest_and_restore_the_hook_they_found() -> None:
    layer = _layer()
    h = torch.randn(1, 3, HIDDEN)
    calls: list[str] = []

    def named(name: str):  # type: ignore[no-untyped-def]
        def hook(hooked, inputs, default):  # type: ignore[no-untyped-def]
            calls.append(name)
            return default(inputs)

        return hook

    with hook_write_inputs(named("outer"), [layer]):
        with hook_write_inputs(named("inner"), [layer]):
            _write(layer, h)
        _write(layer, h)
    with hook_write_inputs(named("class")), hook_write_inputs(named("own"), [layer]):
        _write(layer, h)
        _write(_layer(seed=3), h)
    assert calls == ["inner", "outer", "own", "class"]
    assert "write_inputs_hook" not in vars(layer) and DeltaMemLayer.write_inputs_hook is None
