"""Per-turn cost of a long chat on the embedded SmolLM2: ChatDeltaMem vs buffer memory.

A synthetic conversation of ``turns`` user messages (varied chatter from templates, fixed seed)
is run once through `ChatDeltaMem` (window 6, max_tokens 16, greedy), handing it the whole
history each turn as a LangChain app would; a turn is one ``invoke`` including its memory
write. The memory is exported before the measured turns, so each measured turn can be re-run
later on exactly the state and history it had (greedy: the same reply).

Buffer memory is the same backbone with the whole history in the prompt, cut from the oldest
message to fit the context window, decoded by the same loop with no memory (bare generation)
and the same max_tokens. It is run only at a few turns, on the history of the pass.

Goals: ChatDeltaMem turn 200 costs ≤ 1.2× turn 1 (time and prompt tokens), and ≤ 0.2× the
buffer's turn 200. Re-runs of a turn on the two sides alternate, and each figure is the median
of the repeats, so machine noise hits both sides alike.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from ..baselines import buffer_window
from ..chat_model import ChatDeltaMem
from ..engine import DeltaMemEngine, get_engine
from ..generation import GenerationSettings, generate
from ..memory import DeltaMemory
from ..prompts import prompt_ids

WINDOW = 6
MAX_TOKENS = 16
GOAL_FLAT = 1.2
GOAL_VS_BUFFER = 0.2

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


# --- buffer memory --------------------------------------------------------------------------
def buffer_prompt(
    engine: DeltaMemEngine, messages: list[BaseMessage], max_tokens: int
) -> tuple[torch.Tensor, int]:
    """The buffer's prompt ids: the whole history, cut from the oldest message to fit the
    context (the same budget as ChatDeltaMem), and the untruncated history's token count."""
    limit = engine.context_length - max_tokens - 1
    full = prompt_ids(engine.tokenizer, messages)
    if full.shape[1] <= limit:
        return full, full.shape[1]
    kept = buffer_window(messages, engine, limit) or messages[-1:]  # the newest, cut if alone
    return prompt_ids(engine.tokenizer, kept)[:, -limit:], full.shape[1]


# --- the run --------------------------------------------------------------------------------
def _points(turns: int) -> tuple[list[int], list[int]]:
    """Turns re-run for ChatDeltaMem (incl. the first with a full window) and for the buffer."""
    buffer = sorted({1, *(max(1, round(turns * i / 4)) for i in range(1, 5))})
    full_window = WINDOW // 2 + 1  # 2k - 1 messages > WINDOW
    delta = sorted({*buffer, *([full_window] if full_window < turns else [])})
    return delta, buffer


