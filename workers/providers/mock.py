"""The built-in fake LLM: honest enough to develop against and to load-test with.

Text is derived deterministically from the prompt (the same prompt always gets
the same answer, different prompts differ), one word per token. Usage numbers
are exact in its own tokenizer: a prompt token is a whitespace-separated word
of the messages' text, a completion token is one emitted word. `max_tokens`
cuts the answer short with finish_reason "length"; `n` gives n choices.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

from broker.config import MockProvider as MockConfig
from broker.wire import (
    ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, ResponseMessage, Usage,
)

VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while seven tired robots hum softly about "
    "distant stars and quiet rivers under silver moons that never sleep through long winter "
    "nights full of bright questions waiting for clever answers from patient machines"
).split()


def prompt_tokens(req: ChatRequest) -> int:
    return sum(len(m.text().split()) for m in req.messages)


def mock_words(prompt: str, count: int) -> list[str]:
    """`count` words chosen by a hash chain over the prompt: deterministic, prompt-dependent."""
    words: list[str] = []
    digest = hashlib.blake2b(prompt.encode(), digest_size=32).digest()
    while len(words) < count:
        words.extend(VOCABULARY[b % len(VOCABULARY)] for b in digest)
        digest = hashlib.blake2b(digest, digest_size=32).digest()
    return words[:count]


class MockProvider:
    def __init__(self, name: str, config: MockConfig) -> None:
        self.name = name
        self.config = config

    def _plan(self, req: ChatRequest, choice: int) -> tuple[list[str], str]:
        prompt = "\n".join(m.text() for m in req.messages) + (f"#{choice}" if choice else "")
        limit = req.output_limit()
        count = self.config.tokens if limit is None else min(limit, self.config.tokens)
        finish = "length" if limit is not None and limit < self.config.tokens else "stop"
        words = mock_words(prompt, count)
        return [w if i == 0 else " " + w for i, w in enumerate(words)], finish

    def _usage(self, req: ChatRequest, completion: int) -> Usage:
        prompt = prompt_tokens(req)
        return Usage(prompt, completion, prompt + completion)

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        n = req.n if isinstance(req.n, int) else 1
        plans = [self._plan(req, i) for i in range(n)]
        total = sum(len(tokens) for tokens, _ in plans)
        await self._generation_delay(max(len(tokens) for tokens, _ in plans))
        choices = [
            Choice(i, ResponseMessage("".join(tokens)), finish) for i, (tokens, finish) in enumerate(plans)
        ]
        return ChatCompletion("", int(time.time()), model, choices, self._usage(req, total))

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        n = req.n if isinstance(req.n, int) else 1
        plans = [self._plan(req, i) for i in range(n)]
        created = int(time.time())

        def chunk(choices: list[ChunkChoice]) -> ChatChunk:
            return ChatChunk("", created, model, choices)

        if self.config.first_token_delay_s:  # time to first token: the prompt is being "read"
            await asyncio.sleep(self.config.first_token_delay_s)
        yield chunk([ChunkChoice(i, Delta(role="assistant", content="", refusal=None)) for i in range(n)])
        for position in range(max(len(tokens) for tokens, _ in plans)):
            if position and self.config.token_delay_s:
                await asyncio.sleep(self.config.token_delay_s)
            yield chunk([
                ChunkChoice(i, Delta(content=tokens[position]))
                for i, (tokens, _) in enumerate(plans) if position < len(tokens)
            ])
        yield chunk([ChunkChoice(i, Delta(), finish) for i, (_, finish) in enumerate(plans)])
        usage = self._usage(req, sum(len(tokens) for tokens, _ in plans))
        yield ChatChunk("", created, model, [], usage=usage)

    async def _generation_delay(self, tokens: int) -> None:
        delay = self.config.first_token_delay_s + self.config.token_delay_s * max(tokens - 1, 0)
        if delay:
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        return None
