"""Images, moderations, transcriptions, translations and speech through the queue.

Through the official SDK, the broker's API and worker processes, real Redis: against the mock and
against the fake OpenAI upstream (tests/fakes/openai_media.py) over real HTTP. Each answer is priced
and lands in the ledger; an image request fails over; a 20 MB upload never enters Redis.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import threading
import time
import wave
import zlib
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from broker.keys import Keys
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY, sync_client
from tests.stacks import Stack, StackFactory

pytestmark = pytest.mark.upstream(api_key="sk-up", chunks=3)

UPLOAD_LIMIT = 21 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer) -> Stack:
    providers = {
        "mock": {"kind": "mock", "tokens": 5},
        # Speech in pieces 0.15 s apart; a transcription held 1.5 s (the upload's job sits in Redis meanwhile).
        "mock-slow": {"kind": "mock", "tokens": 5, "token_delay_s": 0.15, "first_token_delay_s": 1.5},
        "up": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up", "profile": "openai"},
        "up-generic": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up"},
    }
    models = {
        "img-mock": [{"provider": "mock", "model": "gpt-image-1"}],
        "dall-e-3": [{"provider": "up", "model": "dall-e-3"}],
        "gpt-image-1": [{"provider": "up", "model": "gpt-image-1"}],
        "img-failover": [{"provider": "up", "model": "fail-503@img"}, {"provider": "up", "model": "dall-e-3"}],
        "omni-moderation-latest": [{"provider": "mock", "model": "omni-moderation-latest"}],
        "mod-up": [{"provider": "up", "model": "omni-moderation-latest"}],
        "whisper-mock": [{"provider": "mock", "model": "whisper-1"}],
        "whisper-slow": [{"provider": "mock-slow", "model": "whisper-1"}],
        "whisper-1": [{"provider": "up", "model": "whisper-1"}],
        "tts-mock": [{"provider": "mock-slow", "model": "tts-1"}],
        "tts-1": [{"provider": "up", "model": "tts-1"}],
        "tts-cut": [{"provider": "up", "model": "midstream-error@tts"}],
        "chat-only": [{"provider": "up-generic", "model": "fake-model"}],
    }
    made = module_stack_factory(providers, models, server={"max_upload_bytes": UPLOAD_LIMIT})
    made.up(*providers)
    return made


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return stack.base_url


def _png_size(data: bytes) -> tuple[int, int]:
    """A PNG's width and height, after checking its signature, every chunk's CRC and its pixel data's length."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, size, colour = 8, b"", (0, 0), 0
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size, colour = struct.unpack(">II", body[:8]), body[9]
        idat += body if kind == b"IDAT" else b""
        at += 12 + length
    channels = {2: 3, 6: 4}[colour]
    assert len(zlib.decompress(idat)) == size[1] * (1 + size[0] * channels)
    return size


def _ledger(base_url: str, model: str, requests: int) -> dict[str, Any]:
    end = time.monotonic() + 5
    while True:  # the ledger is written with the job's end, just after the client's answer
        report = httpx.get(f"{base_url}/usage", params={"group_by": "model"},
                           headers={"authorization": f"Bearer {TEST_KEY}"}).json()
        rows = [r for r in report["data"] if r["model"] == model]
        if rows and rows[0]["requests"] >= requests or time.monotonic() > end:
            assert rows, report
            return rows[0]
        time.sleep(0.05)


# ---- images


def test_mock_images_are_real_pngs_of_the_asked_size_in_b64_json_and_url(client: openai.OpenAI) -> None:
    made = client.images.generate(model="img-mock", prompt="a lighthouse at dusk", n=2, size="256x256",
                                  response_format="b64_json")
    assert made.data is not None and len(made.data) == 2
    pngs = [base64.b64decode(image.b64_json or "") for image in made.data]
    assert [_png_size(p) for p in pngs] == [(256, 256), (256, 256)] and pngs[0] != pngs[1]
    again = client.images.generate(model="img-mock", prompt="a lighthouse at dusk", size="256x256",
                                   response_format="b64_json")
    assert again.data and again.data[0].b64_json == made.data[0].b64_json  # deterministic
    by_url = client.images.generate(model="img-mock", prompt="a lighthouse", size="64x32", response_format="url",
                                    background="transparent")
    assert by_url.data and (by_url.data[0].url or "").startswith("data:image/png;base64,")
    assert _png_size(base64.b64decode((by_url.data[0].url or "").split(",", 1)[1])) == (64, 32)


