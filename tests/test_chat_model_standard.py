"""LangChain's standard chat-model test suites, run against `ChatDeltaMem`.

The unit suite only constructs models (nothing loads). The integration suite runs the real
embedded SmolLM2-135M-Instruct on CPU with a short ``max_tokens`` and greedy decoding; every
model the suite builds gets its own memory scope, so what one test writes never steers another.

The backbone is text only: the multimodal tests are replaced by ``xfail`` tests that send a
small local payload of that kind (no download) and expect the clear ``ValueError`` the model
raises; the standard versions would fetch their media from the internet first.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumpd, load
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

# langchain-tests is a test-only dependency; without it this module is skipped, not broken.
pytest.importorskip("langchain_tests", reason="langchain-tests is not installed")
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.memory import DeltaMemory

_SCOPES = itertools.count()
TEXT_ONLY = "text-only backbone: non-text content blocks are refused with ValueError"
OTHER_BACKBONE = "HuggingFaceTB/SmolLM2-360M-Instruct"
NO_OVERRIDE = (
    "no per-call model switch: the backbone's weights are loaded once per ChatDeltaMem; a "
    "model= keyword is refused with ValueError (build another ChatDeltaMem(backbone=...))"
)
NO_VCR = (
    "no HTTP to record: VCR cassettes replay a provider's calls and a local model makes none "
    "(its speed is measured by python -m langchain_deltamem.bench)"
)
NOT_ON_ALLOWLIST = (
    "langchain-core's load() revives only the classes on its own allowlist "
    "(langchain_core.load.mapping), which names no package outside LangChain's; dumpd matches "
    "the snapshot, and load(..., allowed_objects=[ChatDeltaMem]) revives the model "
    "(test_serialised_model_loads_back)"
)
# A 1x1 PNG, a minimal PDF and a short WAV header: enough to build content blocks offline.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5f0000000049454e44ae426082"
    )
).decode()
PDF = base64.b64encode(b"%PDF-1.1\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n").decode()
WAV = base64.b64encode(b"RIFF$\x00\x00\x00WAVEfmt " + bytes(28)).decode()


def _scope(kind: str) -> str:
    return f"standard-{kind}-{next(_SCOPES)}"  # a fresh memory for every model built


class _DeltaMemCapabilities:
    """What both suites must know about ChatDeltaMem."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatDeltaMem

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True


class TestChatDeltaMemUnit(_DeltaMemCapabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        # max_tokens and temperature come from the suite's standard params (some tests pass
        # them again next to these)
        return {"scope": "standard-unit"}  # nothing is written: one fixed scope

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # a server picks its backbone and adapter from the environment
        env = {"DELTAMEM_BACKBONE": "HuggingFaceTB/SmolLM2-360M-Instruct", "DELTAMEM_ADAPTER": "x"}
        return env, {"scope": "env"}, {"backbone": env["DELTAMEM_BACKBONE"], "adapter": "x"}

    @property
    def supports_model_override(self) -> bool:
        return False  # one process-wide engine per backbone; no per-call backbone switch

    @pytest.mark.xfail(reason=NOT_ON_ALLOWLIST, raises=ValueError, strict=True)
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)  # the snapshot of dumpd passes; load() refuses


def test_serialised_model_loads_back() -> None:
    """``dumpd`` keeps every constructor argument but the memory; ``load`` with the class
    allowed revives an equal model (no weights load: construction is lazy)."""
    model = ChatDeltaMem(
        adapter="fresh-msw", max_tokens=7, window=3, default_scope="x", memory=DeltaMemory()
    )
    data = dumpd(model)
    assert "memory" not in data["kwargs"]
    assert data["kwargs"]["adapter"] == "fresh-msw"
    back = load(data, valid_namespaces=["langchain_deltamem"], allowed_objects=[ChatDeltaMem])
    assert isinstance(back, ChatDeltaMem)
    assert back.model_dump(exclude={"memory"}) == model.model_dump(exclude={"memory"})
    assert back.memory is None  # a store is not data: pass it again


