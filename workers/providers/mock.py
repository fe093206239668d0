"""The built-in fake LLM: honest enough to develop against and to load-test with.

Text is derived deterministically from the prompt (the same prompt always gets
the same answer, different prompts differ), one word per token. Usage numbers
are exact in its own tokenizer: a prompt token is a whitespace-separated word
of the messages' text, a completion token is one emitted word. `max_tokens`
cuts the answer short with finish_reason "length"; `n` gives n choices.

It also does what clients test against: a tool call when `tool_choice` forces
one (arguments valid against the tool's JSON Schema: mock_schema.py), a JSON object
in JSON mode (`{"answer": <the words>}`), a document valid against the schema for
structured outputs (the same generator, so `parse()` into a Pydantic model works),
legacy completions, embeddings (unit vectors from the text's hash,
`dimensions` long, 16 by default), reranks (scored by the words a document shares with the query),
and the media endpoints: PNG images, WAV/MP3 speech, transcripts and moderations (mock_media.py).
A JSON answer is emitted, and counted, a
whitespace-separated piece per token; a structured one is as long as its schema
makes it, and `max_tokens` cuts it short (finish_reason "length", the JSON left
incomplete), as a real model's is: the case for which openai-python's `parse()`
raises `LengthFinishReasonError` (src/openai/lib/_parsing/_completions.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from msgspec import UNSET

from broker.config.providers import MockProvider as MockSettings
from broker.errors import InvalidRequest
from broker.wire import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    Choice,
    ChunkChoice,
    CompletionRequest,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    EmbeddingRequest,
    FunctionCall,
    ResponseMessage,
    TextChoice,
    TextCompletion,
    ToolCall,
    Usage,
    json_encoder,
)
from broker.wire.audio import SpeechRequest, TranscriptionRequest
from broker.wire.images import ImageData, ImageRequest, ImagesResponse
from broker.wire.moderations import ModerationRequest, ModerationResponse
from broker.wire.rerank import RerankRequest
from workers.providers import mock_media
from workers.providers.base import EmbeddingsResult, Ranked, Transcribed
from workers.providers.mock_schema import sample

VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while seven tired robots hum softly about "
    "distant stars and quiet rivers under silver moons that never sleep through long winter "
    "nights full of bright questions waiting for clever answers from patient machines"
).split()


def count_words(texts: list[str]) -> int:
    return sum(len(t.split()) for t in texts)


def prompt_tokens(req: ChatRequest) -> int:
    return count_words([m.text() for m in req.messages])


def prompt_text(req: ChatRequest) -> str:
    return "\n".join(m.text() for m in req.messages)


def pieces(text: str) -> list[str]:
    """`text` as the mock's tokens, each word with the whitespace before it: they join back to `text`."""
    return re.findall(r"\s*\S+", text)


def mock_words(prompt: str, count: int) -> list[str]:
    """`count` words chosen by a hash chain over the prompt: deterministic, prompt-dependent."""
    words: list[str] = []
    digest = hashlib.blake2b(prompt.encode(), digest_size=32).digest()
    while len(words) < count:
        words.extend(VOCABULARY[b % len(VOCABULARY)] for b in digest)
        digest = hashlib.blake2b(digest, digest_size=32).digest()
    return words[:count]


def mock_vector(text: str, dimensions: int) -> list[float]:
    raw: list[float] = []
    digest = hashlib.blake2b(text.encode(), digest_size=64).digest()
    while len(raw) < dimensions:
        raw.extend(b / 127.5 - 1.0 for b in digest)
        digest = hashlib.blake2b(digest, digest_size=64).digest()
    norm = math.sqrt(sum(x * x for x in raw[:dimensions])) or 1.0
    return [x / norm for x in raw[:dimensions]]


def overlap_score(query: str, document: str) -> float:
    """The share of the query's distinct words the document contains, nudged by a hash of the pair so that
    ties between documents still have a deterministic order: in [0, 1)."""
    asked = set(re.findall(r"\w+", query.lower()))
    found = set(re.findall(r"\w+", document.lower()))
    share = len(asked & found) / len(asked) if asked else 0.0
    nudge = hashlib.blake2b(f"{query}\0{document}".encode(), digest_size=2).digest()
    return round(share * 0.9 + int.from_bytes(nudge, "big") / 65536 * 0.09, 6)


def _seed(prompt: str, choice: int) -> str:
    return prompt + (f"#{choice}" if choice else "")


def _forced_tool(req: ChatRequest) -> tuple[str, dict[str, Any]] | None:
    if not req.tools:
        return None
    choice = req.tool_choice
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name")
    elif choice == "required":
        name = req.tools[0].function.name
    else:
        return None
    for tool in req.tools:
        if tool.function.name == name:
            params = tool.function.parameters
            return name, params if isinstance(params, dict) else {}
    return None


