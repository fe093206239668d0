"""What each OpenAI-compatible server accepts: data, not code (Portkey's param maps, as a table).

The `openai` adapter serves every server below; a profile tells it how to adapt
a request instead of letting the upstream reject it, and tells routing what
the server can do. Facts are from each server's own documentation: vLLM
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html), Ollama
(https://docs.ollama.com/api/openai-compatibility, and the fields `FromChatRequest` in its
`openai/openai.go` reads), llama.cpp (`tools/server/README.md`), LocalAI (https://localai.io);
where a server's behaviour is unverified the profile stays permissive.
"""

from __future__ import annotations

import msgspec

from broker.routing.capabilities import Capabilities


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    capabilities: Capabilities = Capabilities(completions=True, embeddings=True)
    # Honours stream_options.include_usage (else usage comes only if the server sends it anyway).
    stream_usage: bool = True
    # Request fields the server rejects or mishandles: dropped before sending.
    drop: frozenset[str] = frozenset()
    # The chat request fields a strict server accepts (it answers 422 to any other); None = it ignores extras.
    chat_fields: frozenset[str] | None = None
    # Fields of each message the server rejects: dropped before sending (a message's `name` is only a hint).
    drop_message_fields: frozenset[str] = frozenset()
    # Request fields the server knows under another name.
    rename: tuple[tuple[str, str], ...] = ()
    # Knows max_completion_tokens; if not, it is sent as max_tokens.
    max_completion_tokens: bool = True


# OpenAI serves every media endpoint (https://platform.openai.com/docs/api-reference).
_MEDIA = {"images": True, "moderations": True, "transcriptions": True, "speech": True}

PROFILES: dict[str, Profile] = {
    "generic": Profile(),
    "openai": Profile(capabilities=Capabilities(completions=True, embeddings=True, **_MEDIA)),
    # The `azure` kind's (workers/providers/azure.py): its deployments take what OpenAI's models take; its
    # capabilities are the kind's own (broker/config/providers.py `AzureProvider`).
    # `kind: openai` with `profile: azure` is read as that kind (broker/config/legacy.py).
    "azure": Profile(),
    # vLLM: `suffix` unsupported; tools need --enable-auto-tool-choice on the server.
    # vLLM serves Whisper models at /v1/audio/transcriptions and /translations.
    "vllm": Profile(drop=frozenset({"suffix"}),
                    capabilities=Capabilities(completions=True, embeddings=True, transcriptions=True)),
    # Ollama: no n, logit_bias, user, tool_choice or logprobs (`FromChatRequest` never reads them).
    "ollama": Profile(drop=frozenset({"n", "logit_bias", "user", "tool_choice", "logprobs", "top_logprobs"}),
                      max_completion_tokens=False),
    # LocalAI: /v1/images/generations, /v1/audio/transcriptions, /v1/audio/speech (https://localai.io/features/).
    "localai": Profile(max_completion_tokens=False,
                       capabilities=Capabilities(completions=True, embeddings=True, images=True,
                                                 transcriptions=True, speech=True)),
    "llamacpp": Profile(max_completion_tokens=False),
    # Mistral: strict schema, 422 `extra_forbidden` for any field it does not know, `name` on a
    # user message included; `random_seed` for seed; no stream_options (usage comes in the last chunk).
    # Embeddings: no `user`; `dimensions` is `output_dimension`.
    "mistral": Profile(rename=(("seed", "random_seed"), ("dimensions", "output_dimension")), drop=frozenset({"user"}),
                       stream_usage=False, max_completion_tokens=False,
                       chat_fields=frozenset({
                           "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
                           "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
                           "frequency_penalty", "n", "prediction", "parallel_tool_calls"}),
                       drop_message_fields=frozenset({"name"}),
                       capabilities=Capabilities(completions=False, embeddings=True)),
    # DeepSeek: JSON mode is json_object only; no images.
    "deepseek": Profile(drop=frozenset({"logit_bias", "n"}), max_completion_tokens=False,
                        capabilities=Capabilities(completions=False, embeddings=False, vision=False,
                                                  json_schema=False)),
    # Groq: no logprobs, logit_bias or messages[].name (400 if supplied); n must be 1.
    "groq": Profile(drop=frozenset({"logprobs", "top_logprobs", "logit_bias", "n"}),
                    drop_message_fields=frozenset({"name"}),
                    # https://console.groq.com/docs/speech-to-text, https://console.groq.com/docs/text-to-speech
                    capabilities=Capabilities(completions=False, embeddings=False, transcriptions=True,
                                              speech=True)),
    # https://docs.together.ai/reference/post-images-generations
    "together": Profile(capabilities=Capabilities(completions=True, embeddings=True, images=True)),
    "openrouter": Profile(capabilities=Capabilities(completions=True, embeddings=False)),
}
