"""Per-turn cost of one long chat under three memories, on the embedded SmolLM2.

Systems, each asked the same user message at the same turn with the same history before it:

* **δ-mem**: `ChatDeltaMem` (window 6) as an app uses it, handed the whole history; a turn is
  one ``invoke`` and the memory write after the reply (the write runs in the background; it
  is applied, and timed, before the turn counts as done, so the turn's whole cost is here).
* **buffer memory**: the bare backbone with as much history as fits the context
  (`baselines.buffer_window`, room left for the reply).
* **vector memory**: the bare backbone with the top-4 earlier messages retrieved by
  all-MiniLM-L6-v2 (`baselines.VectorMemory`) plus the last 6 messages; the turn includes
  embedding the query and storing the new messages.

One synthetic conversation (varied chatter from templates, fixed seed) is run once through
δ-mem; its replies become the history every system is measured on, and δ-mem's memory is
exported before each measured turn so the turn can be re-run on exactly that state. The
measured turns are then re-run ``repeats`` times, the three systems in a rotating order, and
each figure is a median. All decode greedily with the same ``max_tokens``. δ-mem's first and
last measured turns are also timed in back-to-back pairs, for a flatness ratio that load
drift between the loop's points (minutes apart on a long run) cannot bend.

Memory bytes held per conversation: δ-mem = the serialised state (`MemoryState.to_bytes`);
buffer = the kept history's text (UTF-8) plus its KV cache (layers × 2 × kv_heads × head_dim ×
tokens × dtype bytes); vector = `VectorMemory.nbytes` (float32 vectors + UTF-8 text). Write
throughput compares a δ-mem segment write of N tokens with the bare prefill of the same ids.

Goals: δ-mem's last-turn time ≤ 0.1 × buffer memory's and
≤ 1.2 × its own turn-1 time; δ-mem's bytes per conversation constant.

The pass and the samples are cached (``cache`` directory), so an interrupted run resumes where
it stopped; partial reports are written after every measured turn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from ..backbones import resolve_cache_dir
from ..baselines import MiniLMEmbeddings, VectorMemory, buffer_window
from ..chat_model import ChatDeltaMem
from ..engine import DeltaMemEngine, get_engine
from ..generation import GenerationSettings, generate
from ..memory import DeltaMemory, message_to_dict
from ..prompts import prompt_ids
from ..segments import encode_segments
from ..writing import MEMORY_SYSTEM_PROMPT, write_messages

WINDOW = 6
MAX_TOKENS = 16
RETRIEVE_K = 4
DEFAULT_TURNS = 500
DEFAULT_POINTS = (1, 10, 50, 100, 200, 300, 400, 500)
DEFAULT_WRITE_TOKENS = (1024, 4096)
GOAL_VS_BUFFER = 0.1
GOAL_FLAT = 1.2
RESUME_EVERY = 25  # pass checkpoints besides the measured turns, for resuming
SYSTEMS = ("deltamem", "buffer", "vector")
LABELS = {"deltamem": "δ-mem", "buffer": "buffer memory", "vector": "vector memory"}
VECTOR_SYSTEM = "Earlier messages of this conversation that may be relevant:\n"
PASS_SCOPE, RERUN_SCOPE = "cost-pass", "cost-rerun"


# --- synthetic chatter ----------------------------------------------------------------------
_NAMES = ["Mara", "Tomás", "Priya", "Jonas", "Aiko", "Luca", "Zoe", "Omar", "Ines", "Kwame"]
_RELATIONS = ["sister", "brother", "cousin", "neighbour", "colleague", "friend", "aunt", "boss"]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lyon", "Denver", "Porto", "Krakow", "Quito"]
_ACTIVITIES = [
    "hiking",
    "baking sourdough",
    "learning the cello",
    "running by the river",
    "painting watercolours",
    "playing chess online",
    "gardening",
    "rock climbing",
    "reading old sci-fi",
    "fixing my bike",
]
_TIMES = ["on weekends", "every morning", "after work", "on Tuesdays", "most evenings", "lately"]
_FOODS = ["lentils", "spinach", "feta", "chickpeas", "mushrooms", "rice", "salmon", "tofu", "leeks"]
_PETS = [("cat", "Juniper"), ("dog", "Pixel"), ("parrot", "Mango"), ("rabbit", "Biscuit")]
_PET_ACTIONS = [
    "knocked a plant off the shelf again",
    "refuses to eat anything but the expensive food",
    "learned to open the kitchen door",
    "slept on my keyboard all afternoon",
]
_FEELINGS = ["nervous", "excited", "unsure", "tired", "curious", "a little stressed"]
_EVENTS = [
    "my job interview on Friday",
    "the move to a new flat",
    "my first half marathon",
    "presenting at the team meeting",
    "the dinner party I am hosting",
    "my driving test",
]
_THINGS = [("book", "a long train ride"), ("podcast", "my commute"), ("app", "tracking habits")]
_WEATHER = ["rainy", "unusually warm", "grey and windy", "sunny", "freezing"]
_TEMPLATES = [
    "I have been {activity} {time} and I really enjoy it.",
    "My {relation} {name} is visiting from {city} next week.",
    "Do you think I should try {activity} {time}?",
    "Yesterday I went {activity} with {name}, it was great fun.",
    "Can you recommend a good {thing} for {purpose}?",
    "I'm {feeling} about {event}.",
    "By the way, my {pet} {pet_name} {pet_action}.",
    "What is a quick dinner with {food} and {food2}?",
    "Remember that my locker code is {number}.",
    "The weather in {city} has been {weather} all week.",
    "{name} says {city} is the best place to live. What do you think?",
    "I need to buy {food} and {food2} before the shops close.",
    "How do I stay motivated with {activity}?",
    "My {relation} thinks I spend too much time {activity}.",
    "I finally booked a trip to {city} for the spring.",
]
_OPENERS = ["", "", "", "Hey! ", "Anyway, ", "Honestly, ", "Quick one: ", "Oh, and "]
_LOWERABLE = {"My", "The", "Do", "Can", "What", "How", "Yesterday", "Remember", "By"}
_CLOSERS = ["", "", "", " Any tips?", " It has been a long week.", " :)", " What would you do?"]


def conversation(turns: int, seed: int = 0) -> list[str]:
    """``turns`` varied user messages (the same for the same seed)."""
    rng = random.Random(seed)
    messages = []
    for _ in range(turns):
        pet, pet_name = rng.choice(_PETS)
        thing, purpose = rng.choice(_THINGS)
        food, food2 = rng.sample(_FOODS, 2)
        opener, closer = rng.choice(_OPENERS), rng.choice(_CLOSERS)
        body = rng.choice(_TEMPLATES).format(
            activity=rng.choice(_ACTIVITIES),
            time=rng.choice(_TIMES),
            relation=rng.choice(_RELATIONS),
            name=rng.choice(_NAMES),
            city=rng.choice(_CITIES),
            thing=thing,
            purpose=purpose,
            feeling=rng.choice(_FEELINGS),
            event=rng.choice(_EVENTS),
            pet=pet,
            pet_name=pet_name,
            pet_action=rng.choice(_PET_ACTIONS),
            food=food,
            food2=food2,
            number=rng.randint(1000, 9999),
            weather=rng.choice(_WEATHER),
        )
        if opener:
            first = body.split(" ", 1)[0]
            body = body[0].lower() + body[1:] if first in _LOWERABLE else body
        messages.append(opener + body + closer)
    return messages


# --- small helpers --------------------------------------------------------------------------
def parse_points(text: str | None, turns: int) -> list[int]:
    """``"1,10,20"`` → ``[1, 10, 20]``; default: the standard points up to ``turns`` and
    ``turns`` itself. Every point must lie in ``1..turns``."""
    if text:
        points = sorted({int(p) for p in text.split(",") if p.strip()})
    else:
        points = sorted({p for p in DEFAULT_POINTS if p <= turns} | {1, turns})
    if not points or points[0] < 1 or points[-1] > turns:
        raise ValueError(f"points {points} must lie in 1..{turns}")
    return points


def kv_cache_bytes(config: Any, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of a KV cache over ``tokens`` positions: layers × 2 × kv_heads × head_dim × dtype."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * 2 * kv_heads * head_dim * tokens * element


def _text_bytes(messages: Sequence[BaseMessage]) -> int:
    return sum(len(str(m.content).encode("utf-8")) for m in messages)


def _history(users: Sequence[str], replies: Sequence[str], turns: int) -> list[BaseMessage]:
    """The conversation before turn ``turns + 1``: user message, reply, …"""
    messages: list[BaseMessage] = []
    for user, reply in zip(users[:turns], replies[:turns], strict=True):
        messages += [HumanMessage(user), AIMessage(reply)]
    return messages


def _load_average() -> float | None:
    try:
        return os.getloadavg()[1]
    except (AttributeError, OSError):
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, value: Any) -> None:
    """Atomic: a run killed mid-write leaves the previous file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