def run(
    turns: int = 200,
    repeats: int = 3,
    seed: int = 0,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """The pass over every turn, then alternating re-runs of the measured turns."""
    log = log or sys.stderr
    load_before = _load_average()
    engine = get_engine()
    memory = DeltaMemory(engine)

    def chat_model(scope: str) -> ChatDeltaMem:
        return ChatDeltaMem(
            window=WINDOW, max_tokens=MAX_TOKENS, temperature=0.0, memory=memory, scope=scope
        )

    users = conversation(turns, seed)
    delta_points, buffer_points = _points(turns)
    settings = GenerationSettings(max_tokens=MAX_TOKENS)

    # warm-up (first-call allocations), on a scope of its own
    chat_model("turns-warmup").invoke("Hello there!")
    generate(
        engine.model,
        engine.tokenizer,
        buffer_prompt(engine, [HumanMessage("Hi")], 4)[0],
        GenerationSettings(max_tokens=4),
    )

    # 1. one pass over every turn, keeping what each measured turn starts from
    passing = chat_model("turns-pass")
    history: list[BaseMessage] = []
    snapshots: dict[int, tuple[bytes, list[BaseMessage]]] = {}
    per_turn: list[dict[str, Any]] = []
    started = time.perf_counter()
    for k, text in enumerate(users, 1):
        if k in delta_points:
            snapshots[k] = (memory.export(scope="turns-pass"), list(history))
        t0 = time.perf_counter()
        reply = passing.invoke([*history, HumanMessage(text)])
        seconds = time.perf_counter() - t0
        usage = reply.usage_metadata or {}
        per_turn.append(
            {
                "turn": k,
                "seconds": seconds,
                "prompt_tokens": usage.get("input_tokens", 0),
                "reply": str(reply.content),
            }
        )
        history += [HumanMessage(text), AIMessage(str(reply.content))]
        if k % 10 == 0 or k == turns:
            log.write(
                f"pass: turn {k}/{turns}: {seconds:.2f} s, {usage.get('input_tokens')} prompt "
                f"tokens ({time.perf_counter() - started:.0f} s so far)\n"
            )
            log.flush()
    pass_seconds = time.perf_counter() - started

    # 2. re-runs, alternating ChatDeltaMem and buffer at each measured turn
    rerun = chat_model("turns-rerun")
    delta: dict[int, dict[str, list]] = {
        k: {"s": [], "tokens": [], "same": []} for k in delta_points
    }
    buffer: dict[int, dict[str, list]] = {k: {"s": [], "tokens": []} for k in buffer_points}
    history_tokens: dict[int, int] = {}
    for r in range(repeats):
        for k in delta_points:
            state, before = snapshots[k]
            messages = [*before, HumanMessage(users[k - 1])]
            memory.import_(state, scope="turns-rerun")
            t0 = time.perf_counter()
            reply = rerun.invoke(messages)
            delta[k]["s"].append(time.perf_counter() - t0)
            delta[k]["tokens"].append((reply.usage_metadata or {}).get("input_tokens", 0))
            delta[k]["same"].append(str(reply.content) == per_turn[k - 1]["reply"])
            # the buffer repeats at the first and last turn; once in between (the costly part)
            if k in buffer_points and (r == 0 or k in (1, turns)):
                ids, history_tokens[k] = buffer_prompt(engine, messages, MAX_TOKENS)
                t0 = time.perf_counter()
                result = generate(engine.model, engine.tokenizer, ids, settings)
                buffer[k]["s"].append(time.perf_counter() - t0)
                buffer[k]["tokens"].append(result.prompt_tokens)
            ran_buffer = k in buffer and len(buffer[k]["s"]) == r + 1
            log.write(
                f"re-run {r + 1}/{repeats}, turn {k}: chatdeltamem {delta[k]['s'][-1]:.2f} s"
                + (f", buffer {buffer[k]['s'][-1]:.2f} s" if ran_buffer else "")
                + "\n"
            )
            log.flush()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "turns": turns,
        "repeats": repeats,
        "seed": seed,
        "context": engine.context_length,
        "pass_seconds": pass_seconds,
        "per_turn": per_turn,
        "delta": {
            k: {
                "s": med(v["s"]),
                "tokens": med(v["tokens"]),
                "runs": len(v["s"]),
                "same_reply": all(v["same"]),
            }
            for k, v in delta.items()
        },
        "buffer": {
            k: {
                "s": med(v["s"]),
                "tokens": med(v["tokens"]),
                "runs": len(v["s"]),
                "history_tokens": history_tokens[k],
            }
            for k, v in buffer.items()
        },
        "full_window_turn": WINDOW // 2 + 1,
        "load_average": (load_before, _load_average()),
    }


def _load_average() -> float | None:
    """The 5-minute load average (other jobs sharing the cores inflate every timing)."""
    try:
        return os.getloadavg()[1]
    except (AttributeError, OSError):
        return None


