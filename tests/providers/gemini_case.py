"""The `gemini` provider in the conformance suite, against tests/fakes/gemini_upstream.py.

The fake rejects, with Google's 400, any request the real API would reject, so a
passing answer proves the translation; what it recorded is checked as Gemini's wire format.
"""

from __future__ import annotations

import json

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageToolCall,
)

from tests.fakes.gemini_upstream import THOUGHTS, GeminiServer, embedding
from tests.fakes.server import FakeServer
from tests.providers.case import (
    Answer,
    ProviderCase,
    Request,
    Scenario,
    calls_of,
    last,
    text_of,
)

S = Scenario


class GeminiCase(ProviderCase):
    name = "gemini"
    key = "AIzaSy-fake-upstream-key-0123456789"
    scenarios = frozenset(S) - {S.ONE_TOOL_CALL, S.SERVER_ERROR, S.MIDSTREAM_ERROR, S.TIMEOUT}
    models = {"chat": "gemini-2.5-flash", "thinking": "thinking", "filtered-answer": "unsafe-answer",
              "filtered-prompt": "blocked-prompt", "bad-request": "fail-400", "limited": "fail-429",
              "overloaded": "fail-503", "embed": "gemini-embedding-001"}
    options = {S.CHAT: {"max_tokens": 50}}
    timeout_s = 5
    cities = ("Paris", "London")
    bad_request_says = "INVALID_ARGUMENT"
    rate_limited_says, retry_after = "RESOURCE_EXHAUSTED", "7"  # Google's RetryInfo retryDelay "7s"
    overloaded_says = "UNAVAILABLE"
    wrong_key_says = "API key not valid"
    # The fake, as Gemini does, takes an https fileUri (PROTOCOLS §6.5) but no plain http URL.
    refused = ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}]}]},
        "messages[0].content[0].image_url.url")
    upstream_rule = ({"messages": [{"role": "user", "content": "hi"}], "n": 9}, None, "candidate_count: must be in [1, 8]")
    reasoning_tokens = THOUGHTS
    embedding = staticmethod(embedding)

    def serve(self) -> FakeServer:
        return GeminiServer(api_key=self.key)

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
        assert sent.headers["x-goog-api-key"] == self.key and "key=" not in sent.path
        assert sent.body["systemInstruction"] == {"parts": [{"text": "Be brief, use the cache."}]}
        assert sent.body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50}
        assert text_of(reply) == "You said: hello there"
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 4)

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        assert last(upstream).path.endswith(":streamGenerateContent?alt=sse")
        assert text_of(chunks) == "You said: tell me a story about streams"
        if "stream_options" in request:
            assert chunks[-1].usage is not None
            assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 8)

    def check_tool_call(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        declaration = last(upstream).body["tools"][0]["functionDeclarations"][0]
        assert declaration["parametersJsonSchema"]["required"] == ["city"]
        assert calls_of(reply) == [("get_weather", {"city": "Paris"})]
        assert reply.choices[0].message.content is None

    def check_forced_tool_call(self, upstream: FakeServer, request: Request, final: ChatCompletion) -> None:
        assert last(upstream).body["toolConfig"] == {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        assert calls_of(final) == [("get_weather", {"city": "Paris"})]

    def check_parallel_tool_calls(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert reply.choices[0].message.content is None

    def check_parallel_tool_calls_stream(self, upstream: FakeServer, request: Request, final: ChatCompletion,
                                         chunks: list[ChatCompletionChunk]) -> None:
        assert not final.choices[0].message.content

    def check_tool_results(self, upstream: FakeServer, calls: list[ChatCompletionMessageToolCall],
                           reply: ChatCompletion) -> None:
        contents = last(upstream).body["contents"]
        assert [c["role"] for c in contents] == ["user", "model", "user"]
        assert contents[2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 15}}},
                                        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 22}}}]
        assert text_of(reply) == 'Results: get_weather -> {"temp_c": 15}; get_weather -> {"temp_c": 22}'

    def check_missing_tool_result(self, calls: list[ChatCompletionMessageToolCall],
                                  error: openai.BadRequestError) -> None:
        assert "number of function response parts is equal to the number of function call parts" in error.message

    def check_image(self, upstream: FakeServer, request: Request, answer: Answer) -> None:
        url = request["messages"][0]["content"][1]["image_url"]["url"]
        part = last(upstream).body["contents"][0]["parts"][1]
        if url.startswith("data:"):
            assert part == {"inlineData": {"mimeType": "image/png", "data": url.partition(";base64,")[2]}}
            assert text_of(answer) == "You said: What is in this image? [saw image/png]"
        else:  # Gemini takes an https fileUri only with its mimeType, guessed when the URL has no extension
            assert part["fileData"]["fileUri"] == url and part["fileData"]["mimeType"].startswith("image/")
            assert text_of(answer) == f"You said: What is in this image? [saw {url}]"

    def check_json_object(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["generationConfig"] == {"responseMimeType": "application/json"}
        assert json.loads(text_of(reply)) == {"answer": "ok"}

    def check_json_schema(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["generationConfig"] == {
            "responseMimeType": "application/json",
            "responseJsonSchema": request["response_format"]["json_schema"]["schema"]}
        assert json.loads(text_of(reply)) == {"city": "sunny", "temp_c": 15, "units": "c"}

    def check_max_tokens(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["generationConfig"] == {"maxOutputTokens": 3}
        assert text_of(reply) == "You said: one"

    def check_stop_sequences(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["generationConfig"] == {"stopSequences": ["four"]}
        assert text_of(reply) == "You said: one two three "

    def check_reasoning(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert reply.choices[0].message.content is None
        model_turn, results_turn = last(upstream).body["contents"][1:]
        # The thinking model's signature went back on the call that carried it (Gemini 3 requires it).
        assert model_turn["parts"][0]["thoughtSignature"] and "thoughtSignature" not in model_turn["parts"][1]
        assert len(results_turn["parts"]) == 2