# --- 1. the δ-mem pass ----------------------------------------------------------------------
def _chat_model(memory: DeltaMemory, scope: str) -> ChatDeltaMem:
    return ChatDeltaMem(
        window=WINDOW, max_tokens=MAX_TOKENS, temperature=0.0, memory=memory, scope=scope
    )


def run_pass(
    memory: DeltaMemory,
    users: list[str],
    points: list[int],
    cache: Path | None,
    key: dict[str, Any],
    log: TextIO,
) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """δ-mem over every turn: per-turn records (reply, time, prompt tokens) and the memory
    export before each measured turn. Resumes from the cache's last checkpoint."""
    turns = len(users)
    marks = set(points) | set(range(1, turns + 1, RESUME_EVERY))
    records: list[dict[str, Any]] = []
    exports: dict[int, bytes] = {}
    if cache is not None:
        saved = _read_json(cache / "pass.json")
        if saved and saved.get("key") == key:
            records = saved["records"][:turns]
            for k in marks:
                path = cache / f"state-{k}.json"
                if k <= len(records) + 1 and path.exists():
                    exports[k] = path.read_bytes()
    missing = [k for k in points if k not in exports]
    if not missing and len(records) == turns:
        log.write(f"pass: all {turns} turns from the cache\n")
        return records, exports
    # resume from the last checkpoint before the first missing export (or the end)
    target = min([*missing, len(records) + 1])
    start = max([k for k in exports if k <= target], default=1)
    records = records[: start - 1]
    if start > 1:
        memory.import_(exports[start], scope=PASS_SCOPE)
        log.write(f"pass: resuming at turn {start} from the cache\n")
    else:
        memory.reset(scope=PASS_SCOPE)
    model = _chat_model(memory, PASS_SCOPE)
    history = _history(users, [r["reply"] for r in records], start - 1)
    began = time.perf_counter()
    for k in range(start, turns + 1):
        if k in marks:
            exports[k] = memory.export(scope=PASS_SCOPE)
            if cache is not None:
                (cache / f"state-{k}.json").write_bytes(exports[k])
                _write_json(cache / "pass.json", {"key": key, "records": records})
        t0 = time.perf_counter()
        reply = model.invoke([*history, HumanMessage(users[k - 1])])
        seconds = time.perf_counter() - t0
        tokens = (reply.usage_metadata or {}).get("input_tokens", 0)
        records.append({"turn": k, "s": seconds, "tokens": tokens, "reply": str(reply.content)})
        history += [HumanMessage(users[k - 1]), AIMessage(str(reply.content))]
        if k % 10 == 0 or k == turns:
            log.write(
                f"pass: turn {k}/{turns}: {seconds:.2f} s, {tokens} prompt tokens "
                f"({time.perf_counter() - began:.0f} s so far)\n"
            )
            log.flush()
    if cache is not None:
        _write_json(cache / "pass.json", {"key": key, "records": records})
    return records, exports


