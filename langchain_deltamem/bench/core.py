"""Engine benchmark on the embedded SmolLM2: each goal is a ratio of two timings taken
alternately in the same run (medians over repeats), so machine noise hits both sides alike.

Goals: chunked scan ≥ 20× the naive scan (T=4096, r=8, 30 layers); a 1,024-token
prefill with TSW writes ≤ 1.15× the bare backbone, with SSW writes ≤ 1.05×; one decode step
reading memory ≤ 1.10×; 7,680 bytes of state per conversation.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones import load_backbone
from ..config import DeltaMemConfig
from ..generation import cache_kwargs, output_cache
from ..injection import attach
from ..scan import chunk_delta_rule_scan, naive_delta_rule_scan
from . import add_report_arguments


def _paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run alternately after one warm-up each."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def bench_scan(repeats: int, layers: int = 30, length: int = 4096, rank: int = 8) -> dict:
    gen = torch.Generator().manual_seed(0)

    def inputs() -> tuple[torch.Tensor, ...]:
        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen)

        q = F.normalize(torch.tanh(rand(1, length, 1, rank)), dim=-1)
        k = F.normalize(torch.tanh(rand(1, length, 1, rank)), dim=-1)
        return q, k, rand(1, length, 1, rank), torch.sigmoid(rand(1, length, 1, rank) - 1.5)

    data = [inputs() for _ in range(layers)]
    state = torch.zeros(1, 1, rank, rank)

    def run(scan: Callable) -> Callable[[], None]:
        return lambda: [scan(*x, state) for x in data]

    naive, fast = _paired(
        run(naive_delta_rule_scan), run(chunk_delta_rule_scan), max(1, repeats // 2)
    )
    return {"naive_s": naive, "fast_s": fast, "speedup": naive / fast}


def bench_model(repeats: int, prefill: int = 1024, cache_len: int = 512) -> dict:
    model, _ = load_backbone()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, prefill), generator=gen)
    results: dict[str, float] = {}
    bare = lambda: model(ids, use_cache=False)  # noqa: E731
    for name in ("tsw", "ssw"):
        handle = attach(model, DeltaMemConfig.for_strategy(name), seed=0)
        with torch.inference_mode():
            segments = (torch.arange(prefill) // 64)[None]  # 16 segments of 64 tokens

            def write(handle=handle, segments=segments) -> None:
                state = handle.new_state()
                with handle.memory(state, write=True, segment_ids=segments):
                    model(ids, use_cache=False)

            t_bare, t_mem = _paired(bare, write, repeats)
            results[f"prefill_{name}_bare_s"], results[f"prefill_{name}_s"] = t_bare, t_mem
            results[f"prefill_{name}_ratio"] = t_mem / t_bare
            if name == "ssw":
                results["state_bytes"] = handle.new_state().nbytes_per_conversation
                results.update(_bench_decode(model, handle, ids[:, :cache_len], repeats))
            handle.detach()
    return results


def _bench_decode(model: torch.nn.Module, handle, context: torch.Tensor, repeats: int) -> dict:
    """One decode step on a ``len(context)``-token KV cache, reading memory vs bare."""
    state = handle.new_state()
    segments = (torch.arange(context.shape[1]) // 64)[None]
    with handle.memory(state, write=True, segment_ids=segments):
        cache = output_cache(model(context, use_cache=True))
    token = context[:, -1:]
    steps = 16

    def steps_bare() -> None:
        for _ in range(steps):
            model(token, use_cache=True, **cache_kwargs(model, cache))
            cache.crop(-1)  # drop the token just appended

    def steps_reading() -> None:
        # entered once per generation, as in generate(); correction norms are tracked on the
        # prompt's prefill, not on every decoded token (see MemoryRun.track_corrections)
        with handle.memory(state, track_corrections=False):
            steps_bare()

    t_bare, t_mem = _paired(steps_bare, steps_reading, repeats)
    return {
        "decode_bare_s": t_bare / steps,
        "decode_s": t_mem / steps,
        "decode_ratio": t_mem / t_bare,
    }


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem bench core`` options."""
    return add_report_arguments(parser, repeats=5)


def run_from_args(args: argparse.Namespace) -> None:
    main(out=args.out, repeats=args.repeats)


def main(out: str | None = None, repeats: int = 5) -> str:
    torch.manual_seed(0)
    scan = bench_scan(repeats)
    model = bench_model(repeats)
    rows = [
        (
            "fast scan vs naive scan (T=4096, r=8, 30 layers)",
            f"{scan['speedup']:.1f}× faster",
            f"{scan['naive_s']:.2f} s vs {scan['fast_s']:.3f} s",
            "≥ 20×",
            scan["speedup"] >= 20,
        ),
        (
            "1,024-token prefill, TSW writes vs bare",
            f"{model['prefill_tsw_ratio']:.3f}×",
            f"{model['prefill_tsw_s']:.3f} s vs {model['prefill_tsw_bare_s']:.3f} s",
            "≤ 1.15×",
            model["prefill_tsw_ratio"] <= 1.15,
        ),
        (
            "1,024-token prefill, SSW writes (16 segments) vs bare",
            f"{model['prefill_ssw_ratio']:.3f}×",
            f"{model['prefill_ssw_s']:.3f} s vs {model['prefill_ssw_bare_s']:.3f} s",
            "≤ 1.05×",
            model["prefill_ssw_ratio"] <= 1.05,
        ),
        (
            "decode step reading memory vs bare (512-token cache)",
            f"{model['decode_ratio']:.3f}×",
            f"{model['decode_s'] * 1e3:.1f} ms vs {model['decode_bare_s'] * 1e3:.1f} ms",
            "≤ 1.10×",
            model["decode_ratio"] <= 1.10,
        ),
        (
            "MemoryState bytes per conversation (H=1)",
            f"{model['state_bytes']:,}",
            "fp32",
            "7,680",
            model["state_bytes"] == 7680,
        ),
    ]
    lines = [
        f"Core benchmark — SmolLM2-135M-Instruct (embedded), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; medians of {repeats} "
        "alternating repeats.",
        "",
        "| measure | ratio / value | timings | goal | met |",
        "|---|---|---|---|---|",
        *(f"| {m} | {r} | {t} | {g} | {'yes' if ok else 'NO'} |" for m, r, t, g, ok in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(
            f"# Engine benchmark\n\nCommand: `python -m langchain_deltamem.bench core`\n\n{table}\n"
        )
    return table
