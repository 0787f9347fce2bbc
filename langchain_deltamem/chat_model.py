"""`ChatDeltaMem`: a LangChain chat model hosting a δ-mem-steered local backbone.

Input → output flow of one turn (``invoke``/``stream``/``batch`` and their async forms):

1. The run's memory scope is resolved: ``scope`` if set, else the run config's ``thread_id``,
   else ``default_scope`` if the model was built with one; else the call is refused
   (`MissingScopeError`): no call silently shares one memory with every other.
2. The prompt holds the system message and only the last ``window`` messages (the turn
   policy); older messages reach the model through memory alone, so a turn costs the same at
   message 500 as at message 5. A prompt that still overflows the context is trimmed from the
   oldest message, with a warning.
3. The reply is generated token by token reading the scope's memory with writes off (the
   state is bit-for-bit unchanged by generation). Replies requested together (threads, asyncio
   tasks) on one loaded model are decoded as one batch (`batcher.MicroBatcher`), each row
   reading its own conversation's memory. Bound tools are offered through the
   backbone's chat template when it supports them (Qwen3), else through a documented prompt
   format (`tool_calling`); a forced tool call is decoded under a JSON-schema constraint.
4. After the reply, the turn's new messages (those not yet in the scope's memory) and the reply
   are queued for writing (`DeltaMemory.write_later`: logged before the reply is returned,
   in the store if the memory has one) and written in the background, one segment per
   message, by the same routine the trainer uses; the scope's next turn waits for them.

Weights load on first use and are shared by every instance in the process that names the same
backbone, adapter and dtype.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import warnings
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableMap,
    RunnablePassthrough,
    ensure_config,
)
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .backbones import EMBEDDED_BACKBONE
from .batcher import Announcement, get_batcher
from .engine import DeltaMemEngine, get_engine
from .generation import GenerationResult, GenerationSettings
from .json_constraint import JsonSchemaConstraint
from .memory import DeltaMemory, callback_progress, message_to_dict
from .prompts import fit_to_context
from .tool_calling import (
    normalize_tool_choice,
    parse_tool_calls,
    split_tool_calls,
    to_tool_schemas,
    tool_names,
)

_SHARED_MEMORIES: dict[tuple[str, str, str], DeltaMemory] = {}
_SHARED_LOCK = threading.Lock()


class ChatDeltaMem(BaseChatModel):
    """Chat model with δ-mem long-term memory on a local Hugging Face backbone.

    ``ChatDeltaMem()`` runs offline on the embedded SmolLM2-135M-Instruct with the project's
    default adapter. Memory is kept per ``thread_id`` (see `DeltaMemory`)::

        model = ChatDeltaMem()
        config = {"configurable": {"thread_id": "alice"}}
        model.invoke("My cat is called Juniper.", config=config)
        model.invoke("What is my cat called?", config=config)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backbone: str | None = Field(default_factory=from_env("DELTAMEM_BACKBONE", default=None))
    """Hugging Face id or local directory; None = the embedded SmolLM2-135M-Instruct.
    Default: the ``DELTAMEM_BACKBONE`` environment variable, if set."""
    adapter: str | None = Field(default_factory=from_env("DELTAMEM_ADAPTER", default=None))
    """Adapter directory (own or reference format), a packaged trained adapter of the embedded
    backbone (``smollm2-ssw``; ``smollm2-msw`` gives tool results states of their own;
    ``smollm2-tsw`` writes every content token and holds the most content so far,
    ``smollm2-msw-tsw`` is its four-state form), or
    ``fresh``/``fresh-tsw``/``fresh-msw``; None = ``smollm2-ssw`` on the embedded backbone, a
    fresh adapter on any other. Default: ``DELTAMEM_ADAPTER``, if set."""
    dtype: str = "float32"
    """Backbone dtype: float32, bfloat16 or float16."""
    max_tokens: int = Field(256, ge=1)
    """Most tokens to generate per reply."""
    temperature: float = Field(0.0, ge=0.0)
    """0 = greedy decoding."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int | None = None
    """Sampling seed: the same seed and input give the same reply."""
    stop: list[str] | None = None
    """Strings that end the reply (not included in it)."""
    window: int = Field(6, ge=1)
    """Messages (besides the system message) kept in the prompt; the rest lives in memory."""
    scope: str | None = None
    """Memory scope for every call; None = the run config's thread_id."""
    default_scope: str | None = None
    """Scope of a call without ``scope`` or thread_id; None refuses such calls."""
    system_prompt: str | None = None
    """System message used when the input has none (None = the chat template's default)."""
    write_memory: bool = True
    """Write each turn into memory after the reply (in the background; see `DeltaMemory`)."""
    max_batch_size: int = Field(8, ge=1)
    """Most concurrent replies decoded together in one batch (1 = each alone)."""
    batch_wait: float = Field(0.05, ge=0.0, le=10.0)
    """Seconds a batch waits for concurrent replies already on their way (a reply with none
    alongside starts at once)."""
    memory: DeltaMemory | None = Field(default=None, exclude=True)
    """The memory to use; None = one shared in-process memory per backbone/adapter/dtype.
    Not part of the serialised model (a store is not data): pass it again after loading."""

    _tools_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # --- identity -----------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "deltamem"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """The constructor arguments (all but ``memory``) serialise with ``dumpd``."""
        return True

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone or EMBEDDED_BACKBONE,
            "adapter": self.adapter or "default",
            "dtype": self.dtype,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "deltamem"
        if "model" not in kwargs:  # a per-call model name, if given, is what was asked for
            params["ls_model_name"] = self.backbone or EMBEDDED_BACKBONE
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        return params

    @property
    def engine(self) -> DeltaMemEngine:
        """The shared backbone + adapter (loaded on first use)."""
        return get_engine(self.backbone, self.adapter, self.dtype)

    def get_memory(self) -> DeltaMemory:
        """The `DeltaMemory` this model reads and writes."""
        if self.memory is not None:
            return self.memory
        engine = self.engine
        key = (engine.backbone, engine.adapter, self.dtype)
        with _SHARED_LOCK:
            if key not in _SHARED_MEMORIES:
                _SHARED_MEMORIES[key] = DeltaMemory(engine)
            return _SHARED_MEMORIES[key]

    # --- scope plumbing ------------------------------------------------------------------
    # The scope is resolved from the call's config here and travels as the ``memory_scope``
    # keyword, because ``_stream`` never sees the config (and a context variable set around
    # a generator does not survive being iterated from another context, as chains do).
    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        return super().invoke(input, config, **self._with_scope(config, kwargs))

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, **self._with_scope(config, kwargs))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        return await super().ainvoke(input, config, **self._with_scope(config, kwargs))

    def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, **self._with_scope(config, kwargs))

    def _with_scope(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus ``memory_scope``: a per-call scope wins, then ``self.scope``, then
        the run's ``thread_id`` (from ``config`` or the surrounding runnable), then
        ``default_scope``."""
        explicit = kwargs.get("memory_scope")
        scope = explicit if explicit is not None else self.scope
        name = DeltaMemory.scope_of(ensure_config(config), scope, self.default_scope)
        return {**kwargs, "memory_scope": name}

    def _scope_for_call(self, kwargs: dict[str, Any]) -> str:
        """The scope of a call that did not come through invoke/stream (e.g. ``generate``)."""
        explicit = kwargs.get("memory_scope")
        scope = explicit if explicit is not None else self.scope
        return DeltaMemory.scope_of(ensure_config(), scope, self.default_scope)

    # --- tools --------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools (LangChain tools, pydantic models, functions or OpenAI schemas).

        ``tool_choice``: "auto" (default), "none", "any"/"required"/True (some call), or a
        tool name / ``{"type": "function", "function": {"name": ...}}`` (that call); forced
        calls are decoded so their arguments are valid JSON for the tool's schema.
        """
        schemas = to_tool_schemas(tools)
        normalize_tool_choice(tool_choice, tool_names(schemas))  # fail early on a bad choice
        return super().bind(tools=schemas, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Replies parsed into ``schema``.

        ``function_calling`` (default): a forced tool call. ``json_schema``: the reply is a bare
        JSON document decoded under the grammar of ``schema``. ``json_mode``: the same with
        ``schema`` if given, else any JSON object (the grammar guarantees it parses).
        """
        if method == "function_calling":
            if schema is None:
                raise ValueError("method='function_calling' needs a schema")
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_mode", "json_schema"):
            raise ValueError(
                f"method must be 'function_calling', 'json_mode' or 'json_schema', got {method!r}"
            )
        kwargs.pop("strict", None)  # the grammar is always strict
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        if schema is None and method == "json_schema":
            raise ValueError("method='json_schema' needs a schema")
        json_schema = convert_to_json_schema(schema) if schema is not None else {"type": "object"}
        model = self.bind(
            response_format=json_schema,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": json_schema},
        )
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        if not include_raw:
            return model | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=model) | parsed.with_fallbacks(
            [failed], exception_key="parsing_error"
        )

    # --- generation ---------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        final: ChatGenerationChunk | None = None
        for chunk in self._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            final = chunk if final is None else final + chunk
        return _chat_result(final)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """One reply: prepare the call, decode it, then the final chunk and the turn's write;
        the batcher is told first, so a batch that starts meanwhile waits for this reply."""
        if not messages:
            raise ValueError("ChatDeltaMem needs at least one message")
        if kwargs.get("model") is not None:  # one loaded engine per model: no per-call switch
            raise ValueError(
                f"ChatDeltaMem cannot switch to model={kwargs['model']!r} per call (its weights "
                "are loaded once); build another ChatDeltaMem(backbone=...) for it"
            )
        engine = self.engine
        # tell the batcher a reply is coming (a batch starting meanwhile waits for it)
        announcement = get_batcher(engine, self.max_batch_size, self.batch_wait).announce()
        try:
            call = self._prepare_call(messages, stop, kwargs)
            result = yield from self._decode(call, run_manager, announcement)
            final, reply = self._final_chunk(call, result)
            if run_manager is not None and call.buffer_for_tools and reply.content:
                run_manager.on_llm_new_token(str(reply.content), chunk=final)
            if self.write_memory:  # logged (durably, with a store) before the reply is handed out
                self._write_turn(call, reply)
            yield final
        finally:
            announcement.release()

    def _prepare_call(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> _Call:
        """Everything the reply needs, checked before any decoding work (bad input fails early)."""
        # fail before any work on unknown roles, non-text blocks or oversized messages
        converted = [message_to_dict(message) for message in messages]
        engine = self.engine
        memory = self.get_memory()
        memory.check_message_sizes(converted)
        scope = self._scope_for_call(kwargs)
        tools = kwargs.get("tools") or []
        mode, forced = normalize_tool_choice(kwargs.get("tool_choice"), tool_names(tools))
        settings = GenerationSettings(
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed),
            stop=tuple(stop if stop is not None else (self.stop or ())),
        )
        prompt_messages = self._prompt_messages(messages)
        input_ids = self._encode(engine, prompt_messages, tools, kwargs.get("tool_choice"))
        settings, constraint = _constraint(
            engine.tokenizer, settings, tools, mode, forced, kwargs.get("response_format")
        )
        return _Call(
            messages=messages,
            engine=engine,
            memory=memory,
            scope=scope,
            tools=tools,
            input_ids=input_ids,
            settings=settings,
            constraint=constraint,
            buffer_for_tools=bool(tools) and mode != "none",
        )

    def _decode(
        self,
        call: _Call,
        run_manager: CallbackManagerForLLMRun | None,
        announcement: Announcement,
    ) -> Generator[ChatGenerationChunk, None, GenerationResult]:
        """Stream the reply's text (held back when it may be a tool call) reading the scope's
        memory, whose pending writes are applied first; returns the whole generation."""
        batcher = get_batcher(call.engine, self.max_batch_size, self.batch_wait)
        progress = callback_progress(run_manager.handlers, call.scope) if run_manager else None
        # the scope's pending writes are applied first (their progress goes to the callbacks)
        with call.memory.held(scope=call.scope, progress=progress) as state:
            stream = batcher.submit(
                call.input_ids, call.settings, state, call.constraint, announcement
            )
            for piece in stream:
                if call.buffer_for_tools or not piece.text:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece.text))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece.text, chunk=chunk)
                yield chunk
        result = stream.result
        if result is None:  # the batcher always ends a stream with a result or an error
            raise RuntimeError("the reply stream ended without a result")
        call.memory.record_read(stream.correction_ratio, scope=call.scope)
        return result

    def _final_chunk(
        self, call: _Call, result: GenerationResult
    ) -> tuple[ChatGenerationChunk, AIMessage]:
        """The stream's last chunk (tool calls, usage, finish reason) and the whole reply as
        one message, the form in which it is written to memory."""
        text, calls = (result.text, [])
        if call.buffer_for_tools:
            text, calls = parse_tool_calls(result.text, tool_names(call.tools))
        valid, invalid = split_tool_calls(calls)
        usage = {
            "input_tokens": result.prompt_tokens,
            "output_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        finish = "tool_calls" if valid else result.finish_reason
        last = AIMessageChunk(
            content=text if call.buffer_for_tools else "",
            tool_call_chunks=[
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                for i, c in enumerate(valid)
            ],
            invalid_tool_calls=invalid,
            usage_metadata=usage,
            response_metadata={
                "model_name": call.engine.backbone,
                "finish_reason": finish,
                "memory_scope": call.scope,
            },
            chunk_position="last",
        )
        final = ChatGenerationChunk(message=last, generation_info={"finish_reason": finish})
        reply = AIMessage(content=text if call.buffer_for_tools else result.text, tool_calls=valid)
        return final, reply

    def _write_turn(self, call: _Call, reply: AIMessage) -> None:
        """Queue the turn's messages not yet in memory and the reply for the background writer;
        the scope's next turn waits for them."""
        turn = [m for m in call.messages if not isinstance(m, SystemMessage)]
        call.memory.write_later([*turn, reply], scope=call.scope, skip_written=True)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Runs the whole sync stream in one worker thread (the event loop never blocks, and
        the scope lock is taken and released by the same thread)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        kwargs = {**kwargs, "memory_scope": self._scope_for_call(kwargs)}  # resolved here

        def produce() -> None:
            try:
                for chunk in self._stream(messages, stop=stop, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
            except BaseException as err:  # re-raised in the event loop
                loop.call_soon_threadsafe(queue.put_nowait, ("error", err))

        worker = threading.Thread(target=produce, name="deltamem-astream", daemon=True)
        worker.start()
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            if kind == "done":
                break
            if run_manager is not None and value.message.content:
                await run_manager.on_llm_new_token(str(value.message.content), chunk=value)
            yield value

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        final: ChatGenerationChunk | None = None
        async for chunk in self._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
            final = chunk if final is None else final + chunk
        return _chat_result(final)

    # --- prompt -------------------------------------------------------------------------
    def _prompt_messages(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """System message + the last ``window`` messages (never starting on a tool result
        whose call was cut off)."""
        system = [m for m in messages if isinstance(m, SystemMessage)]
        rest = [m for m in messages if not isinstance(m, SystemMessage)]
        start = max(0, len(rest) - self.window)
        while start > 0 and isinstance(rest[start], ToolMessage):
            start -= 1
        if not system and self.system_prompt:
            system = [SystemMessage(self.system_prompt)]
        return system[:1] + rest[start:]

    def _encode(
        self,
        engine: DeltaMemEngine,
        messages: list[BaseMessage],
        tools: list[dict[str, Any]],
        tool_choice: Any,
    ) -> Any:
        """Token ids of the prompt, trimmed from the oldest message to fit the context."""
        limit = engine.context_length - self.max_tokens - 1
        _, ids = fit_to_context(engine.tokenizer, messages, limit, tools or None, tool_choice)
        if ids.shape[1] <= limit:
            return ids
        warnings.warn(
            f"the prompt ({ids.shape[1]} tokens) exceeds the context budget ({limit}); "
            "it is cut to its last tokens (the whole message is still written to memory)",
            stacklevel=4,
        )
        return ids[:, -limit:]


def _chat_result(final: ChatGenerationChunk | None) -> ChatResult:
    """The aggregated stream as one `ChatResult` (``_stream`` always ends with a usage chunk)."""
    if final is None:
        raise RuntimeError("generation produced no output chunk")
    message = final.message
    reply = AIMessage(
        content=message.content,
        tool_calls=message.tool_calls,
        invalid_tool_calls=message.invalid_tool_calls,
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
        id=message.id,
    )
    return ChatResult(
        generations=[ChatGeneration(message=reply, generation_info=final.generation_info)]
    )


@dataclasses.dataclass
class _Call:
    """One reply's inputs, prepared and checked before decoding starts."""

    messages: list[BaseMessage]
    engine: DeltaMemEngine
    memory: DeltaMemory
    scope: str
    tools: list[dict[str, Any]]
    input_ids: Any  # [1, T] prompt token ids
    settings: GenerationSettings
    constraint: JsonSchemaConstraint | None
    buffer_for_tools: bool  # the text may be a tool call: parsed at the end, not streamed


def _constraint(
    tokenizer: Any,
    settings: GenerationSettings,
    tools: list[dict[str, Any]],
    mode: str,
    forced: str | None,
    response_format: dict[str, Any] | None,
) -> tuple[GenerationSettings, JsonSchemaConstraint | None]:
    """The grammar a JSON reply or forced tool call is decoded under, with the token budget
    raised to its shortest valid document (so it always closes); no grammar otherwise."""
    constraint = None
    if response_format is not None:  # JSON mode / json_schema: a bare JSON document
        if tools:
            raise ValueError("response_format and bound tools cannot be combined")
        document = JsonSchemaConstraint.for_document
        budget = max(settings.max_tokens, document(tokenizer, response_format).min_tokens)
        settings = dataclasses.replace(settings, max_tokens=budget)
        constraint = document(tokenizer, response_format, max_tokens=budget)
    if tools and mode == "required":
        # the call is always closed within max_tokens (raised to the shortest valid call)
        shortest = JsonSchemaConstraint(tokenizer, tools, forced).min_tokens
        budget = max(settings.max_tokens, shortest)
        settings = dataclasses.replace(settings, max_tokens=budget)
        constraint = JsonSchemaConstraint(tokenizer, tools, forced, max_tokens=budget)
    return settings, constraint