# --- 2. one measured turn per system ----------------------------------------------------
def measure_deltamem(
    memory: DeltaMemory, export: bytes, history: list[BaseMessage], user: str
) -> dict[str, Any]:
    """One ``invoke`` and its memory write (applied with ``flush``, timed) on the state the
    pass had before this turn."""
    memory.import_(export, scope=RERUN_SCOPE)
    model = _chat_model(memory, RERUN_SCOPE)
    t0 = time.perf_counter()
    reply = model.invoke([*history, HumanMessage(user)])
    memory.flush(scope=RERUN_SCOPE)
    seconds = time.perf_counter() - t0
    state_bytes = len(memory.state(scope=RERUN_SCOPE).to_bytes())
    return {
        "s": seconds,
        "tokens": (reply.usage_metadata or {}).get("input_tokens", 0),
        "bytes": state_bytes,
        "reply": str(reply.content),
    }


def buffer_messages(
    engine: DeltaMemEngine, messages: list[BaseMessage], max_tokens: int
) -> tuple[list[BaseMessage], torch.Tensor]:
    """Buffer memory's prompt: the messages kept (cut from the oldest to fit the context with
    room for ``max_tokens``; the newest alone if nothing fits) and their ids."""
    limit = engine.context_length - max_tokens - 1
    kept = buffer_window(messages, engine, limit) or messages[-1:]  # the newest, cut if alone
    return kept, prompt_ids(engine.tokenizer, kept)[:, -limit:]


