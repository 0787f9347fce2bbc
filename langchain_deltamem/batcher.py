"""`MicroBatcher`: replies requested together on one loaded model decode as one batch.

Callers (threads, or asyncio tasks through their worker threads) `submit` a prompt with the
memory state of its conversation and iterate the returned `BatchedStream`. One decoding thread
per batcher takes every request waiting (up to ``max_batch_size``), stacks their states into
one `MemoryState` and runs `batched_generation.generate_batch`: row ``i`` reads conversation
``i``'s memory, and each row's chunks go to its own stream as they become final. Requests that
arrive while a batch runs form the next one.

A caller may `announce` a request before it has its prompt ready (rendering, waiting for its
conversation's pending write); a batch about to start then waits for announced requests, at
most ``max_wait`` seconds. A request nobody else announced alongside starts at once, so a lone
conversation pays nothing for batching.

The caller keeps its conversation's scope held while it waits (the state is read, never
written, by the batch), so nothing else changes that state mid-reply.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .batched_generation import BatchRequest, check_prompt, generate_batch
from .engine import DeltaMemEngine
from .generation import GenerationChunk, GenerationResult, GenerationSettings, LogitsProcessor
from .state import MemoryState

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT = 0.05  # seconds, spent only while announced requests are on their way


@dataclass
class _Job:
    request: BatchRequest
    state: MemoryState
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    ratio: dict[int, dict[str, float]] = field(default_factory=dict)


class BatchedStream(Iterator[GenerationChunk]):
    """The chunks of one submitted reply; after the last, `result` holds its
    `GenerationResult` and `correction_ratio` the batch's ‖Δ‖/‖output‖ per layer and head
    (measured on the prefill; over the whole batch when it had several rows)."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self.result: GenerationResult | None = None
        self.correction_ratio: dict[int, dict[str, float]] = {}

    def __next__(self) -> GenerationChunk:
        if self.result is not None:
            raise StopIteration
        kind, value = self._job.events.get()
        if kind == "chunk":
            return value
        if kind == "error":
            raise value
        self.result, self.correction_ratio = value
        raise StopIteration


class Announcement:
    """A request on its way to `MicroBatcher.submit` (released by it, or by `release`)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self.released = False

    def release(self) -> None:
        """Withdraw it (the request will not come, e.g. its call failed); idempotent."""
        with self._batcher._ready:
            self._release_locked()

    def _release_locked(self) -> None:
        if not self.released:
            self.released = True
            self._batcher._announced -= 1
            self._batcher._ready.notify_all()


class MicroBatcher:
    """Groups concurrent generation requests on one engine into batched forwards.

    Args:
        engine: the loaded backbone + adapter.
        max_batch_size: most rows per batch (1 = every request decodes alone).
        max_wait: seconds a batch waits for announced requests to join it.
    """

    def __init__(
        self,
        engine: DeltaMemEngine,
        max_batch_size: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        if not isinstance(max_wait, int | float) or not 0 <= max_wait <= 10:
            raise ValueError(f"max_wait must be a number of seconds in [0, 10], got {max_wait!r}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait = float(max_wait)
        self._ready = threading.Condition()
        self._waiting: list[_Job] = []
        self._announced = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # rows of each batch run (for benchmarks and tests)

    def announce(self) -> Announcement:
        """Say a request is coming; pass the result to `submit` (or `release` it)."""
        with self._ready:
            self._announced += 1
        return Announcement(self)

    def submit(
        self,
        input_ids: torch.Tensor,
        settings: GenerationSettings,
        state: MemoryState,
        logits_processor: LogitsProcessor | None = None,
        announcement: Announcement | None = None,
    ) -> BatchedStream:
        """Queue one reply reading ``state`` (one conversation); returns its stream.

        Raises:
            ValueError: a prompt that `generation.stream_generate` would refuse (checked here,
                so it fails alone).
        """
        check_prompt(self.engine.model, input_ids, settings)
        if state.batch_size != 1:
            raise ValueError(f"submit takes one conversation's state, got {state.batch_size}")
        job = _Job(BatchRequest(input_ids, settings, logits_processor), state)
        job.request.on_chunk = lambda chunk: job.events.put(("chunk", chunk))
        job.request.on_done = lambda outcome: job.events.put(
            ("error", outcome)
            if isinstance(outcome, BaseException)
            else ("done", (outcome, job.ratio))
        )
        self._ensure_thread()
        with self._ready:
            self._waiting.append(job)
            if announcement is not None:
                announcement._release_locked()
            self._ready.notify_all()
        return BatchedStream(job)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="deltamem-batcher", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                deadline = time.monotonic() + self.max_wait
                while len(self._waiting) < self.max_batch_size and self._announced > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                jobs = self._waiting[: self.max_batch_size]
                del self._waiting[: self.max_batch_size]
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        self.batch_sizes.append(len(jobs))
        handle = self.engine.handle

        def after_prefill() -> None:  # correction norms on the prefill only
            active = handle.active_run()
            if active is not None:
                active.track_corrections = False
                ratio = active.correction_ratio()
                for job in jobs:
                    job.ratio = ratio

        try:
            state = MemoryState.concat([job.state for job in jobs])
            generate_batch(  # each row's outcome goes to its stream through on_done
                self.engine.model,
                self.engine.tokenizer,
                [job.request for job in jobs],
                memory=handle.memory(state),
                on_first_forward=after_prefill,
                lock=self.engine.compute_lock,
            )
        except BaseException as err:  # the batch failed: rows not yet ended get the error
            for job in jobs:
                job.events.put(("error", err))
            if not isinstance(err, Exception):
                raise


_BATCHERS: dict[tuple[int, int, float], MicroBatcher] = {}
_LOCK = threading.Lock()


def get_batcher(
    engine: DeltaMemEngine,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> MicroBatcher:
    """The process's batcher for ``engine`` with these settings (created on first use), so
    every chat model on one engine batches with the others that share its settings."""
    key = (id(engine), max_batch_size, float(max_wait))
    with _LOCK:
        batcher = _BATCHERS.get(key)
        if batcher is None or batcher.engine is not engine:
            batcher = _BATCHERS[key] = MicroBatcher(engine, max_batch_size, max_wait)
        return batcher
