"""The batched training path against the per-episode reference, the teacher objectives, the
write-path options (centring, content-only segments, data-aware start) and the self-probing,
extendable run, on the real embedded SmolLM2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from langchain_deltamem.adapter_files import load_adapter, save_adapter
from langchain_deltamem.backbones import load_backbone
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.engine import get_engine
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.injection import attach
from langchain_deltamem.reading import answer_nll
from langchain_deltamem.segments import NO_SEGMENT, encode_segments
from langchain_deltamem.training import batched
from langchain_deltamem.training import trainer as trainer_module
from langchain_deltamem.training.batched import value_start_token, value_token_span
from langchain_deltamem.training.init import (
    estimate_means,
    init_content_directions,
    segment_inputs,
)
from langchain_deltamem.training.objectives import ObjectiveWeights, batch_loss
from langchain_deltamem.training.trainer import (
    AUTOENCODE_QUESTION,
    EpisodeSource,
    TrainConfig,
    Trainer,
    autoencoding,
    make_optimizer,
)
from langchain_deltamem.writing import MEMORY_SYSTEM_PROMPT, SourceRouter, write_history

pytestmark = pytest.mark.slow


def _episodes(n: int = 5, **overrides):
    options = {
        "split": "train",
        "seed": 3,
        "num_facts": (1, 2),
        "kinds": ("facts", "agent"),
        "distractors": (0, 1),
    }
    return generate_episodes(n, **{**options, **overrides})


@pytest.mark.parametrize("adapter", ["fresh", "fresh-tsw", "fresh-msw"])
def test_batched_writes_and_reads_equal_the_per_episode_reference(adapter: str) -> None:
    """Histories of different lengths and numbers of write calls (tool results included)
    give the same states and answer NLLs as one episode at a time."""
    engine = get_engine(adapter=adapter)
    handle, tokenizer = engine.handle, engine.tokenizer
    router = SourceRouter(handle.config.num_states, {"weather": 1} if "msw" in adapter else {})
    episodes = _episodes()
    calls = {len([m for m in e.messages if m.role == "assistant"]) for e in episodes}
    assert len(calls) > 1  # rows take part in different numbers of write calls
    with torch.no_grad():
        state = batched.write_histories(
            handle, tokenizer, [e.history() for e in episodes], router=router
        )
        reads = batched.question_batch(
            tokenizer, [e.question for e in episodes], [e.answer for e in episodes]
        )
        nlls = batched.answer_nlls(handle, reads, state)
        for i, episode in enumerate(episodes):
            alone = write_history(handle, tokenizer, episode.history(), router=router)
            for a, b in zip(alone.layers, state.select(i).layers, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert torch.equal(alone.write_counts, state.write_counts[i : i + 1])
            nll, _ = answer_nll(handle, tokenizer, alone, episode.question, episode.answer)
            assert float(nlls[i]) == pytest.approx(float(nll), abs=1e-4)
        if adapter != "fresh-tsw":
            return  # bf16 is emulated (slow) on many CPUs: its check runs once, on token writes
        # bf16 autocast: the same numbers up to bf16 rounding, the state still fp32
        few = episodes[:2]
        rough = batched.write_histories(
            handle, tokenizer, [e.history() for e in few], router=router, bf16=True
        )
        assert all(t.dtype == torch.float32 for t in rough.layers)
        rough_reads = batched.question_batch(
            tokenizer, [e.question for e in few], [e.answer for e in few]
        )
        rough_nlls = batched.answer_nlls(handle, rough_reads, rough, bf16=True)
        assert float((rough_nlls - nlls[:2]).abs().max()) < 0.2


@pytest.mark.parametrize(
    "options",
    [{}, {"write_granularity": "token"}, {"segment_tokens": "content", "num_states": 2}],
    ids=["ssw", "tsw", "content-only-msw"],
)
def test_the_first_calls_shared_system_prompt_runs_once(options: dict) -> None:
    """The first write call reads an empty state, so its system prompt (and, with
    content-only segments, the unwritten role marker after it) runs once as the bare backbone
    and is shared by every row: the states equal those of running it in every row."""
    model, tokenizer = load_backbone(None)
    handle = attach(model, DeltaMemConfig(rank=4, **options), seed=0)
    histories = [e.history() for e in _episodes(4)]
    prefixes: list[int | None] = []
    original = batched._system_prefix

    def counting(*args, **kwargs):
        cache = original(*args, **kwargs)
        prefixes.append(None if cache is None else cache.get_seq_length())
        return cache

    try:
        with torch.no_grad():
            batched._system_prefix = counting
            shared = batched.write_histories(handle, tokenizer, histories)
            batched._system_prefix = lambda *args, **kwargs: None
            per_row = batched.write_histories(handle, tokenizer, histories)
    finally:
        batched._system_prefix = original
        handle.detach()
    system = encode_segments(tokenizer, [{"role": "system", "content": MEMORY_SYSTEM_PROMPT}])
    assert len(prefixes) == 1  # the first call only: later calls read what earlier ones wrote
    if options.get("segment_tokens") == "content":
        assert prefixes[0] > system.input_ids.shape[1]  # + the unwritten "<|im_start|>user"
    else:
        assert prefixes[0] == system.input_ids.shape[1]
    for a, b in zip(shared.layers, per_row.layers, strict=True):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(shared.write_counts, per_row.write_counts)


def test_an_adapter_on_lower_layers_stops_the_write_pass_after_them() -> None:
    """With ``target_layers`` the write pass runs only up to the last adapted layer; the
    states equal the full-depth per-episode writes, and the decoder gets its layers back."""
    model, tokenizer = load_backbone(None)
    handle = attach(model, DeltaMemConfig(rank=4, target_layers=(0, 2)), seed=0)
    decoder = batched._decoder(handle)
    depth = len(decoder.layers)
    ran_above: list[int] = []
    hook = decoder.layers[3].register_forward_hook(lambda *_: ran_above.append(1))
    episodes = _episodes(3)
    try:
        with torch.no_grad():
            state = batched.write_histories(handle, tokenizer, [e.history() for e in episodes])
            assert ran_above == [] and len(decoder.layers) == depth
            for i, episode in enumerate(episodes):
                alone = write_history(handle, tokenizer, episode.history())
                for a, b in zip(alone.layers, state.select(i).layers, strict=True):
                    assert float(a.abs().max()) > 0
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert ran_above  # the per-episode reference runs every layer
    finally:
        hook.remove()
        handle.detach()


def test_teacher_objectives_add_their_terms_and_reach_the_write_path() -> None:
    engine = get_engine()
    handle, tokenizer = engine.handle, engine.tokenizer
    episodes = _episodes(4, num_facts=(1,), kinds=("facts",), value_types=("colour",))
    weights = ObjectiveWeights(distill=0.5, contrast_target=0.25)
    for p in handle.parameters():
        p.grad = None
    result = batch_loss(handle, tokenizer, episodes, weights)
    assert result.distill_kl is not None and result.distill_kl > 0
    assert result.contrast_target_error is not None and result.contrast_target_error > 0
    expected = result.answer_nll + 0.5 * result.distill_kl + 0.25 * result.contrast_target_error
    assert float(result.loss.detach()) == pytest.approx(expected, rel=1e-4)
    result.loss.backward()
    layer = handle.layers[handle.layer_ids[0]]
    for name in ("memory_k_proj", "memory_v_proj", "beta_proj", "memory_q_proj"):
        grad = getattr(layer, name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    for p in handle.parameters():
        p.grad = None
    # without teacher terms nothing of the teacher is computed
    plain = batch_loss(handle, tokenizer, episodes, ObjectiveWeights())
    assert plain.distill_kl is None and plain.contrast_target_error is None
    assert float(plain.loss.detach()) == pytest.approx(plain.answer_nll, rel=1e-6)


def test_content_only_segments_leave_the_template_tokens_out() -> None:
    engine = get_engine()
    tokenizer = engine.tokenizer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My favourite colour is cool lime."},
        {"role": "assistant", "content": "Okay, good to know."},
    ]
    whole = encode_segments(tokenizer, messages)
    content = encode_segments(tokenizer, messages, content_only=True)
    assert torch.equal(whole.input_ids, content.input_ids)  # same prompt, other segments
    for segment, text in ((0, messages[1]["content"]), (1, messages[2]["content"])):
        ids = content.input_ids[0][content.segment_ids[0] == segment]
        assert tokenizer.decode(ids).strip() == text
        assert int((whole.segment_ids[0] == segment).sum()) > len(ids)
    markers = content.input_ids[0][
        (content.segment_ids[0] == NO_SEGMENT) & (whole.segment_ids[0] >= 0)
    ]
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in markers.tolist()


def test_centred_adapters_keep_their_means_in_the_adapter_file(tmp_path: Path) -> None:
    model, tokenizer = load_backbone(None)
    config = DeltaMemConfig(rank=4, centred_inputs=("v", "k"), segment_tokens="content")
    assert config.centred_inputs == ("k", "v")
    handle = attach(model, config, seed=0)
    try:
        episodes = _episodes(12, num_facts=(1,), kinds=("facts",), distractors=(0, 0))
        inputs, contents = segment_inputs(handle, tokenizer, episodes)
        estimate_means(handle, inputs)
        layer = handle.layers[handle.layer_ids[3]]
        assert float(layer.input_mean.norm()) > 0
        explained = init_content_directions(handle, tokenizer, episodes, inputs, contents)
        assert len(explained) == len(handle.layer_ids)
        # the value of a message is a code of its centred input: the mean message writes 0
        mean = layer.input_mean[None, None]
        _, v, _ = layer.write_inputs(mean)
        assert float(v.abs().max()) < 1e-5
        save_adapter(handle, tmp_path / "adapter")
        with pytest.raises(ValueError, match="reference format"):
            save_adapter(handle, tmp_path / "reference", format="reference")
        saved = {k: v.clone() for k, v in handle.adapter_state_dict().items()}
    finally:
        handle.detach()
    again = load_adapter(model, tmp_path / "adapter")
    try:
        assert again.config == config
        for name, tensor in again.adapter_state_dict().items():
            assert torch.equal(tensor, saved[name]), name
        assert not again.layers[again.layer_ids[0]].input_mean.requires_grad
    finally:
        again.detach()
    with pytest.raises(ValueError, match="centred_inputs"):
        DeltaMemConfig(centred_inputs=("q",))


def test_runs_probe_themselves_and_can_be_extended(tmp_path: Path) -> None:
    config = TrainConfig(
        adapter=DeltaMemConfig(rank=4, centred_inputs=("k", "v")),
        init="data",
        init_episodes=16,
        steps=2,
        batch_size=4,
        warmup_steps=1,
        schedule="constant",
        num_facts=(1,),
        kinds=("facts",),
        value_types=("colour", "food"),
        distractors=(0, 0),
        autoencode=0.25,
        answer_form="You told me it's {answer}.",
        gate_lr=1e-2,
        probe_every=2,
        probe_n=8,
    )
    out = tmp_path / "run"
    trainer = Trainer(config, out)
    try:
        assert len(make_optimizer(trainer.handle, config).param_groups) == 2
        trainer.run(progress=False)
    finally:
        trainer.handle.detach()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    probes = [r["probe"] for r in rows if "probe" in r]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert len(probes) == 1 and probes[0]["n"] == 8
    gap = probes[0]["swapped_minus_right"]
    assert gap["low"] <= gap["estimate"] <= gap["high"]
    # the trained phrasing is probed too: more tokens per answer, so another mean NLL
    phrased = probes[0]["in_answer_form"]
    assert phrased["n"] == 8 and phrased["nll_right"] != probes[0]["nll_right"]
    # and the value's first token alone, in both phrasings (after the lead-in it is another
    # prediction than at the start of the reply)
    assert probes[0]["value_start"]["n"] == phrased["value_start"]["n"] == 8
    assert phrased["value_start"]["nll_right"] != probes[0]["value_start"]["nll_right"]
    assert (out / "adapter").is_dir() and (out / "loss.png").exists()
    # a finished run takes more steps under the same directory, on a machine whose CPU may
    # want another precision (each row says which one its step used) ...
    longer = Trainer(config.model_copy(update={"steps": 3, "bf16": True}), out)
    try:
        longer.run(progress=False)
        assert longer.step == 3
    finally:
        longer.handle.detach()
    assert json.loads((out / "train_config.json").read_text())["steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["bf16"] for r in rows if "loss" in r] == [False, False, True]
    # ... but not another recipe
    other = Trainer(config.model_copy(update={"steps": 4, "lr": 1.0}), out)
    try:
        with pytest.raises(ValueError, match="lr differ"):
            other.run(progress=False)
    finally:
        other.handle.detach()


def test_the_attention_kernel_changes_speed_not_the_step(tmp_path: Path) -> None:
    """Training's eager attention (faster on the CPU here) and the fused kernel give the same
    first step: same loss and gradients, within float tolerance."""
    config = TrainConfig(
        adapter=DeltaMemConfig(rank=4),
        steps=1,
        batch_size=3,
        warmup_steps=0,
        num_facts=(1,),
        kinds=("facts",),
        distractors=(0, 1),
    )
    results = []
    for kernel in ("eager", "sdpa"):
        trainer = Trainer(config.model_copy(update={"attention": kernel}), tmp_path / kernel)
        try:
            assert trainer.handle.model.config._attn_implementation == kernel
            record = trainer.train_step()
            grads = torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None])
        finally:
            trainer.handle.detach()
        results.append((record["loss"], grads))
    (eager_loss, eager_grads), (sdpa_loss, sdpa_grads) = results
    assert eager_loss == pytest.approx(sdpa_loss, abs=1e-4)
    assert eager_grads.norm() > 0
    assert (eager_grads - sdpa_grads).norm() <= 1e-4 * eager_grads.norm()


def test_bf16_on_a_cpu_that_only_emulates_it_is_flagged(tmp_path: Path, monkeypatch) -> None:
    """bf16 autocast is slower than fp32 where the CPU has no bf16 instructions: say so."""
    config = TrainConfig(adapter=DeltaMemConfig(rank=4), steps=1, batch_size=2, bf16=True)
    for native in (False, True):
        monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda native=native: native)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Trainer(config, tmp_path / str(native)).handle.detach()
        flagged = [w for w in caught if "without bf16 instructions" in str(w.message)]
        assert len(flagged) == (0 if native else 1)


def test_autoencoding_asks_for_the_stored_message_back() -> None:
    episode = _episodes(1, num_facts=(1,), kinds=("facts",), distractors=(0, 0))[0]
    copy = autoencoding(episode)
    assert copy.question == AUTOENCODE_QUESTION
    assert copy.answer == next(m.content for m in episode.messages if m.role == "user")
    assert copy.messages == episode.messages


def test_the_answer_form_phrases_every_trained_answer_but_the_autoencoding_ones() -> None:
    form = "You told me it's {answer}."
    common = dict(batch_size=8, num_facts=(1,), kinds=("facts",), distractors=(0, 0))
    bare = EpisodeSource(TrainConfig(**common)).batch(3)
    phrased = EpisodeSource(TrainConfig(**common, answer_form=form, autoencode=0.5)).batch(3)
    copies = [e for e in phrased if e.question == AUTOENCODE_QUESTION]
    assert len(copies) == 4
    for plain, episode in zip(bare, phrased, strict=True):
        if episode.question != AUTOENCODE_QUESTION:
            assert episode.answer == form.format(answer=plain.answer)
            assert episode.meta == plain.meta  # the bare value stays what is checked
    for bad, says in (("It's {value}.", "exactly once"), ("{answer", "not a valid template")):
        with pytest.raises(ValueError, match=says):
            TrainConfig(answer_form=bad)


def test_attention_transfer_targets_are_what_attention_took_from_the_history() -> None:
    from langchain_deltamem.training import transfer

    engine = get_engine()
    handle, tokenizer, model = engine.handle, engine.tokenizer, engine.handle.model
    episodes = _episodes(3, num_facts=(1,), kinds=("facts",))
    histories = [e.history() for e in episodes]
    questions, answers = [e.question for e in episodes], [e.answer for e in episodes]
    full = batched.history_batch(tokenizer, histories, questions, answers)
    spans = batched.history_spans(tokenizer, histories)
    history = transfer.history_mask(spans, full.input_ids.shape[1])
    rows, cols = full.positions[:, 0], full.positions[:, 1]
    # the real attention outputs (o_proj outputs) at the scored positions, by a hook
    layer_id = handle.layer_ids[5]
    attention = model.get_submodule(handle.paths[layer_id])
    seen = []
    hook = attention.o_proj.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        logits, targets = transfer.teacher_targets(handle, full, history)
    finally:
        hook.remove()
    assert len(targets) == len(handle.layer_ids) and logits.shape[0] == len(rows)
    h, _ = targets[layer_id].inputs, targets[layer_id].target
    assert h.shape == (len(rows), model.config.hidden_size)
    # the history is not empty and the prompt-only attention differs from the full one
    assert all(end > start for start, end in spans)
    assert float(targets[layer_id].target.norm()) > 0
    # without a history span the target vanishes (full = prompt-only attention)
    _, none = transfer.teacher_targets(handle, full, torch.zeros_like(history))
    assert float(none[layer_id].target.abs().max()) < 1e-4
    # the hand-computed full attention is the model's own: check it through o_proj
    rope_seen = {}
    hook = attention.register_forward_pre_hook(
        lambda m, a, k: rope_seen.update(h=k["hidden_states"], rope=k["position_embeddings"]),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            model.get_decoder()(full.input_ids, attention_mask=full.attention_mask)
    finally:
        hook.remove()
    mask = full.attention_mask.bool()
    manual, _ = transfer._history_split_attention(
        attention, rope_seen["h"].float(), rope_seen["rope"], full, mask, history
    )
    real = seen[0][rows, cols]
    torch.testing.assert_close(
        torch.nn.functional.linear(manual, attention.o_proj.weight), real, rtol=1e-3, atol=1e-3
    )
    # the loss reaches the write path through the state (no backward through the backbone)
    for p in handle.parameters():
        p.grad = None
    state = batched.write_histories(handle, tokenizer, histories, grad=True, detach_inputs=True)
    loss = transfer.transfer_loss(handle, state, targets, full.row_of)
    loss.backward()
    layer = handle.layers[layer_id]
    assert float(loss.detach()) > 0
    for name in ("memory_v_proj", "memory_q_proj", "delta_o_proj"):
        assert float(getattr(layer, name).grad.abs().sum()) > 0, name
    for p in handle.parameters():
        p.grad = None


def test_batched_greedy_replies_equal_the_chat_models_decode_loop() -> None:
    from langchain_deltamem.evaluation.recall import RecallEvaluator
    from langchain_deltamem.reading import question_ids

    engine = get_engine()
    evaluator = RecallEvaluator(engine, max_new_tokens=8)
    episodes = _episodes(3, num_facts=(1,), kinds=("facts",), distractors=(0, 1))
    with torch.no_grad():
        state = batched.write_histories(
            engine.handle, engine.tokenizer, [e.history() for e in episodes]
        )
    prompts = [question_ids(engine.tokenizer, e.question)[0] for e in episodes]
    assert len({p.numel() for p in prompts}) > 1  # left padding is exercised
    replies = batched.greedy_replies(
        engine.handle, engine.tokenizer, prompts, state, max_new_tokens=8
    )
    bare = batched.greedy_replies(engine.handle, engine.tokenizer, prompts, None, max_new_tokens=8)
    for i, episode in enumerate(episodes):
        assert replies[i] == evaluator.answer(episode.question, state.select(i)).strip()
        assert bare[i] == evaluator.answer(episode.question, None).strip()


def test_value_start_token_is_the_stored_values_first_token_in_any_answer_form() -> None:
    tokenizer = get_engine().tokenizer
    episodes = _episodes(4, num_facts=(1,), kinds=("facts",))
    for form in ("{answer}", "You told me it's {answer}.", '"{answer}", of course'):
        for episode in episodes:
            phrased = trainer_module.in_answer_form(episode, form)
            index = value_start_token(tokenizer, phrased)
            ids = tokenizer(phrased.answer, add_special_tokens=False).input_ids
            assert index is not None
            assert tokenizer.decode(ids[index:]).lstrip().startswith(episode.meta["value"])
            assert not tokenizer.decode(ids[index + 1 :]).lstrip().startswith(episode.meta["value"])
            first, end = value_token_span(tokenizer, phrased)
            assert first == index
            assert tokenizer.decode(ids[first:end]).strip() == episode.meta["value"]

    class WithoutOffsets:  # a slow tokenizer: the lead-in's token count instead of offsets
        is_fast = False

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

    for form in ("{answer}", "You told me it's {answer}.", '"{answer}", of course'):
        for episode in episodes:
            phrased = trainer_module.in_answer_form(episode, form)
            assert value_token_span(WithoutOffsets(), phrased) == value_token_span(
                tokenizer, phrased
            )
    assert value_start_token(tokenizer, autoencoding(episodes[0])) is None
    assert value_start_token(tokenizer, episodes[0].model_copy(update={"meta": {}})) is None
    assert value_token_span(tokenizer, autoencoding(episodes[0])) is None


def test_the_value_weights_scale_those_tokens_share_of_every_answer_mean() -> None:
    engine = get_engine(adapter="fresh-tsw")
    handle, tokenizer = engine.handle, engine.tokenizer
    form = "You told me it's {answer}."
    episodes = [
        trainer_module.in_answer_form(e, form)
        for e in _episodes(3, num_facts=(1,), kinds=("facts",))
    ]
    plain = batch_loss(handle, tokenizer, episodes, ObjectiveWeights())
    weighted = batch_loss(handle, tokenizer, episodes, ObjectiveWeights(value_start=5.0))
    both = batch_loss(
        handle, tokenizer, episodes, ObjectiveWeights(value_start=5.0, value_rest=3.0)
    )
    with torch.no_grad():
        state = batched.write_histories(handle, tokenizer, [e.history() for e in episodes])
        reads = batched.question_batch(
            tokenizer, [e.question for e in episodes], [e.answer for e in episodes]
        )
        logits = batched.scored_logits(handle, reads, state)
        token_nll = torch.nn.functional.cross_entropy(logits, reads.targets, reduction="none")
    expected, expected_both = [], []
    for row, episode in enumerate(episodes):
        nll = token_nll[reads.row_of == row]
        first, end = value_token_span(tokenizer, episode)
        assert end - first > 1  # every value here has later tokens to weigh
        expected.append((nll.sum() + 4.0 * nll[first]) / (nll.numel() + 4.0))
        rest = nll[first + 1 : end]
        expected_both.append(
            (nll.sum() + 4.0 * nll[first] + 2.0 * rest.sum())
            / (nll.numel() + 4.0 + 2.0 * len(rest))
        )
    assert float(weighted.loss.detach()) == pytest.approx(
        float(torch.stack(expected).mean()), abs=1e-5
    )
    assert float(both.loss.detach()) == pytest.approx(
        float(torch.stack(expected_both).mean()), abs=1e-5
    )
    assert float(plain.loss.detach()) == pytest.approx(
        float(
            token_nll.new_tensor(
                [float(token_nll[reads.row_of == r].mean()) for r in range(3)]
            ).mean()
        ),
        abs=1e-5,
    )
    assert weighted.answer_nll == pytest.approx(plain.answer_nll, abs=1e-6)  # logged unweighted
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig(value_start_weight=0)
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig(value_rest_weight=-1)


def test_the_probe_scores_the_values_first_token_and_its_later_tokens_on_their_own() -> None:
    from langchain_deltamem.training.probe import content_probe, probe_episodes

    engine = get_engine(adapter="fresh-tsw")
    handle, tokenizer = engine.handle, engine.tokenizer
    episodes = probe_episodes(4, ("colour", "food"))
    result = content_probe(handle, tokenizer, episodes, batch_size=3)
    with torch.no_grad():
        state = batched.write_histories(handle, tokenizer, [e.history() for e in episodes])
        reads = batched.question_batch(
            tokenizer, [e.question for e in episodes], [e.answer for e in episodes]
        )
        nll = batched.token_nlls(handle, reads, state)
    first = [int((reads.row_of == row).nonzero()[0]) for row in range(4)]  # bare: token 0
    assert result["value_start"]["n"] == 4
    assert result["value_start"]["nll_right"] == pytest.approx(float(nll[first].mean()), abs=1e-4)
    rests = []
    for row, episode in enumerate(episodes):  # bare answers: the value, then end of turn
        begin, end = value_token_span(tokenizer, episode)
        if end - begin > 1:
            rests.append(float(nll[first[row] + 1 : first[row] + end - begin].mean()))
    assert rests  # the probe set holds multi-token values
    assert result["value_rest"]["n"] == len(rests)
    assert result["value_rest"]["nll_right"] == pytest.approx(sum(rests) / len(rests), abs=1e-4)
    assert result["nll_right"] == pytest.approx(
        float(batched.per_row_mean(nll, reads).mean()), abs=1e-4
    )


def test_greedy_hits_read_each_question_with_the_state_row_it_is_given() -> None:
    from langchain_deltamem.evaluation.recall import RecallEvaluator
    from langchain_deltamem.training.probe import greedy_hits, probe_episodes, write_states

    engine = get_engine(adapter="smollm2-tsw")
    episodes = probe_episodes(3, ("colour", "food"))
    states = write_states(engine.handle, engine.tokenizer, episodes, batch_size=2)
    order = [2, 0, 1]
    evaluator = RecallEvaluator(engine, max_new_tokens=16)
    replies = [
        evaluator.answer(e.question, states.select(order[i])).strip()
        for i, e in enumerate(episodes)
    ]
    assert all(replies)
    # gold answers made from the replies the given rows produce: two hits and a sure miss
    graded = [
        episodes[0].model_copy(update={"answer": replies[0]}),
        episodes[1].model_copy(update={"answer": replies[1]}),
        episodes[2].model_copy(update={"answer": "a value no reply holds qzx"}),
    ]
    hits = greedy_hits(engine.handle, engine.tokenizer, graded, states, order, batch_size=2)
    assert hits == [1.0, 1.0, 0.0]


def test_an_msw_run_starts_from_a_single_state_adapter_and_probes_tool_results(
    tmp_path: Path,
) -> None:
    from langchain_deltamem.training.probe import probe_episodes

    model, _ = load_backbone()
    single = attach(model, DeltaMemConfig(rank=4, output_init="base_slice"), seed=5)
    before = {k: v.clone() for k, v in single.adapter_state_dict().items()}
    save_adapter(single, tmp_path / "ssw")
    single.detach()
    config = TrainConfig(
        adapter=DeltaMemConfig.for_strategy("msw", rank=4),
        init_adapter=str(tmp_path / "ssw"),
        steps=1,
        batch_size=2,
        warmup_steps=1,
        num_facts=(1,),
        kinds=("facts", "agent"),
        distractors=(0, 0),
        probe_every=1,
        probe_n=4,
        probe_kinds=("agent",),
        probe_greedy=False,
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        assert trainer.handle.config.num_states == 4
        wide = trainer.handle.adapter_state_dict()
        k_proj = next(name for name in before if name.endswith("memory_k_proj"))
        assert torch.equal(wide[k_proj], before[k_proj].repeat(4, 1))  # the maps, shared
        trainer.run(progress=False)
    finally:
        trainer.handle.detach()
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    probe = next(r["probe"] for r in rows if "probe" in r)
    assert probe["n"] == 4
    # the probe's values are only in a tool's output, which MSW routes to a tool state
    router = SourceRouter(4)
    for episode in probe_episodes(4, None, kinds=("agent",)):
        holders = [m for m in episode.messages if episode.answer in m.content]
        assert holders and all(m.source.startswith("tool:") for m in holders)
        assert all(router.state_for(m.source) >= 1 for m in holders)
    # a state count widening cannot reach is refused by name
    with pytest.raises(ValueError, match="single-state"):
        wider = DeltaMemConfig.for_strategy("msw", rank=4, num_states=8)
        four_states = str(tmp_path / "run/adapter")
        Trainer(
            config.model_copy(update={"init_adapter": four_states, "adapter": wider}),
            tmp_path / "again",
        )