def buffer_prompt(
    engine: DeltaMemEngine, messages: list[BaseMessage], max_tokens: int
) -> tuple[torch.Tensor, int]:
    """The buffer's prompt ids (`buffer_messages`) and the untruncated history's token count."""
    full = prompt_ids(engine.tokenizer, messages)
    if full.shape[1] <= engine.context_length - max_tokens - 1:
        return full, full.shape[1]
    return buffer_messages(engine, messages, max_tokens)[1], full.shape[1]


def measure_buffer(engine: DeltaMemEngine, history: list[BaseMessage], user: str) -> dict[str, Any]:
    """Trim the history to the context (from the oldest), render, generate. ``gen_s`` is the
    generation alone (prefill + decode), ``s`` includes trimming and rendering."""
    messages = [*history, HumanMessage(user)]
    t0 = time.perf_counter()
    kept, ids = buffer_messages(engine, messages, MAX_TOKENS)
    t1 = time.perf_counter()
    result = generate(engine.model, engine.tokenizer, ids, GenerationSettings(MAX_TOKENS))
    t2 = time.perf_counter()
    kv = kv_cache_bytes(engine.model.config, result.prompt_tokens, engine.model.dtype)
    return {
        "s": t2 - t0,
        "gen_s": t2 - t1,
        "tokens": result.prompt_tokens,
        "bytes": _text_bytes(kept) + kv,
        "text_bytes": _text_bytes(kept),
        "kept_messages": len(kept),
    }


def measure_vector(
    engine: DeltaMemEngine, store: VectorMemory, history: list[BaseMessage], user: str
) -> dict[str, Any]:
    """Retrieve (embeds the query), generate on retrieved + recent messages, then store the
    user message and the reply (embeds both): the whole turn is timed."""
    store = store.copy()
    messages = [*history, HumanMessage(user)]
    recent = messages[-WINDOW:]
    t0 = time.perf_counter()
    found = store.retrieved_messages(user, k=RETRIEVE_K, before=len(messages) - len(recent))
    prompt = ([SystemMessage(VECTOR_SYSTEM + found)] if found else []) + recent
    ids = prompt_ids(engine.tokenizer, prompt)
    result = generate(engine.model, engine.tokenizer, ids, GenerationSettings(MAX_TOKENS))
    store.add([HumanMessage(user), AIMessage(result.text)])
    seconds = time.perf_counter() - t0
    return {"s": seconds, "tokens": result.prompt_tokens, "bytes": store.nbytes()}


def vector_snapshots(
    history: list[BaseMessage], points: list[int], embeddings: MiniLMEmbeddings
) -> dict[int, VectorMemory]:
    """The vector store before each measured turn (every earlier message embedded)."""
    snapshots: dict[int, VectorMemory] = {}
    store = VectorMemory(embeddings)
    for k in sorted(points):
        store.add(history[len(store) : 2 * (k - 1)])
        snapshots[k] = store.copy()
    return snapshots


# --- 3. write throughput --------------------------------------------------------------------
def _timed_alternating(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each function, run in turn after one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(bucket) for bucket in times]


def bench_write(
    engine: DeltaMemEngine, history: list[BaseMessage], tokens: int, repeats: int
) -> dict[str, Any]:
    """Tokens/s of a δ-mem SSW write of about ``tokens`` tokens of chat vs the bare prefill of
    the same ids (one forward each; ``write_call`` adds the rendering the app pays)."""
    pool = [message_to_dict(m) for m in history] or [{"role": "user", "content": "Hello!"}] * 2
    system = {"role": "system", "content": MEMORY_SYSTEM_PROMPT}
    chosen: list[dict[str, str]] = []
    while True:
        chosen.append(pool[len(chosen) % len(pool)])
        encoded = encode_segments(engine.tokenizer, [system, *chosen])
        if encoded.input_ids.shape[1] >= tokens:
            break
    model, handle = engine.model, engine.handle
    ids, segments = encoded.input_ids, encoded.segment_ids

    def bare() -> None:
        with torch.inference_mode():
            model(ids, use_cache=False)

    def write_forward() -> None:
        with (
            torch.inference_mode(),
            handle.memory(handle.new_state(), write=True, segment_ids=segments),
        ):
            model(ids, use_cache=False)

    def write_call() -> None:
        write_messages(
            handle,
            engine.tokenizer,
            handle.new_state(),
            chosen,
            max_forward_tokens=engine.context_length,
        )

    t_bare, t_write, t_call = _timed_alternating([bare, write_forward, write_call], repeats)
    n = int(ids.shape[1])
    return {
        "tokens": n,
        "written_tokens": int((segments >= 0).sum()),
        "messages": len(chosen),
        "bare_s": t_bare,
        "write_s": t_write,
        "call_s": t_call,
        "bare_tps": n / t_bare,
        "write_tps": n / t_write,
        "call_tps": n / t_call,
    }


