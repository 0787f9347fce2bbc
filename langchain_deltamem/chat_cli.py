"""``deltamem chat``: an interactive terminal chat on the embedded default, with memory in a file.

The memory file holds one scope's `DeltaMemory.export` bytes. It is loaded at start and saved
after every turn (and after ``/forget`` and ``/reset``) atomically: a temporary file in the same
directory, fsynced, then ``os.replace``. A file that cannot be read (corrupt, not a memory
record, written by another backbone or adapter) is refused with an error naming it and is never
overwritten; ``--reset`` starts empty after renaming it aside. A lock next to the file
(``FILE.lock``) keeps two sessions from writing the same file.

The prompt of each turn holds the last ``--window`` messages of the memory's segment log and the
new message; everything older reaches the model through memory alone, also across sessions.

Commands: ``/stats``, ``/forget [N]``, ``/reset``, ``/help``, ``/quit`` (or EOF / Ctrl-D).

Everything reads and writes explicit streams (`run_chat`, `ChatSession`), so sessions can be
scripted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # the heavy imports (torch, transformers, LangChain) wait for a session
    from langchain_core.messages import BaseMessage

    from .memory import DeltaMemory

DESCRIPTION = "interactive chat on the embedded model, with δ-mem memory kept in a file"
DEFAULT_MEMORY_FILE = "~/.deltamem/chat-memory.json"
DEFAULT_SCOPE = "chat"
PROMPT = "you> "
REPLY_PREFIX = "assistant> "
FORGET_LIST_LIMIT = 20  # /forget lists at most this many (the newest) segments
HELP = """\
Commands:
  /stats      memory statistics (segments, writes per state, state size, layer norms,
              correction ratio of the last read)
  /forget     list the segments in memory with their indices (0 = oldest)
  /forget N   forget segment N (negative N counts from the newest: -1 = the last one)
  /reset      empty the memory (the file is overwritten)
  /help       this text
  /quit       leave (also Ctrl-D)
A line starting with // is sent as a message starting with /."""


class MemoryFileError(Exception):
    """The memory file cannot be used (unreadable, corrupt, foreign, or locked)."""


@dataclass
class ChatOptions:
    """What ``deltamem chat`` was asked for."""

    memory: Path = Path(DEFAULT_MEMORY_FILE)
    scope: str = DEFAULT_SCOPE
    window: int = 6
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    reset: bool = False


