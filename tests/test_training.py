"""The episode trainer on the real embedded SmolLM2 (short runs) and its pure parts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_deltamem.adapter_files import read_adapter
from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.cli import main as cli_main
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.memory import DeltaMemory, message_to_dict
from langchain_deltamem.reading import answer_ids, question_ids
from langchain_deltamem.state import MemoryState
from langchain_deltamem.training.episodes import (
    between_episode_share,
    episode_loss,
    preservation_kl,
)
from langchain_deltamem.training.run import (
    add_arguments,
    config_from_args,
    parse_curriculum,
    parse_layers,
)
from langchain_deltamem.training.trainer import TrainConfig, Trainer, candidates_at, cosine_lr
from langchain_deltamem.writing import write_history, write_messages

# --- pure parts ------------------------------------------------------------------------------


def test_curriculum_and_schedule() -> None:
    config = TrainConfig(steps=100, warmup_steps=10, curriculum=parse_curriculum("0:2,50:16,80:"))
    assert [candidates_at(config, s) for s in (0, 49, 50, 79, 80, 99)] == [2, 2, 16, 16, None, None]
    assert cosine_lr(0, config) < cosine_lr(9, config) < 1.0
    assert cosine_lr(10, config) == pytest.approx(1.0)
    assert cosine_lr(99, config) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(Exception, match="STEP:CANDIDATES"):
        parse_curriculum("0:2,x")


def test_target_layers_from_the_command_line() -> None:
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--out", "x", "--target-layers", "0-2,7"])
    assert config_from_args(args).adapter.target_layers == (0, 1, 2, 7)
    assert config_from_args(parser.parse_args(["--out", "x"])).adapter.target_layers is None
    for bad, message in (("0-x", "FIRST-LAST"), ("5-3", "empty range"), ("-1", "FIRST-LAST")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_layers(bad)


# --- on the embedded model -------------------------------------------------------------------


def test_between_episode_share_measures_how_much_states_differ() -> None:
    config = DeltaMemConfig(rank=2)

    def states(*matrices: torch.Tensor) -> list[MemoryState]:
        return [MemoryState([m.reshape(1, 1, 2, 2)], (0,), config, "test") for m in matrices]

    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert float(between_episode_share(states(a, a, a))[0]) == pytest.approx(0.0)
    # opposite states: the mean is zero, all of the norm is between-episode variance
    assert float(between_episode_share(states(a, -a))[0]) == pytest.approx(1.0)
    # a shared part c plus ±d: share = |d|² / (|c|² + |d|²)
    c, d = torch.ones(2, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert float(between_episode_share(states(c + d, c - d))[0]) == pytest.approx(1 / 5)
    varying = (c + d).requires_grad_()
    (1 - between_episode_share(states(varying, c - d))[0]).backward()
    assert varying.grad is not None and float(varying.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="at least 2 states"):
        between_episode_share(states(a))


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return "Sunny, 21 C"


@pytest.mark.slow
def test_the_trainer_writes_exactly_what_the_chat_model_writes() -> None:
    """A conversation lived through ChatDeltaMem (2 turns, a tool result) and the trainer's
    write pass over the same history give bit-identical states."""
    engine = get_engine()
    memory = DeltaMemory(engine)
    model = ChatDeltaMem(max_tokens=4, memory=memory, scope="lived")
    history: list = [HumanMessage("My locker code is 4471.")]
    history.append(model.invoke(history))
    history.append(HumanMessage("What is the weather in Oslo?"))
    call = model.bind_tools([weather], tool_choice="weather").invoke(history)
    assert call.tool_calls
    history += [call, ToolMessage("Sunny, 21 C", tool_call_id=call.tool_calls[0]["id"])]
    history[-1].name = "weather"
    history.append(model.invoke(history))
    lived = memory.state(scope="lived")

    messages = [message_to_dict(m) for m in history]
    # the same procedure: bit for bit without autograd ...
    replayed = write_history(engine.handle, engine.tokenizer, messages)
    for a, b in zip(replayed.layers, lived.layers, strict=True):
        assert torch.equal(a, b)
    # ... and with the autograd graph kept, up to float rounding (autograd picks other kernels)
    trained = write_history(engine.handle, engine.tokenizer, messages, grad=True)
    for a, b in zip(trained.layers, lived.layers, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)
    # a different grouping (one write call) is measurably another state: the check has teeth
    lumped = engine.handle.new_state()
    write_messages(engine.handle, engine.tokenizer, lumped, messages)
    pairs = zip(lumped.layers, lived.layers, strict=True)
    assert max(float((a - b).abs().max()) for a, b in pairs) > 1e-4


@pytest.mark.slow
def test_the_loss_is_on_the_answer_only_and_reaches_the_write_parameters() -> None:
    engine = get_engine(adapter="fresh-tsw")
    handle, tokenizer = engine.handle, engine.tokenizer
    prompt = question_ids(tokenizer, "What is my locker code?")
    target = answer_ids(tokenizer, "4471")
    assert target[-1].item() == tokenizer.eos_token_id
    assert prompt.shape[1] > 10
    messages = [
        {"role": "user", "content": "My locker code is 4471.", "source": "user"},
        {"role": "assistant", "content": "Noted.", "source": "assistant"},
    ]
    for p in handle.parameters():
        p.grad = None
    result = episode_loss(
        handle, tokenizer, messages, "What is my locker code?", "4471", sparsity=0.5
    )
    result.loss.backward()
    assert torch.isfinite(result.loss)
    assert 0 < float(result.gate_mean) < 1
    assert float(result.loss) == pytest.approx(
        float(result.answer_nll) + 0.5 * float(result.gate_mean), rel=1e-5
    )
    layer = handle.layers[handle.layer_ids[0]]
    for name in ("memory_k_proj", "memory_v_proj", "beta_proj", "memory_q_proj"):
        grad = getattr(layer, name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name  # through the state
    for p in handle.parameters():
        p.grad = None
    assert not any(
        p.requires_grad for p in handle.model.parameters() if p not in set(handle.parameters())
    )


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_where_a_straight_run_ends(tmp_path: Path) -> None:
    config = TrainConfig(
        adapter=DeltaMemConfig(rank=4),
        steps=4,
        batch_size=2,
        warmup_steps=1,
        checkpoint_every=1,
        num_facts=(1,),
        kinds=("facts",),
        curriculum=((0, 4), (2, None)),
        sparsity=0.01,
    )
    straight = Trainer(config, tmp_path / "straight")
    straight.run(progress=False)
    straight_adapter = read_adapter(tmp_path / "straight" / "adapter")[1]
    straight.handle.detach()

    first = Trainer(config, tmp_path / "resumed")
    first.run(max_steps=2, progress=False)
    assert first.step == 2 and not (tmp_path / "resumed" / "adapter").exists()
    first.handle.detach()
    second = Trainer(config, tmp_path / "resumed")
    second.run(progress=False)
    second.handle.detach()
    resumed_adapter = read_adapter(tmp_path / "resumed" / "adapter")[1]
    assert straight_adapter.keys() == resumed_adapter.keys()
    for key, tensor in straight_adapter.items():
        assert torch.equal(tensor, resumed_adapter[key]), key

    rows = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 and r["loss"] == r["loss"] for r in rows)
    assert (tmp_path / "resumed" / "loss.png").stat().st_size > 1000
    # another configuration in the same directory is refused, not silently mixed
    with pytest.raises(ValueError, match="another configuration"):
        other = Trainer(config.model_copy(update={"lr": 1e-4}), tmp_path / "resumed")
        try:
            other.run(progress=False)
        finally:
            other.handle.detach()


@pytest.mark.slow
def test_deltamem_train_cli_runs_a_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cli_main(
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "2",
            "--max-steps",
            "1",
            "--batch-size",
            "1",
            "--rank",
            "4",
            "--num-facts",
            "1",
            "--no-progress",
        ]
    )
    assert "stopped at step 1/2" in capsys.readouterr().out
    assert (out / "checkpoint" / "trainer.pt").exists()
    assert json.loads((out / "train_config.json").read_text())["adapter"]["rank"] == 4


@pytest.mark.slow
def test_truncated_writes_change_the_backward_not_the_loss() -> None:
    """The default truncated write pass gives the same loss; its gradients still reach the
    write parameters, and the write forwards leave no graph through the backbone."""
    engine = get_engine(adapter="fresh-tsw")
    handle, tokenizer = engine.handle, engine.tokenizer
    messages = [
        {"role": "user", "content": "My locker code is 4471.", "source": "user"},
        {"role": "assistant", "content": "Noted.", "source": "assistant"},
    ]
    grads = {}
    losses = {}
    for truncated in (True, False):
        for p in handle.parameters():
            p.grad = None
        result = episode_loss(
            handle, tokenizer, messages, "My locker code?", "4471", truncated_writes=truncated
        )
        result.loss.backward()
        losses[truncated] = float(result.loss)
        layer = handle.layers[handle.layer_ids[3]]
        grads[truncated] = layer.memory_v_proj.grad.clone()
    for p in handle.parameters():
        p.grad = None
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert float(grads[True].abs().sum()) > 0
    assert not torch.equal(grads[True], grads[False])  # the full pass adds backbone paths

    def backbone_records_graph(detach: bool) -> bool:
        """Whether any decoder layer's output joined the autograd graph in the write pass."""
        flags: list[bool] = []
        hooks = [
            layer.register_forward_hook(lambda m, a, out: flags.append(_tensor(out).requires_grad))
            for layer in handle.model.model.layers
        ]
        try:
            write_history(handle, tokenizer, messages, grad=True, detach_inputs=detach)
        finally:
            for hook in hooks:
                hook.remove()
        assert flags
        return any(flags)

    assert not backbone_records_graph(True)
    assert backbone_records_graph(False)