# --- the run --------------------------------------------------------------------------------
def run(
    turns: int = DEFAULT_TURNS,
    points: list[int] | None = None,
    repeats: int = 3,
    seed: int = 0,
    write_tokens: Sequence[int] = DEFAULT_WRITE_TOKENS,
    cache: Path | None = None,
    out: Path | None = None,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """The pass, write throughput, then the measured turns (reports refreshed as they come)."""
    log = log or sys.stderr
    points = points or parse_points(None, turns)
    engine = get_engine()
    memory = DeltaMemory(engine)
    embeddings = MiniLMEmbeddings()
    fingerprint = engine.handle.new_state().fingerprint
    key = {
        "seed": seed,
        "window": WINDOW,
        "max_tokens": MAX_TOKENS,
        "backbone": engine.backbone,
        "adapter": engine.adapter,
        "fingerprint": str(fingerprint),
    }
    if cache is not None:
        cache = cache / f"turns{turns}-seed{seed}"  # a shorter run never clobbers a longer one
        cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "turns": turns,
        "points": points,
        "repeats": repeats,
        "seed": seed,
        "context": engine.context_length,
        "threads": torch.get_num_threads(),
        "load_average": [_load_average(), None],
        "samples": {s: {} for s in SYSTEMS},
        "write": [],
        "state_nbytes": engine.handle.new_state().nbytes_per_conversation,
    }

    # warm-up: first-call allocations on every path
    _chat_model(memory, "cost-warmup").invoke("Hello there!")
    generate(
        engine.model,
        engine.tokenizer,
        prompt_ids(engine.tokenizer, [HumanMessage("Hi")]),
        GenerationSettings(4),
    )
    embeddings.embed_query("warm-up")

    users = conversation(turns, seed)
    records, exports = run_pass(memory, users, points, cache, key, log)
    results["pass"] = [{k: r[k] for k in ("turn", "s", "tokens")} for r in records]
    replies = [r["reply"] for r in records]
    history = _history(users, replies, turns)

    measure_key = {**key, "threads": results["threads"]}
    saved = _read_json(cache / "write.json") if cache is not None else None
    done = saved["write"] if saved and saved.get("key") == measure_key else {}
    for n in write_tokens:
        if str(n) not in done:
            done[str(n)] = bench_write(engine, history, n, repeats)
            if cache is not None:
                _write_json(cache / "write.json", {"key": measure_key, "write": done})
        results["write"].append(done[str(n)])
        w = done[str(n)]
        log.write(
            f"write {w['tokens']} tokens: bare prefill {w['bare_tps']:.0f} tok/s, δ-mem write "
            f"forward {w['write_tps']:.0f} tok/s, write call {w['call_tps']:.0f} tok/s\n"
        )
        log.flush()
    if out is not None:
        write_outputs(results, out, partial=True)

    saved = _read_json(cache / "samples.json") if cache is not None else None
    if saved and saved.get("key") == measure_key:
        for system in SYSTEMS:
            results["samples"][system] = {
                int(k): v for k, v in saved["samples"][system].items() if int(k) in points
            }
        log.write("samples: resuming from the cache\n")
    snapshots = vector_snapshots(history, points, embeddings)
    for r in range(repeats):
        order = SYSTEMS[r % 3 :] + SYSTEMS[: r % 3]  # rotate who goes first
        for k in points:
            before = history[: 2 * (k - 1)]
            user = users[k - 1]
            for system in order:
                bucket = results["samples"][system].setdefault(k, [])
                if len(bucket) > r:
                    continue
                if system == "deltamem":
                    sample = measure_deltamem(memory, exports[k], before, user)
                    sample["same_reply"] = sample.pop("reply") == replies[k - 1]
                elif system == "buffer":
                    sample = measure_buffer(engine, before, user)
                else:
                    sample = measure_vector(engine, snapshots[k], before, user)
                bucket.append(sample)
            line = ", ".join(
                f"{LABELS[s]} {results['samples'][s][k][r]['s']:.2f} s" for s in SYSTEMS
            )
            log.write(f"repeat {r + 1}/{repeats}, turn {k}: {line}\n")
            log.flush()
            if cache is not None:
                _write_json(
                    cache / "samples.json", {"key": measure_key, "samples": results["samples"]}
                )
            if out is not None:
                results["load_average"][1] = _load_average()
                write_outputs(results, out, partial=True)
    first, last = points[0], points[-1]
    saved = _read_json(cache / "flat.json") if cache is not None else None
    flat_key = {**measure_key, "pair": [first, last]}
    if saved and saved.get("key") == flat_key:
        results["flat"] = saved["pairs"]
    else:
        results["flat"] = measure_flat(memory, exports, history, users, first, last, repeats, log)
        if cache is not None:
            _write_json(cache / "flat.json", {"key": flat_key, "pairs": results["flat"]})
    results["load_average"][1] = _load_average()
    return results