def test_upstream_images_are_relayed_and_priced_per_image(client: openai.OpenAI, base_url: str,
                                                          upstream: UpstreamServer) -> None:
    raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a red fox", size="1024x1024",
                                                   quality="standard", style="vivid", response_format="url")
    made = raw.parse()
    assert made.data and made.data[0].url and made.data[0].revised_prompt == "a red fox"
    _png_size(httpx.get(made.data[0].url).content)  # the upstream's URL, handed through
    sent = [r for r in upstream.requests if r.path == "/v1/images/generations"][-1]
    assert sent.body["model"] == "dall-e-3" and sent.body["style"] == "vivid"
    assert sent.headers["authorization"] == "Bearer sk-up"
    assert float(raw.headers["x-llm-broker-cost-usd"]) == pytest.approx(0.04)
    assert _ledger(base_url, "dall-e-3", 1)["cost_usd"] == pytest.approx(0.04)


def test_gpt_image_usage_tokens_are_reported_and_priced_by_token(client: openai.OpenAI, base_url: str) -> None:
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a cat", quality="high")
    made = raw.parse()
    assert made.usage is not None and made.usage.output_tokens == 4160
    assert made.data and _png_size(base64.b64decode(made.data[0].b64_json or ""))
    expected = (50 * 5.00 + 4160 * 40.00) / 1e6  # text in, image out (USD per 1M tokens)
    assert float(raw.headers["x-llm-broker-cost-usd"]) == pytest.approx(expected)
    row = _ledger(base_url, "gpt-image-1", 1)
    assert row["cost_usd"] == pytest.approx(expected) and row["output_tokens"] == 4160


def test_an_image_request_fails_over_to_the_next_deployment(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="img-failover", prompt="a boat", response_format="b64_json")
    assert raw.headers["x-llm-broker-deployment"] == "up/dall-e-3" and raw.headers["x-llm-broker-attempts"] == "2"
    made = raw.parse()
    assert made.data and _png_size(base64.b64decode(made.data[0].b64_json or "")) == (4, 4)


# ---- moderations