def _tensor(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def test_write_only_training_leaves_the_read_path_untouched(tmp_path: Path) -> None:
    config = TrainConfig(
        adapter=DeltaMemConfig(rank=4),
        steps=1,
        batch_size=1,
        warmup_steps=1,
        lr=1e-2,
        num_facts=(1,),
        kinds=("facts",),
        distractors=(0, 0),
        train="write",
    )
    trainer = Trainer(config, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.handle.adapter_state_dict().items()}
    try:
        trainer.run(progress=False)
        after = trainer.handle.adapter_state_dict()
    finally:
        trainer.handle.detach()
    changed = {k.rsplit(".", 1)[-1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias"}


@pytest.mark.slow
def test_the_preservation_kl_is_zero_for_an_empty_memory_and_reaches_the_read_path() -> None:
    engine = get_engine(adapter="fresh-msw")  # base_slice heads: non-zero corrections exist
    handle, tokenizer = engine.handle, engine.tokenizer
    chat, other = (e.history() for e in generate_episodes(2, seed=5, distractors=(1, 1)))
    empty, tokens = preservation_kl(handle, tokenizer, chat, handle.new_state())
    assert float(empty) == 0.0 and tokens > 20  # identical logits: exactly no divergence
    memory = write_history(handle, tokenizer, other)
    kl, _ = preservation_kl(handle, tokenizer, chat, memory)
    assert float(kl) > 0
    head = handle.layers[handle.layer_ids[0]].delta_o_proj
    head.grad = None
    kl.backward()
    assert head.grad is not None and float(head.grad.abs().sum()) > 0
    head.grad = None


def test_preserve_and_contrast_are_logged_and_older_run_configs_still_resume(
    tmp_path: Path,
) -> None:
    config = TrainConfig(
        adapter=DeltaMemConfig(rank=4),
        steps=1,
        batch_size=2,
        warmup_steps=1,
        num_facts=(1,),
        kinds=("facts",),
        value_types=("colour",),
        distractors=(0, 0),
        preserve=1.0,
        contrast=1.0,
        spread=1.0,
    )
    out = tmp_path / "run"
    trainer = Trainer(config, out)
    try:
        trainer.run(progress=False)
    finally:
        trainer.handle.detach()
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["preserve_kl"] is not None and row["preserve_kl"] >= 0
    assert row["swapped_minus_right"] is not None
    assert 0 <= row["between_episode_share"] <= 1
    # an untrained adapter's state barely matters, so nearly the whole margin is paid
    assert row["loss"] == pytest.approx(row["answer_nll"] + 1.0, abs=0.05)
    # a run started before `margin` existed did not store it: its default fills in
    stored = json.loads((out / "train_config.json").read_text())
    del stored["margin"]
    (out / "train_config.json").write_text(json.dumps(stored))
    again = Trainer(config, out)
    try:
        again.run(progress=False)  # resumes (nothing left to do) instead of refusing
        assert again.step == 1
        # but a missing field whose default differs from this run's value is another config
        del stored["preserve"]
        (out / "train_config.json").write_text(json.dumps(stored))
        with pytest.raises(ValueError, match="another configuration"):
            again.run(progress=False)
    finally:
        again.handle.detach()