class MockProvider:
    def __init__(self, name: str, settings: MockSettings) -> None:
        self.name = name
        self.settings = settings

    def _plan(self, prompt: str, limit: int | None, choice: int) -> tuple[list[str], str]:
        configured = self.settings.tokens
        count = configured if limit is None else min(limit, configured)
        finish = "length" if limit is not None and limit < configured else "stop"
        words = mock_words(_seed(prompt, choice), count)
        return [w if i == 0 else " " + w for i, w in enumerate(words)], finish

    def _chat_plans(self, req: ChatRequest) -> list[tuple[list[str], str]]:
        """Each choice's content as tokens (JSON in the JSON modes), and its finish_reason."""
        n = req.n if isinstance(req.n, int) else 1
        prompt, limit = prompt_text(req), req.output_limit()
        asked = req.response_format if isinstance(req.response_format, dict) else {}
        plans = []
        for i in range(n):
            tokens, finish = self._plan(prompt, limit, i)
            match asked.get("type"):
                case "json_object":
                    tokens = pieces(json.dumps({"answer": "".join(tokens)}))
                case "json_schema":
                    spec = asked.get("json_schema")
                    schema = spec.get("schema") if isinstance(spec, dict) else None
                    tokens = pieces(json.dumps(sample(schema, _seed(prompt, i), VOCABULARY)))
                    finish = "length" if limit is not None and limit < len(tokens) else "stop"
                    tokens = tokens[:limit]
            plans.append((tokens, finish))
        return plans

    async def _delay(self, tokens: int) -> None:
        delay = self.settings.first_token_delay_s + self.settings.token_delay_s * max(tokens - 1, 0)
        if delay:
            await asyncio.sleep(delay)

    # ---------------------------------------------------------------- chat

    def _tool_call(self, req: ChatRequest, tool: tuple[str, dict[str, Any]]) -> ToolCall:
        name, schema = tool
        args = sample(schema, name + prompt_text(req), VOCABULARY)
        return ToolCall(f"call_{hashlib.blake2b(name.encode(), digest_size=6).hexdigest()}",
                        FunctionCall(name, json.dumps(args)))

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        plans = self._chat_plans(req)
        await self._delay(max(len(tokens) for tokens, _ in plans))
        usage_out = sum(len(tokens) for tokens, _ in plans)
        tool = _forced_tool(req)
        choices = []
        for i, (tokens, finish) in enumerate(plans):
            if tool is not None:
                message = ResponseMessage(None, tool_calls=[self._tool_call(req, tool)])
                choices.append(Choice(i, message, "tool_calls"))
            else:
                choices.append(Choice(i, ResponseMessage("".join(tokens)), finish))
        return ChatCompletion("", int(time.time()), model, choices, self._usage(prompt_tokens(req), usage_out))

    @staticmethod
    def _usage(prompt: int, completion: int) -> Usage:
        return Usage(prompt, completion, prompt + completion)

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        plans = self._chat_plans(req)
        created = int(time.time())

        def chunk(choices: list[ChunkChoice]) -> ChatChunk:
            return ChatChunk("", created, model, choices)

        if self.settings.first_token_delay_s:  # time to first token: the prompt is being "read"
            await asyncio.sleep(self.settings.first_token_delay_s)
        n = len(plans)
        yield chunk([ChunkChoice(i, Delta(role="assistant", content="", refusal=None)) for i in range(n)])
        tool = _forced_tool(req)
        if tool is not None:
            call = self._tool_call(req, tool)
            yield chunk([ChunkChoice(i, Delta(tool_calls=[DeltaToolCall(
                0, id=call.id, type="function", function=DeltaFunction(name=call.function.name, arguments=""))]))
                for i in range(n)])
            yield chunk([ChunkChoice(i, Delta(tool_calls=[DeltaToolCall(
                0, function=DeltaFunction(arguments=call.function.arguments))])) for i in range(n)])
            yield chunk([ChunkChoice(i, Delta(), "tool_calls") for i in range(n)])
        else:
            for position in range(max(len(tokens) for tokens, _ in plans)):
                if position and self.settings.token_delay_s:
                    await asyncio.sleep(self.settings.token_delay_s)
                yield chunk([ChunkChoice(i, Delta(content=tokens[position]))
                             for i, (tokens, _) in enumerate(plans) if position < len(tokens)])
            yield chunk([ChunkChoice(i, Delta(), finish) for i, (_, finish) in enumerate(plans)])
        completion = sum(len(tokens) for tokens, _ in plans)
        yield ChatChunk("", created, model, [], usage=self._usage(prompt_tokens(req), completion))

    # ---------------------------------------------------------------- legacy completions

    def _text_plans(self, req: CompletionRequest) -> list[tuple[list[str], str]]:
        n = req.n if isinstance(req.n, int) else 1
        return [self._plan(p, req.output_limit(), i) for p in req.prompts() for i in range(n)]

    async def complete_text(self, req: CompletionRequest, *, model: str, deadline: float) -> TextCompletion:
        plans = self._text_plans(req)
        await self._delay(max(len(tokens) for tokens, _ in plans))
        choices = [TextChoice(i, "".join(tokens), finish) for i, (tokens, finish) in enumerate(plans)]
        usage = self._usage(count_words(req.prompts()), sum(len(t) for t, _ in plans))
        return TextCompletion("", int(time.time()), model, choices, usage=usage)

    async def stream_text(self, req: CompletionRequest, *, model: str, deadline: float) -> AsyncIterator[TextCompletion]:
        plans = self._text_plans(req)
        created = int(time.time())
        if self.settings.first_token_delay_s:
            await asyncio.sleep(self.settings.first_token_delay_s)
        for position in range(max(len(tokens) for tokens, _ in plans)):
            if position and self.settings.token_delay_s:
                await asyncio.sleep(self.settings.token_delay_s)
            yield TextCompletion("", created, model, [
                TextChoice(i, tokens[position]) for i, (tokens, _) in enumerate(plans) if position < len(tokens)])
        yield TextCompletion("", created, model, [TextChoice(i, "", finish) for i, (_, finish) in enumerate(plans)])
        usage = self._usage(count_words(req.prompts()), sum(len(t) for t, _ in plans))
        yield TextCompletion("", created, model, [], usage=usage)

    # ---------------------------------------------------------------- rerank

    async def rerank(self, req: RerankRequest, *, model: str, deadline: float) -> Ranked:
        """Scores by word overlap with the query, so the order means something; exact usage in mock tokens."""
        texts = req.texts()
        scores = [(i, overlap_score(req.query, text)) for i, text in enumerate(texts)]
        query_words = count_words([req.query])
        return Ranked(scores, prompt_tokens=query_words * len(texts) + count_words(texts))

    # ---------------------------------------------------------------- embeddings

    async def embed(self, req: EmbeddingRequest, *, model: str, deadline: float) -> EmbeddingsResult:
        dimensions = req.dimensions if isinstance(req.dimensions, int) else 16
        texts = req.texts()
        return EmbeddingsResult([mock_vector(t, dimensions) for t in texts], count_words(texts))

    async def aclose(self) -> None:
        return None


    # ---------------------------------------------------------------- media (mock_media.py)

    async def generate_images(self, req: ImageRequest, body: bytes, *, model: str, deadline: float) -> bytes:
        if req.output_format not in (UNSET, "png"):
            raise InvalidRequest(f"The mock draws PNG only, not {req.output_format!r}.", param="output_format")
        await self._delay(1)
        alpha = req.background == "transparent"
        size = req.size if isinstance(req.size, str) else None
        images = [mock_media.image_b64(req.prompt, i, size, alpha=alpha) for i in range(req.images())]
        # `url`: a data: URL, which any client can read without a server to fetch it from.
        data = [ImageData(url=f"data:image/png;base64,{b64}") if req.response_format == "url" else ImageData(b64_json=b64)
                for b64 in images]
        return json_encoder.encode(ImagesResponse(
            int(time.time()), data, size=size or "1024x1024", output_format="png",
            quality=req.quality if isinstance(req.quality, str) else "high",
            background="transparent" if alpha else "opaque"))

    async def moderate(self, req: ModerationRequest, body: bytes, *, model: str, deadline: float) -> bytes:
        omni = "omni" in model or "omni" in req.model
        results = [mock_media.moderation(parts, omni=omni) for parts in req.items()]
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        return json_encoder.encode(ModerationResponse(f"modr-{digest}", req.model, results))

    async def transcribe(self, req: TranscriptionRequest, *, model: str, deadline: float) -> Transcribed:
        body, seconds = await asyncio.to_thread(mock_media.transcript, req, mock_words)
        await self._delay(1)
        return Transcribed(body, seconds=seconds)

    async def speak(self, req: SpeechRequest, body: bytes, *, model: str, deadline: float) -> AsyncIterator[bytes]:
        pieces = mock_media.speech(req.input, req.response_format)
        first = next(pieces)  # a format the mock cannot make fails here, before anything is sent
        if self.settings.first_token_delay_s:
            await asyncio.sleep(self.settings.first_token_delay_s)
        yield first
        for piece in pieces:
            if self.settings.token_delay_s:
                await asyncio.sleep(self.settings.token_delay_s)
            yield piece