def measure_flat(
    memory: DeltaMemory,
    exports: dict[int, bytes],
    history: list[BaseMessage],
    users: list[str],
    first: int,
    last: int,
    repeats: int,
    log: TextIO,
) -> list[dict[str, float]]:
    """δ-mem's first and last measured turns back to back, ``2 × repeats + 1`` times: the
    flatness ratio from pairs taken seconds apart, so load drift between the points of the
    main loop (minutes apart) does not enter it."""
    pairs = []
    for i in range(2 * repeats + 1):
        order = (first, last) if i % 2 == 0 else (last, first)
        seconds = {}
        for k in order:
            before = history[: 2 * (k - 1)]
            seconds[k] = measure_deltamem(memory, exports[k], before, users[k - 1])["s"]
        pairs.append({"first": seconds[first], "last": seconds[last]})
        log.write(
            f"paired δ-mem turns {first} / {last}: {seconds[first]:.2f} s / {seconds[last]:.2f} s\n"
        )
        log.flush()
    return pairs


# --- report ---------------------------------------------------------------------------------
def summary(results: dict[str, Any]) -> dict[str, dict[int, dict[str, float]]]:
    """Medians per system and point, over the samples taken so far."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for system, per_point in results["samples"].items():
        out[system] = {}
        for k in sorted(per_point):
            samples = per_point[k]
            if not samples:
                continue
            row = {
                name: statistics.median(s[name] for s in samples)
                for name in ("s", "tokens", "bytes", "gen_s")
                if name in samples[0]
            }
            row["runs"] = len(samples)
            out[system][k] = row
    return out


def goals(results: dict[str, Any]) -> list[tuple[str, float | None, str, str]]:
    """(measure, ratio, absolute, met) for each goal; ratio None while data is missing."""
    med = summary(results)
    delta, buffer = med.get("deltamem", {}), med.get("buffer", {})
    first, last = min(results["points"]), max(results["points"])
    rows: list[tuple[str, float | None, str, str]] = []
    if last in delta and last in buffer:
        a, b = delta[last]["s"], buffer[last]["gen_s"]
        rows.append(_time_row(f"δ-mem vs buffer memory, turn {last} time", a, b, GOAL_VS_BUFFER))
    else:
        rows.append((f"δ-mem vs buffer memory, turn {last} time", None, "pending", "—"))
    pairs = results.get("flat") or []
    if pairs:
        rows.append(
            _time_row(
                f"δ-mem turn {last} vs turn {first} time, {len(pairs)} back-to-back pairs",
                statistics.median(p["last"] for p in pairs),
                statistics.median(p["first"] for p in pairs),
                GOAL_FLAT,
                ratio=statistics.median(p["last"] / p["first"] for p in pairs),
                note=" (medians)",
            )
        )
    if last in delta and first in delta:
        a, b = delta[last]["s"], delta[first]["s"]
        rows.append(
            _time_row(
                f"δ-mem turn {last} vs turn {first} time, medians of the rotating loop",
                a,
                b,
                GOAL_FLAT,
            )
        )
    else:
        rows.append((f"δ-mem turn {last} vs turn {first} time", None, "pending", "—"))
    sizes = sorted({s["bytes"] for v in results["samples"]["deltamem"].values() for s in v})
    constant = len(sizes) == 1
    rows.append(
        (
            "δ-mem bytes per conversation constant",
            None,
            ", ".join(f"{b:,} B" for b in sizes) or "pending",
            ("yes" if constant else "NO") if sizes else "—",
        )
    )
    return rows


def _time_row(
    measure: str,
    a: float,
    b: float,
    goal: float,
    *,
    ratio: float | None = None,
    note: str = "",
) -> tuple[str, float, str, str]:
    """One goal row comparing time ``a`` with ``b`` (``ratio`` defaults to a / b)."""
    ratio = a / b if ratio is None else ratio
    return (
        f"{measure} (goal ≤ {goal}×)",
        ratio,
        f"{a:.2f} s vs {b:.2f} s{note}",
        _met(ratio, goal),
    )


def _met(ratio: float, goal: float) -> str:
    return "yes" if ratio <= goal else "NO"


def _fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def table(results: dict[str, Any], partial: bool = False) -> str:
    """The markdown report: goals, then time, prompt tokens and bytes per measured turn."""
    med = summary(results)
    points = results["points"]
    before, after = results.get("load_average") or (None, None)
    load = (
        f" 5-minute load average {before:.1f} at the start, {after:.1f} at the last update "
        f"({os.cpu_count()} CPUs; above the number of threads, other jobs shared the cores)."
        if before is not None and after is not None
        else ""
    )
    lines = [
        *(["**Partial results: the run is still going.**", ""] if partial else []),
        f"SmolLM2-135M-Instruct (embedded, fresh adapter), torch {torch.__version__}, "
        f"{results['threads']} thread(s), {platform.machine()}; one synthetic conversation of "
        f"{results['turns']} user turns (seed {results['seed']}), replies from the δ-mem pass "
        f"as the history of every system; max_tokens {MAX_TOKENS}, greedy. δ-mem = "
        f"`ChatDeltaMem` (window {WINDOW}), one `invoke` plus its memory write (in the background, "
        "timed until applied). Buffer = "
        f"bare backbone, history cut from the oldest to fit the {results['context']:,}-token "
        f"context minus the reply. Vector = bare backbone, top-{RETRIEVE_K} earlier messages "
        f"(all-MiniLM-L6-v2, in-memory store) + the last {WINDOW} messages; query and new "
        f"messages embedded inside the turn. Median of {results['repeats']} re-run(s) of each "
        "measured turn on the state and history it had, the systems in rotating order." + load,
        "",
        "| goal | ratio | absolute | met |",
        "|---|---|---|---|",
    ]
    for measure, ratio, absolute, met in goals(results):
        shown = f"{ratio:.3f}×" if ratio is not None else "—"
        lines.append(f"| {measure} | {shown} | {absolute} | {met} |")
    lines += [
        "",
        "The buffer's time in the goal is its generation alone (prefill + decode), in its "
        "favour; the table below also gives its whole turn (trimming and rendering included).",
        "",
        "| turn | δ-mem time | buffer time (generation / whole turn) | vector time |",
        "|---|---|---|---|",
    ]

    def cell(system: str, k: int, fmt: Callable[[dict[str, float]], str]) -> str:
        row = med.get(system, {}).get(k)
        return fmt(row) if row else "…"

    for k in points:
        cells = [
            cell("deltamem", k, lambda r: f"{r['s']:.2f} s"),
            cell("buffer", k, lambda r: f"{r['gen_s']:.2f} s / {r['s']:.2f} s"),
            cell("vector", k, lambda r: f"{r['s']:.2f} s"),
        ]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| turn | δ-mem prompt tokens | buffer prompt tokens | vector prompt tokens |",
        "|---|---|---|---|",
    ]
    for k in points:
        cells = [cell(s, k, lambda r: f"{r['tokens']:,.0f}") for s in SYSTEMS]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| turn | δ-mem bytes (state) | buffer bytes (text + KV cache) | vector bytes "
        "(float32 vectors + text) |",
        "|---|---|---|---|",
    ]
    for k in points:
        cells = [cell(s, k, lambda r: _fmt_bytes(r["bytes"])) for s in SYSTEMS]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"δ-mem's state is {results['state_nbytes']:,} bytes of fp32 matrices; the serialised "
        "bytes above add the safetensors header, write counts and the adapter fingerprint. "
        "`DeltaMemory` also keeps a text log of the segments written (for `forget`), outside "
        "the state; `snapshot()` leaves it out.",
    ]
    same = [s.get("same_reply") for v in results["samples"]["deltamem"].values() for s in v]
    if same:
        lines.append(
            f"δ-mem re-runs reproduced the pass's replies: {'yes' if all(same) else 'NO'}."
        )
    if results["write"]:
        lines += [
            "",
            "Write throughput (tokens/s through one forward; the same ids for both; the memory "
            "system prompt's tokens are in the forward but not written):",
            "",
            "| tokens (written) | bare prefill | δ-mem SSW write forward | ratio | whole "
            "write call (rendering included) | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for w in results["write"]:
            lines.append(
                f"| {w['tokens']:,} ({w['written_tokens']:,}) | {w['bare_tps']:,.0f} tok/s | "
                f"{w['write_tps']:,.0f} tok/s | {w['write_tps'] / w['bare_tps']:.3f}× | "
                f"{w['call_tps']:,.0f} tok/s | {w['call_tps'] / w['bare_tps']:.3f}× |"
            )
    if results.get("pass"):
        seconds = [p["s"] for p in results["pass"]]
        lines += [
            "",
            f"The δ-mem pass (each turn once, noisier): {len(seconds)} turns in "
            f"{sum(seconds) / 60:.1f} min, median {statistics.median(seconds):.2f} s per turn.",
        ]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """Three PNGs next to ``out``: time, prompt tokens and bytes per turn, per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = summary(results)
    paths = []
    for name, field, ylabel in (
        ("time", "s", "seconds per turn"),
        ("tokens", "tokens", "prompt tokens"),
        ("bytes", "bytes", "bytes held per conversation"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        if name == "time" and results.get("pass"):
            ax.plot(
                [p["turn"] for p in results["pass"]],
                [p["s"] for p in results["pass"]],
                lw=0.6,
                alpha=0.5,
                color="C0",
                label="δ-mem (single pass)",
            )
        for i, system in enumerate(SYSTEMS):
            rows = med.get(system, {})
            if rows:
                key = "gen_s" if system == "buffer" and name == "time" else field
                ax.plot(
                    list(rows),
                    [r[key] for r in rows.values()],
                    "o-",
                    color=f"C{i}",
                    label=LABELS[system] + (" (generation)" if key == "gen_s" else ""),
                )
        ax.set_xlabel("turn")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:  # partial reports may have no points yet
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out.with_name(f"{out.stem}-{name}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(results: dict[str, Any], out: Path, partial: bool = False) -> list[Path]:
    """The markdown report and its PNGs (rewritten as results come in)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "deltamem bench cost"
    if results["turns"] != DEFAULT_TURNS:
        command += f" --turns {results['turns']}"
    text = table(results, partial=partial)
    out.write_text(
        f"# Cost per turn: δ-mem vs buffer and vector memory\n\nCommand: `{command}`\n\n{text}\n"
    )
    pngs = plot(results, out)
    names = ", ".join(f"`{p.name}`" for p in pngs)
    with out.open("a") as f:
        f.write(f"\nPlots: {names}.\n")
    return [out, *pngs]


def main(
    out: str | None = None,
    repeats: int = 3,
    turns: int = DEFAULT_TURNS,
    points: str | None = None,
    seed: int = 0,
    write_tokens: str | None = None,
    cache: str | None = None,
) -> str:
    """Run the benchmark, print the report, and write it (with PNGs) to ``out``."""
    torch.manual_seed(0)
    sizes = [int(t) for t in write_tokens.split(",")] if write_tokens else DEFAULT_WRITE_TOKENS
    results = run(
        turns=turns,
        points=parse_points(points, turns),
        repeats=repeats,
        seed=seed,
        write_tokens=sizes,
        cache=Path(cache) if cache else None,
        out=Path(out) if out else None,
    )
    text = table(results)
    print(text)
    if out:
        for path in write_outputs(results, Path(out)):
            print(f"wrote {path}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem bench cost`` options."""
    parser.add_argument("--out", help="write the markdown report here, PNGs next to it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--turns", type=int, default=DEFAULT_TURNS)
    parser.add_argument("--points", help="measured turns, e.g. 1,10,20 (default: 1,10,50,…)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-tokens", help="write-throughput sizes, default 1024,4096")
    parser.add_argument(
        "--cache", help="resume directory (default: <DELTAMEM_CACHE_DIR>/bench-cost)"
    )
    return parser


def default_cache() -> str:
    """The resume directory of the δ-mem pass (shared with ``bench latency``)."""
    return str(resolve_cache_dir() / "bench-cost")


def run_from_args(args: argparse.Namespace) -> None:
    main(
        out=args.out,
        repeats=args.repeats,
        turns=args.turns,
        points=args.points,
        seed=args.seed,
        write_tokens=args.write_tokens,
        cache=args.cache or default_cache(),
    )