# --- the memory file ------------------------------------------------------------------------
def read_memory_file(path: Path) -> bytes | None:
    """The file's bytes (None if it does not exist), after a cheap check that they are a
    memory record; the full check (state bytes, owning model) is `DeltaMemory.import_`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise MemoryFileError(f"cannot read memory file {str(path)!r}: {err}") from err
    from .memory import SCOPE_FORMAT

    try:
        body = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MemoryFileError(
            f"memory file {str(path)!r} is corrupt (not valid JSON: {err})"
        ) from err
    if not isinstance(body, dict) or body.get("format") != SCOPE_FORMAT:
        raise MemoryFileError(f"memory file {str(path)!r} is not a δ-mem memory record")
    return data


def save_memory_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + replace);
    a crash leaves either the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``path.bak-<timestamp>`` (never replacing an existing file)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def _refusal(path: Path, reason: str) -> str:
    return (
        f"error: {reason}\n"
        f"The file was left unchanged. Name another file with --memory, move it aside "
        f"yourself, or pass --reset to start with an empty memory (the file is then renamed "
        f"to {path.name}.bak-<time>)."
    )


# --- progress -------------------------------------------------------------------------------
@contextlib.contextmanager
def progress(label: str, stream: TextIO) -> Iterator[None]:
    """A spinner with elapsed seconds on a terminal; one line before and after otherwise."""
    started = time.perf_counter()
    live = _isatty(stream)
    done = threading.Event()

    def spin() -> None:
        frames = "|/-\\"
        i = 0
        while not done.wait(0.1):
            stream.write(f"\r{frames[i % 4]} {label} {time.perf_counter() - started:.1f} s")
            stream.flush()
            i += 1

    spinner = threading.Thread(target=spin, name="deltamem-spinner", daemon=True)
    if live:
        spinner.start()
    else:
        stream.write(f"{label}\n")
        stream.flush()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        if live:
            spinner.join()
            stream.write("\r\033[K")
        elapsed = time.perf_counter() - started
        stream.write(f"{label} {'done' if ok else 'failed'} in {elapsed:.1f} s\n")
        stream.flush()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bars of transformers under our own spinner."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- the session ----------------------------------------------------------------------------
class ChatSession:
    """One chat on a `ChatDeltaMem` whose memory scope is kept in ``memory_file``.

    Args:
        model: the chat model (its ``scope`` is the scope used; its memory must be its own
            `DeltaMemory`, not shared with other users of the scope).
        memory_file: where the scope's export bytes live.
        out: replies and command output.
        err: progress and errors.
    """

    def __init__(self, model: Any, memory_file: Path, *, out: TextIO, err: TextIO) -> None:
        self.model = model
        self.memory_file = Path(memory_file)
        self.out = out
        self.err = err
        from .memory import DeltaMemory

        self.scope: str = DeltaMemory.scope_of(None, model.scope)  # the scope the model uses
        self._saved: bytes | None = None

    @property
    def memory(self) -> DeltaMemory:
        return self.model.get_memory()

    # --- file --------------------------------------------------------------------------
    def load(self, data: bytes | None = None) -> int:
        """Import the memory file (or ``data`` already read from it); returns the number of
        segments. Raises `MemoryFileError` (scope and file untouched) if it cannot be used."""
        if data is None:
            data = read_memory_file(self.memory_file)
        if data is None:
            self._saved = None
            return 0
        from .memory import MemoryRecordError

        try:
            self.memory.import_(data, scope=self.scope)
        except MemoryRecordError as err:
            raise MemoryFileError(f"memory file {str(self.memory_file)!r}: {err}") from err
        self._saved = data
        return len(self.segments())

    def save(self) -> bool:
        """Write the scope to the file if it changed; False (with a warning) if that failed."""
        data = self.memory.export(scope=self.scope)
        if data == self._saved:
            return True
        try:
            save_memory_file(self.memory_file, data)
        except OSError as err:
            self.err.write(
                f"warning: could not save memory to {str(self.memory_file)!r}: {err} "
                "(the memory is kept in this session)\n"
            )
            return False
        self._saved = data
        return True

    # --- memory views ------------------------------------------------------------------
    def segments(self) -> list[dict[str, str]]:
        """The scope's written segments (role, content, source), oldest first."""
        body = json.loads(self.memory.export(scope=self.scope).decode())
        return [segment for group in body["log"] for segment in group]

    def recent_messages(self) -> list[BaseMessage]:
        """The last ``window`` dialogue messages in memory, as the prompt's history."""
        from langchain_core.messages import AIMessage, HumanMessage

        messages: list[BaseMessage] = []
        for segment in self.segments()[-self.model.window :]:
            if segment["role"] == "user":
                messages.append(HumanMessage(segment["content"]))
            elif segment["role"] == "assistant":
                messages.append(AIMessage(segment["content"]))
        return messages

    # --- turns and commands ------------------------------------------------------------
    def send(self, text: str) -> str | None:
        """Stream the reply to ``text``; the turn is written to memory and saved. Returns the
        reply, or None if it was interrupted (then nothing is written)."""
        from langchain_core.messages import HumanMessage

        messages = [*self.recent_messages(), HumanMessage(text)]
        self.out.write(REPLY_PREFIX)
        self.out.flush()
        pieces: list[str] = []
        stream = self.model.stream(messages)
        try:
            for chunk in stream:
                piece = chunk.content if isinstance(chunk.content, str) else ""
                if piece:
                    pieces.append(piece)
                    self.out.write(piece)
                    self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            self.out.write(" [interrupted: not written to memory]\n")
            self.out.flush()
            return None
        except Exception as err:  # a failed turn ends the turn, not the session
            stream.close()
            self.out.write("\n")
            self.out.flush()
            self.err.write(f"error: the reply failed ({type(err).__name__}: {err}); not written\n")
            self.err.flush()
            return None
        self.out.write("\n")
        self.out.flush()
        self.save()
        return "".join(pieces)

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the session should end."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("//"):
            self.send(line[1:])
            return True
        if not line.startswith("/"):
            self.send(line)
            return True
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.out.write(HELP + "\n")
        elif name == "/stats":
            self.out.write(self.stats_text() + "\n")
        elif name == "/forget":
            self._forget(arg)
        elif name == "/reset":
            self.memory.reset(scope=self.scope)
            self.save()
            self.out.write("memory reset: 0 segments\n")
        else:
            self.out.write(f"unknown command {name}; /help lists the commands\n")
        self.out.flush()
        return True

    def stats_text(self) -> str:
        stats = self.memory.stats(scope=self.scope)
        lines = [
            f"memory file: {self.memory_file} (scope {stats['scope']!r})",
            f"segments: {stats['segments']}   writes per state: {stats['writes_per_state']}   "
            f"state: {stats['state_bytes']:,} bytes",
        ]
        norms = [(row["layer"], sum(n * n for n in row["norm"]) ** 0.5) for row in stats["layers"]]
        if norms:
            low = min(norms, key=lambda x: x[1])
            high = max(norms, key=lambda x: x[1])
            median = statistics.median(n for _, n in norms)
            line = (
                f"layer state norms ({len(norms)} layers): min {low[1]:.4g} (layer {low[0]}), "
                f"median {median:.4g}, max {high[1]:.4g} (layer {high[0]})"
            )
            spark = _sparkline([n for _, n in norms], self.out)
            lines.append(line + (f"\n  {spark}" if spark else ""))
        ratio = stats["correction_ratio"]
        if not ratio:
            lines.append("correction ratio of the last read: none yet (no reply in this session)")
        else:
            for head in sorted({h for heads in ratio.values() for h in heads}):
                values = [(layer, heads[head]) for layer, heads in ratio.items() if head in heads]
                mean = statistics.fmean(v for _, v in values)
                top = max(values, key=lambda x: x[1])
                lines.append(
                    f"correction ratio ‖Δ{head}‖/‖{head}‖ of the last read: mean {mean:.3g}, "
                    f"max {top[1]:.3g} (layer {top[0]})"
                )
        return "\n".join(lines)

    def _forget(self, arg: str) -> None:
        segments = self.segments()
        if not arg:
            if not segments:
                self.out.write("memory is empty\n")
                return
            shown = list(enumerate(segments))[-FORGET_LIST_LIMIT:]
            if len(shown) < len(segments):
                self.out.write(f"(the last {len(shown)} of {len(segments)} segments; 0 = oldest)\n")
            width = len(str(len(segments) - 1))
            for index, segment in shown:
                text = " ".join(segment["content"].split())
                if len(text) > 70:
                    text = text[:67] + "..."
                self.out.write(f"[{index:>{width}}] {segment['role']}: {text}\n")
            self.out.write("/forget N forgets segment N\n")
            return
        try:
            index = int(arg)
        except ValueError:
            self.out.write(f"/forget takes a segment index, got {arg!r}\n")
            return
        if not -len(segments) <= index < len(segments):
            self.out.write(f"no segment {index}: memory holds {_count(len(segments))}\n")
            return
        with progress(f"Forgetting (replaying {_count(len(segments) - 1)})...", self.err):
            forgotten = self.memory.forget(index, scope=self.scope)
        self.save()
        text = " ".join(forgotten["content"].split())
        self.out.write(
            f"forgot {forgotten['role']}: {text[:70]}{'...' if len(text) > 70 else ''} "
            f"({_count(len(segments) - 1)} left)\n"
        )

    def loop(self, stdin: TextIO) -> None:
        """Read lines until /quit or EOF (Ctrl-C at the prompt also ends the session)."""
        interactive = stdin is sys.stdin and _isatty(stdin) and _isatty(self.out)
        while True:
            try:
                if interactive:
                    line = input(PROMPT)
                else:
                    line = stdin.readline()
                    if not line:
                        break
            except (EOFError, KeyboardInterrupt):
                self.out.write("\n")
                break
            if not self.handle(line):
                break
        self.out.flush()