@pytest.mark.slow
@pytest.mark.anyio  # the async standard tests run on asyncio (anyio's default backend)
class TestChatDeltaMemIntegration(_DeltaMemCapabilities, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 32, "temperature": 0, "scope": _scope("integration")}

    @property
    def supports_json_mode(self) -> bool:
        return True  # the reply decoded under the JSON grammar (the schema's, if given)

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True  # text, tool_use and thinking blocks (no image: image inputs are off)

    @property
    def supports_model_override(self) -> bool:
        return False

    # --- multimodal: text-only backbone ---------------------------------------------------
    # The media flags stay False (the standard tests would download their media); these
    # replacements check, offline, that each kind of block is refused cleanly.
    @pytest.mark.xfail(reason=TEXT_ONLY, raises=ValueError, strict=True)
    def test_image_inputs(self, model: BaseChatModel) -> None:
        image = {"type": "image", "base64": PNG, "mime_type": "image/png"}
        model.invoke([HumanMessage([{"type": "text", "text": "Describe it."}, image])])

    @pytest.mark.xfail(reason=TEXT_ONLY, raises=ValueError, strict=True)
    def test_pdf_inputs(self, model: BaseChatModel) -> None:
        pdf = {"type": "file", "base64": PDF, "mime_type": "application/pdf"}
        model.invoke([HumanMessage([{"type": "text", "text": "Summarise it."}, pdf])])

    @pytest.mark.xfail(reason=TEXT_ONLY, raises=ValueError, strict=True)
    def test_audio_inputs(self, model: BaseChatModel) -> None:
        audio = {"type": "audio", "base64": WAV, "mime_type": "audio/wav"}
        model.invoke([HumanMessage([{"type": "text", "text": "Transcribe it."}, audio])])

    @pytest.mark.xfail(reason=TEXT_ONLY, raises=ValueError, strict=True)
    def test_image_tool_message(self, model: BaseChatModel) -> None:
        self._invoke_with_tool_result(
            model, {"type": "image", "base64": PNG, "mime_type": "image/png"}
        )

    @pytest.mark.xfail(reason=TEXT_ONLY, raises=ValueError, strict=True)
    def test_pdf_tool_message(self, model: BaseChatModel) -> None:
        self._invoke_with_tool_result(
            model, {"type": "file", "base64": PDF, "mime_type": "application/pdf"}
        )

    @staticmethod
    def _invoke_with_tool_result(model: BaseChatModel, block: dict[str, Any]) -> None:
        def fetch_document() -> str:
            """Return a document."""
            return ""

        call = {"type": "tool_call", "id": "1", "name": "fetch_document", "args": {}}
        messages = [
            HumanMessage("Fetch the document and describe it."),
            AIMessage([], tool_calls=[call]),
            ToolMessage([block], tool_call_id="1", name="fetch_document"),
        ]
        model.bind_tools([fetch_document]).invoke(messages)

    # --- what a local model cannot do ----------------------------------------------------
    @pytest.mark.xfail(reason=NO_OVERRIDE, raises=ValueError, strict=True)
    def test_invoke_with_model_override(self, model: BaseChatModel) -> None:
        model.invoke("Hello", model=OTHER_BACKBONE)

    @pytest.mark.xfail(reason=NO_OVERRIDE, raises=ValueError, strict=True)
    async def test_ainvoke_with_model_override(self, model: BaseChatModel) -> None:
        await model.ainvoke("Hello", model=OTHER_BACKBONE)

    @pytest.mark.xfail(reason=NO_OVERRIDE, raises=ValueError, strict=True)
    def test_stream_with_model_override(self, model: BaseChatModel) -> None:
        list(model.stream("Hello", model=OTHER_BACKBONE))

    @pytest.mark.xfail(reason=NO_OVERRIDE, raises=ValueError, strict=True)
    async def test_astream_with_model_override(self, model: BaseChatModel) -> None:
        [chunk async for chunk in model.astream("Hello", model=OTHER_BACKBONE)]

    @pytest.mark.xfail(reason=NO_VCR, strict=True)
    def test_stream_time(self) -> None:
        pytest.xfail(NO_VCR)  # nothing to replay: the standard test would only skip

    # --- the 135M model's own choices -----------------------------------------------------
    @pytest.mark.xfail(
        reason="tool_choice='auto': the 135M backbone answers the weather question in prose "
        "instead of deciding to call the tool (forced calls work: test_tool_calling, "
        "test_tool_choice)",
        strict=False,
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