# --- report ---------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    n = results["turns"]
    delta, buffer = results["delta"], results["buffer"]
    first, last = delta[1], delta[n]
    rows = [
        _row(f"ChatDeltaMem turn {n} vs turn 1, wall time", last["s"], first["s"], "s", GOAL_FLAT),
        _row(
            f"ChatDeltaMem turn {n} vs turn 1, prompt tokens",
            last["tokens"],
            first["tokens"],
            "tok",
            GOAL_FLAT,
        ),
    ]
    full = results["full_window_turn"]
    if full in delta:
        rows += [
            _row(
                f"ChatDeltaMem turn {n} vs turn {full} (first turn with a full {WINDOW}-message "
                "window), wall time",
                last["s"],
                delta[full]["s"],
                "s",
                None,
            ),
            _row(
                f"ChatDeltaMem turn {n} vs turn {full}, prompt tokens",
                last["tokens"],
                delta[full]["tokens"],
                "tok",
                None,
            ),
        ]
    rows += [
        _row(
            f"ChatDeltaMem vs buffer memory at turn {n}, wall time",
            last["s"],
            buffer[n]["s"],
            "s",
            GOAL_VS_BUFFER,
        ),
        _row(
            f"ChatDeltaMem vs buffer memory at turn {n}, prompt tokens",
            last["tokens"],
            buffer[n]["tokens"],
            "tok",
            GOAL_VS_BUFFER,
        ),
    ]
    same = all(v["same_reply"] for v in delta.values())
    lines = [
        f"Turn benchmark — SmolLM2-135M-Instruct (embedded, fresh adapter), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
        f"{n} synthetic user turns (seed {results['seed']}); ChatDeltaMem window {WINDOW}, "
        f"max_tokens {MAX_TOKENS}, greedy, handed the whole history each turn; a turn is one "
        "`invoke` including its memory write. Buffer memory = the same backbone with the whole "
        f"history in the prompt, cut from the oldest message to fit the "
        f"{results['context']:,}-token context, bare generation (prompt rendering not timed, "
        f"in its favour), max_tokens {MAX_TOKENS}. Medians of {results['repeats']} re-runs of "
        "each measured turn from the state and history it had in the pass, alternating the "
        "two sides (the buffer's middle turns once)." + _load_note(results),
        "",
        "| measure | ratio | absolute | goal | met |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "| turn | ChatDeltaMem time | ChatDeltaMem prompt tokens | buffer time | buffer prompt "
        "tokens (whole history) | time ratio |",
        "|---|---|---|---|---|---|",
    ]
    for k, d in delta.items():
        b = buffer.get(k)
        if b is None:
            lines.append(f"| {k} | {d['s']:.2f} s | {d['tokens']:.0f} | — | — | — |")
        else:
            lines.append(
                f"| {k} | {d['s']:.2f} s | {d['tokens']:.0f} | {b['s']:.2f} s "
                f"({b['runs']} run{'s' if b['runs'] > 1 else ''}) | {b['tokens']:.0f} "
                f"({b['history_tokens']:,}) | {d['s'] / b['s']:.3f}× |"
            )
    per_turn = results["per_turn"]
    block = max(1, n // 10)
    lines += [
        "",
        f"Single pass over all {n} turns ({results['pass_seconds'] / 60:.1f} min; each turn run "
        "once, so noisier than the re-runs above). Re-runs reproduced the pass's replies: "
        f"{'yes' if same else 'NO'}.",
        "",
        "| turns | median time | median prompt tokens |",
        "|---|---|---|",
    ]
    for start in range(0, n, block):
        chunk = per_turn[start : start + block]
        span = f"{chunk[0]['turn']}–{chunk[-1]['turn']}" if len(chunk) > 1 else chunk[0]["turn"]
        lines.append(
            f"| {span} | "
            f"{statistics.median(t['seconds'] for t in chunk):.2f} s | "
            f"{statistics.median(t['prompt_tokens'] for t in chunk):.0f} |"
        )
    return "\n".join(lines)


def _load_note(results: dict[str, Any]) -> str:
    before, after = results.get("load_average") or (None, None)
    if before is None or after is None:
        return ""
    return (
        f" 5-minute load average {before:.1f} at the start, {after:.1f} at the end "
        f"({os.cpu_count()} CPUs): a load above the CPU count means other jobs shared the "
        "cores and inflated the timings."
    )


def _row(measure: str, a: float, b: float, unit: str, goal: float | None) -> str:
    ratio = a / b
    absolute = f"{a:.2f} s vs {b:.2f} s" if unit == "s" else f"{a:.0f} vs {b:.0f} tokens"
    if goal is None:
        return f"| {measure} | {ratio:.3f}× | {absolute} | (context) | — |"
    met = "yes" if ratio <= goal else "NO"
    return f"| {measure} | {ratio:.3f}× | {absolute} | ≤ {goal}× | {met} |"


def plot(results: dict[str, Any], path: Path) -> bool:
    """A PNG of the per-turn times, if matplotlib is installed (it is not a dependency)."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_turn = results["per_turn"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(
        [t["turn"] for t in per_turn],
        [t["seconds"] for t in per_turn],
        lw=0.8,
        label="ChatDeltaMem (pass)",
    )
    buffer = results["buffer"]
    ax.plot(list(buffer), [b["s"] for b in buffer.values()], "o-", label="buffer memory")
    ax.set_xlabel("turn")
    ax.set_ylabel("seconds per turn")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(out: str | None = None, repeats: int = 3, turns: int = 200, seed: int = 0) -> str:
    torch.manual_seed(0)
    results = run(turns=turns, repeats=repeats, seed=seed)
    text = table(results)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m langchain_deltamem.bench turns"
        path.write_text(f"# Chat turns benchmark\n\nCommand: `{command}`\n\n{text}\n")
        png = path.with_suffix(".png")
        if plot(results, png):
            print(f"plot: {png}")
    return text
