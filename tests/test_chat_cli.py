"""``deltamem chat`` (scripted sessions on the real embedded model) and the turns benchmark."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from langchain_core.messages import AIMessage, HumanMessage

from langchain_deltamem import chat_cli
from langchain_deltamem.chat_cli import ChatOptions, ChatSession, run_chat

MESSAGE = "My cat is called Juniper."


def _chat(path: Path, script: str, **options) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_chat(
        ChatOptions(memory=path, max_tokens=8, **options),
        stdin=io.StringIO(script),
        stdout=out,
        stderr=err,
    )
    return code, out.getvalue(), err.getvalue()


def _log(path: Path) -> list[dict[str, str]]:
    return [m for group in json.loads(path.read_bytes())["log"] for m in group]


# --- without the model ----------------------------------------------------------------------
def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "memory.json"
    chat_cli.save_memory_file(path, b"one")
    chat_cli.save_memory_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["memory.json"]


@pytest.mark.parametrize(
    "content", [b"\x00\xffnot json", b'{"format": "something-else"}', b"[1, 2]"]
)
def test_unreadable_file_is_refused_before_the_model_loads(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "memory.json"
    path.write_bytes(content)
    model = object()  # never touched: the file is checked before the model is used
    out, err = io.StringIO(), io.StringIO()
    code = run_chat(
        ChatOptions(memory=path), stdin=io.StringIO("hi\n"), stdout=out, stderr=err, model=model
    )
    assert code == 1
    assert str(path) in err.getvalue() and "left unchanged" in err.getvalue()
    assert "--reset" in err.getvalue()
    assert path.read_bytes() == content
    assert out.getvalue() == ""


def test_a_locked_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    with FileLock(str(path) + ".lock"):
        code, _, err = _chat(path, "hi\n")
    assert code == 1 and "in use" in err and not path.exists()


class _FakeMemory:
    def export(self, *, scope: str) -> bytes:
        return json.dumps(
            {"log": [[{"role": "user", "content": "old", "source": "user"}]]}
        ).encode()


class _FakeModel:
    """Streams "Hel", then fails with ``error`` (no memory is written)."""

    scope, window = "chat", 6

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.sent: list = []

    def get_memory(self) -> _FakeMemory:
        return _FakeMemory()

    def stream(self, messages):
        from langchain_core.messages import AIMessageChunk

        self.sent.append(messages)
        yield AIMessageChunk(content="Hel")
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ValueError("boom")])
def test_an_interrupted_or_failed_reply_is_not_saved(tmp_path: Path, error) -> None:
    path = tmp_path / "memory.json"
    model = _FakeModel(error)
    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(model, path, out=out, err=err)
    assert session.handle("//slash message") is True  # the session goes on
    assert model.sent == [[HumanMessage("old"), HumanMessage("/slash message")]]
    assert out.getvalue().startswith(f"{chat_cli.REPLY_PREFIX}Hel")
    if isinstance(error, KeyboardInterrupt):
        assert "[interrupted: not written to memory]" in out.getvalue()
    else:
        assert "error: the reply failed (ValueError: boom)" in err.getvalue()
    assert not path.exists()
    assert session.handle("/quit") is False


# --- on the embedded model ------------------------------------------------------------------
@pytest.mark.slow
def test_session_writes_reloads_forgets_and_resets(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    code, out, err = _chat(path, f"{MESSAGE}\n/stats\n/forget\n/help\n/quit\nnever sent\n")
    assert code == 0, err
    assert "Loading model..." in err
    assert "new file" in out
    assert out.count(chat_cli.REPLY_PREFIX) == 1  # nothing after /quit
    reply = out.split(chat_cli.REPLY_PREFIX, 1)[1].split("\n", 1)[0]
    assert reply.strip()
    # the default adapter: rank 16, one state per layer: 30 × 16² × 4 bytes
    assert "segments: 2   writes per state: [2]   state: 30,720 bytes" in out
    assert "layer state norms (30 layers)" in out
    assert "correction ratio ‖Δq‖/‖q‖ of the last read" in out
    assert f"[0] user: {MESSAGE}" in out and "[1] assistant: " in out
    assert "/forget N" in out and "/reset" in out  # the listing hint and /help
    saved = path.read_bytes()
    assert _log(path) == [
        {"role": "user", "content": MESSAGE, "source": "user"},
        {"role": "assistant", "content": reply, "source": "assistant"},
    ]

    # a second session loads the same bytes (and does not rewrite an unchanged file)
    mtime = path.stat().st_mtime_ns
    code, out, err = _chat(path, "/stats\n")  # EOF ends it
    assert code == 0, err
    assert "2 segments" in out and "segments: 2" in out
    assert path.read_bytes() == saved and path.stat().st_mtime_ns == mtime
    from langchain_deltamem.chat_model import ChatDeltaMem
    from langchain_deltamem.memory import DeltaMemory

    model = ChatDeltaMem(max_tokens=8, scope="chat", memory=DeltaMemory())
    session = ChatSession(model, path, out=io.StringIO(), err=io.StringIO())
    assert session.load() == 2
    assert session.memory.export(scope="chat") == saved
    assert session.recent_messages() == [HumanMessage(MESSAGE), AIMessage(reply)]

    # forget, then reset: each is saved at once
    code, out, err = _chat(path, "/forget 0\n/forget 5\n/forget x\n/forget\n/reset\n/stats\n")
    assert code == 0, err
    assert f"forgot user: {MESSAGE} (1 segment left)" in out
    assert "no segment 5: memory holds 1 segment" in out
    assert "/forget takes a segment index" in out
    assert "[0] assistant: " in out
    assert "memory reset: 0 segments" in out and "segments: 0" in out
    assert _log(path) == []


def _record(path: Path, state: bytes) -> bytes:
    body = json.loads(path.read_bytes())
    body["state"] = base64.b64encode(state).decode("ascii")
    return json.dumps(body).encode()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt-state", "foreign-model"])
def test_bad_record_is_refused_unchanged_and_reset_moves_it_aside(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "memory.json"
    code, _, err = _chat(path, "/reset\n")  # a valid (empty) record to damage
    assert code == 0, err
    if damage == "corrupt-state":
        bad = _record(path, b"not a safetensors file")
    else:
        from langchain_deltamem.engine import get_engine

        state = get_engine().handle.new_state()
        state.fingerprint = "backbone:0000/adapter:0000"  # written by some other model
        bad = _record(path, state.to_bytes())
    path.write_bytes(bad)
    code, out, err = _chat(path, "hello\n")
    assert code == 1
    assert str(path) in err and "left unchanged" in err
    assert chat_cli.REPLY_PREFIX not in out
    assert path.read_bytes() == bad

    code, out, err = _chat(path, "/quit\n", reset=True)
    assert code == 0, err
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("memory.json.bak-")]
    assert aside.read_bytes() == bad and f"moved {path} aside" in err


@pytest.mark.slow
def test_console_entry_with_piped_stdin(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    command = ["chat", "--memory", str(path), "--max-tokens", "8"]
    done = subprocess.run(
        [sys.executable, "-m", "langchain_deltamem.cli", *command],
        input="Hello there!\n/quit\n",
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Loading model..." in done.stderr
    assert chat_cli.REPLY_PREFIX in done.stdout
    assert [m["role"] for m in _log(path)] == ["user", "assistant"]


def test_progress_spins_on_a_terminal_and_prints_lines_otherwise() -> None:
    import time

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    with chat_cli.progress("Loading model...", tty):
        time.sleep(0.35)
    assert "\r| Loading model... 0." in tty.getvalue()
    assert "Loading model... done in " in tty.getvalue()
    plain = io.StringIO()
    with pytest.raises(RuntimeError), chat_cli.progress("Loading model...", plain):
        raise RuntimeError
    assert plain.getvalue().startswith("Loading model...\nLoading model... failed in ")