def _count(n: int) -> str:
    return f"{n} segment{'' if n == 1 else 's'}"


def _sparkline(values: list[float], stream: TextIO) -> str:
    """One block character per value (empty if the stream may not take them)."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    if "utf" not in encoding or not values:
        return ""
    blocks = "▁▂▃▄▅▆▇█"
    top = max(values)
    if top <= 0:
        return blocks[0] * len(values)
    return "".join(blocks[min(7, int(v / top * 7.999))] for v in values)


# --- the command ----------------------------------------------------------------------------
def run_chat(
    options: ChatOptions,
    *,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    model: Any = None,
) -> int:
    """Run one chat session; returns the exit status (0, or 1 if the memory file is refused).

    Args:
        model: a `ChatDeltaMem` to use instead of building one from ``options`` (its memory
            should be its own `DeltaMemory`).
    """
    from filelock import FileLock, Timeout

    path = Path(options.memory).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        stderr.write(f"error: cannot create the directory of {str(path)!r}: {err}\n")
        return 1
    lock = FileLock(str(path) + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        stderr.write(
            f"error: memory file {str(path)!r} is in use by another deltamem chat "
            f"(lock {path.name}.lock)\n"
        )
        return 1
    except OSError as err:
        stderr.write(f"error: cannot lock memory file {str(path)!r}: {err}\n")
        return 1
    try:
        return _run_locked(options, path, stdin, stdout, stderr, model)
    finally:
        lock.release()


def _run_locked(
    options: ChatOptions,
    path: Path,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    model: Any,
) -> int:
    data: bytes | None = None
    if options.reset:
        if path.exists():
            stderr.write(f"--reset: moved {path} aside to {move_aside(path)}\n")
    else:
        try:
            data = read_memory_file(path)  # fail before the model loads
        except MemoryFileError as err:
            stderr.write(_refusal(path, str(err)) + "\n")
            return 1
    if model is None:
        from .chat_model import ChatDeltaMem

        model = ChatDeltaMem(
            window=options.window,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            seed=options.seed,
            scope=options.scope,
        )
    with progress("Loading model...", stderr), _quiet_transformers():
        engine = model.engine
        if model.memory is None:
            from .memory import DeltaMemory

            model.memory = DeltaMemory(engine)
    session = ChatSession(model, path, out=stdout, err=stderr)
    try:
        count = session.load(data) if data is not None else 0
    except MemoryFileError as err:
        stderr.write(_refusal(path, str(err)) + "\n")
        return 1
    state = _count(count) if data is not None else "new file"
    stdout.write(
        f"δ-mem chat on {engine.backbone} (adapter {engine.adapter}); memory {path} "
        f"(scope {session.scope!r}, {state}). /help for commands, /quit to leave.\n"
    )
    stdout.flush()
    session.loop(stdin)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``chat`` options (shared by ``deltamem chat`` and this module's `main`)."""
    parser.add_argument(
        "--memory",
        default=DEFAULT_MEMORY_FILE,
        metavar="FILE",
        help="memory file, loaded at start and saved after each turn "
        f"(default {DEFAULT_MEMORY_FILE})",
    )
    parser.add_argument("--scope", default=DEFAULT_SCOPE, help="memory scope name")
    parser.add_argument(
        "--window", type=_positive, default=6, help="messages kept in the prompt (default 6)"
    )
    parser.add_argument(
        "--max-tokens", type=_positive, default=256, help="most tokens per reply (default 256)"
    )
    parser.add_argument(
        "--temperature", type=_non_negative, default=0.0, help="0 = greedy (default)"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument(
        "--reset",
        action="store_true",
        help="start with an empty memory; an existing memory file is renamed to FILE.bak-<time>",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> ChatOptions:
    return ChatOptions(
        memory=Path(args.memory),
        scope=args.scope,
        window=args.window,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        reset=args.reset,
    )


def run_from_args(args: argparse.Namespace) -> int:
    return run_chat(options_from_args(args), stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deltamem chat", description=DESCRIPTION)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