def test_mock_moderations_have_the_sdk_shape(client: openai.OpenAI, base_url: str) -> None:
    result = client.moderations.create(input=["I will kill the lights", "a sunny day"])
    assert result.model == "omni-moderation-latest" and len(result.results) == 2
    bad, fine = result.results
    assert bad.flagged and bad.categories.violence and bad.category_scores.violence > 0.5
    assert not fine.flagged and not any(fine.categories.model_dump().values())
    assert bad.categories.harassment_threatening is False and bad.category_scores.self_harm_intent < 0.1
    assert bad.category_applied_input_types.violence == ["text"]
    mixed = client.moderations.create(input=[{"type": "text", "text": "hello"},
                                             {"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    assert mixed.results[0].category_applied_input_types.violence == ["text", "image"]
    assert mixed.results[0].category_applied_input_types.hate == ["text"]
    assert _ledger(base_url, "omni-moderation-latest", 2)["cost_usd"] == 0


def test_upstream_moderations_are_relayed(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    result = client.moderations.create(model="mod-up", input="kill it")
    assert result.id == "modr-fake" and result.results[0].flagged
    sent = [r for r in upstream.requests if r.path == "/v1/moderations"][-1]
    assert sent.body == {"input": "kill it", "model": "omni-moderation-latest"}


# ---- transcriptions and translations

AUDIO = bytes(range(256)) * 400  # 102,400 bytes: 6.4 s at the 16 kB/s both fakes assume


@pytest.mark.parametrize("model", ["whisper-mock", "whisper-1"])
def test_transcriptions_in_every_format(client: openai.OpenAI, base_url: str, model: str) -> None:
    as_json = client.audio.transcriptions.create(model=model, file=("talk.mp3", AUDIO, "audio/mpeg"))
    assert as_json.text
    text = client.audio.transcriptions.create(model=model, file=("talk.mp3", AUDIO), response_format="text")
    assert isinstance(text, str) and text.strip() == as_json.text
    srt = client.audio.transcriptions.create(model=model, file=("talk.mp3", AUDIO), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and as_json.text.split()[0] in srt
    vtt = client.audio.transcriptions.create(model=model, file=("talk.mp3", AUDIO), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    verbose = client.audio.transcriptions.create(model=model, file=("talk.mp3", AUDIO), response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"], language="en",
                                                 prompt="a talk", temperature=0.2)
    assert verbose.duration == pytest.approx(6.4) and verbose.text
    answer = httpx.post(f"{base_url}/audio/transcriptions", headers={"authorization": f"Bearer {TEST_KEY}"},
                        files={"file": ("talk.mp3", AUDIO)}, data={"model": model, "response_format": "srt"})
    assert answer.headers["content-type"].startswith("text/plain")
    row = _ledger(base_url, model, 6)
    if model == "whisper-1":  # $0.006 a minute, from the duration the upstream reported
        assert row["cost_usd"] == pytest.approx(2 * 0.006 * 6.4 / 60 + 4 * 0.006 * 6.4 / 60, rel=1e-3)
    else:
        assert row["cost_usd"] == 0


def test_the_upstream_receives_the_upload_whole_as_multipart(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", AUDIO, "audio/wav"),
                                                 response_format="verbose_json", timestamp_granularities=["word"],
                                                 language="fr")
    assert verbose.text.startswith(f"heard {len(AUDIO)} bytes sha256 {hashlib.sha256(AUDIO).hexdigest()[:16]}")
    sent = [r for r in upstream.requests if r.path == "/v1/audio/transcriptions"][-1]
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent.body["file"] == {"filename": "talk.wav", "content_type": "audio/wav", "bytes": len(AUDIO)}
    assert sent.body["timestamp_granularities[]"] == ["word"] and sent.body["language"] == "fr"
    assert sent.body["model"] == "whisper-1" and sent.headers["authorization"] == "Bearer sk-up"


@pytest.mark.parametrize("model", ["whisper-mock", "whisper-1"])
def test_translations(client: openai.OpenAI, model: str) -> None:
    translated = client.audio.translations.create(model=model, file=("talk.mp3", AUDIO))
    transcribed = client.audio.transcriptions.create(model=model, file=("talk.mp3", AUDIO))
    assert translated.text and translated.text != transcribed.text
    verbose = client.audio.translations.create(model=model, file=("talk.mp3", AUDIO), response_format="verbose_json")
    assert verbose.language == "english"


def test_spooled_uploads_are_removed_when_their_job_ends(client: openai.OpenAI, stack: Stack) -> None:
    client.audio.transcriptions.create(model="whisper-mock", file=("talk.mp3", AUDIO))
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-mock", file=("talk.mp3", AUDIO),
                                           response_format="xml")  # type: ignore[arg-type]
    uploads = Path(yaml.safe_load(stack.config_path.read_text())["batches"]["files_dir"]) / "uploads"
    assert uploads.is_dir() and list(uploads.iterdir()) == []


def test_a_20_mb_upload_never_enters_redis(client: openai.OpenAI, stack: Stack) -> None:
    config = yaml.safe_load(stack.config_path.read_text())
    redis = sync_client(config["redis_url"])
    queue = Keys(config["namespace"]).queue("mock-slow", "default", "test")
    audio = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32)
    entries: list[int] = []  # the job on its stream, each time it is seen there
    namespace_bytes: list[int] = []  # every key of the stack's namespace, summed, while the job waits and runs
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            entries.extend(sum(len(k) + len(v) for k, v in fields.items()) for _, fields in redis.xrange(queue))
            namespace_bytes.append(sum(redis.memory_usage(key) or 0
                                       for key in redis.scan_iter(match=f"{config['namespace']}*", count=1000)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # the slow mock holds the job 1.5 s: it is watched on its stream, then while a worker runs it
        result = client.audio.transcriptions.create(model="whisper-slow", file=("long.mp3", audio))
    finally:
        done.set()
        watcher.join()
    assert result.text
    assert entries, f"the job was never seen on {queue}"
    assert max(entries) < 4096  # the form's fields and a reference to the spooled file, no audio
    assert max(namespace_bytes) < 1024 * 1024  # all the broker keeps in Redis, against the upload's 20 MB


# ---- speech


def test_speech_streams_a_valid_wav_as_it_is_made(client: openai.OpenAI, base_url: str) -> None:
    text = "the quick brown fox jumps over the lazy dog " * 3
    started = time.monotonic()
    arrivals: list[float] = []
    pieces: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(model="tts-mock", voice="alloy", input=text,
                                                            response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        for piece in response.iter_bytes():
            arrivals.append(time.monotonic() - started)
            pieces.append(piece)
    # The mock makes ~14 pieces 0.15 s apart: the first bytes come long before the last are made.
    assert len(arrivals) >= 4 and arrivals[0] < arrivals[-1] - 1.0
    streamed = b"".join(pieces)
    with wave.open(io.BytesIO(streamed)) as wav:  # what streamed is one valid WAV, as long as the text makes it
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (24_000, 2, 1)
        assert wav.getnframes() == int(len(text) * 0.02 * 24_000)
        assert len(wav.readframes(wav.getnframes())) == 2 * wav.getnframes()
    assert client.audio.speech.create(model="tts-mock", voice="alloy", input=text,
                                      response_format="wav").content == streamed  # deterministic
    mp3 = client.audio.speech.create(model="tts-mock", voice="alloy", input="short").content
    assert mp3[:2] == b"\xff\xfb" and len(mp3) % 417 == 0  # MPEG-1 Layer III frames
    assert _ledger(base_url, "tts-mock", 3)["cost_usd"] == 0


def test_upstream_speech_is_relayed_incrementally_and_priced_per_character(client: openai.OpenAI,
                                                                           base_url: str) -> None:
    text = "hello there, general listener"
    started = time.monotonic()
    arrivals: list[float] = []
    chunks: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="nova", input=text,
                                                            response_format="flac") as response:
        assert response.headers["content-type"] == "audio/flac"
        for piece in response.iter_bytes():
            arrivals.append(time.monotonic() - started)
            chunks.append(piece)
    # A stream's headers leave before its cost is known; the ledger has it.
    assert len(arrivals) >= 3 and arrivals[0] < arrivals[-1] - 0.25  # the fake's 6 pieces, 0.1 s apart
    with wave.open(io.BytesIO(b"".join(chunks))) as wav:  # the fake answers WAV bytes whatever the format
        assert wav.getnframes() == 12_000
    assert _ledger(base_url, "tts-1", 1)["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)


def test_speech_cut_after_its_first_bytes_is_a_truncated_body_never_a_short_file(client: openai.OpenAI) -> None:
    received = b""
    # (httpx's RemoteProtocolError, from whichever httpx the SDK runs on)
    with pytest.raises(Exception, match="incomplete chunked read"):
        with client.audio.speech.with_streaming_response.create(model="tts-cut", voice="nova", input="hello",
                                                                response_format="wav") as response:
            assert response.status_code == 200
            for piece in response.iter_bytes():
                received += piece
    assert received[:4] == b"RIFF"  # the pieces before the cut arrived as they came


# ---- errors


def test_bad_inputs_are_openai_shaped_4xx(client: openai.OpenAI, base_url: str) -> None:
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    missing_file = httpx.post(f"{base_url}/audio/transcriptions", headers=headers, data={"model": "whisper-mock"},
                              files={"other": ("x.txt", b"x")})
    assert missing_file.status_code == 400 and missing_file.json()["error"]["param"] == "file"
    not_multipart = httpx.post(f"{base_url}/audio/transcriptions", headers=headers, json={"model": "whisper-mock"})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad_format:
        client.audio.transcriptions.create(model="whisper-mock", file=("a.mp3", AUDIO),
                                           response_format="xml")  # type: ignore[arg-type]
    assert bad_format.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as bad_voice_format:
        client.audio.speech.create(model="tts-mock", voice="alloy", input="hi",
                                   response_format="ogg")  # type: ignore[arg-type]
    assert bad_voice_format.value.param == "response_format"
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-model", prompt="x")
    with pytest.raises(openai.BadRequestError) as lacking:
        client.images.generate(model="chat-only", prompt="x")
    assert "chat-only" in lacking.value.message and lacking.value.code == "unsupported_capability"
    with pytest.raises(openai.BadRequestError) as lacking_audio:
        client.audio.transcriptions.create(model="chat-only", file=("a.mp3", AUDIO))
    assert "chat-only" in lacking_audio.value.message
    with pytest.raises(openai.BadRequestError) as no_prompt:
        client.images.generate(model="img-mock", prompt="")
    assert no_prompt.value.param == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.moderations.create(input=[])
    too_large = httpx.post(f"{base_url}/audio/transcriptions", headers=headers, data={"model": "whisper-mock"},
                           files={"file": ("big.mp3", b"\0" * (UPLOAD_LIMIT + 100_000))})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"


def test_an_async_transcription_is_answered_at_its_job_and_its_upload_removed_by_the_worker(
        base_url: str, stack: Stack) -> None:
    headers = {"authorization": f"Bearer {TEST_KEY}", "prefer": "respond-async"}
    refused = httpx.post(f"{base_url}/audio/transcriptions", headers=headers, files={"file": ("a.mp3", AUDIO)},
                         data={"model": "whisper-mock", "response_format": "srt"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"
    accepted = httpx.post(f"{base_url}/audio/transcriptions", headers=headers, files={"file": ("a.mp3", AUDIO)},
                          data={"model": "whisper-mock", "response_format": "verbose_json"})
    assert accepted.status_code == 202, accepted.text
    end = time.monotonic() + 10
    while (job := httpx.get(f"{base_url}/jobs/{accepted.json()['id']}", headers=headers).json())["status"] != "completed":
        assert time.monotonic() < end, job
        time.sleep(0.05)
    assert job["response"]["duration"] == pytest.approx(6.4) and job["response"]["text"]
    uploads = Path(yaml.safe_load(stack.config_path.read_text())["batches"]["files_dir"]) / "uploads"
    assert list(uploads.iterdir()) == []

