"""The Batch API with its files in an S3-compatible bucket (`batches.s3`): moto's server as a process,
checking every signature, behind API and batch-worker processes, driven by the official SDK.

The batch flow of tests/test_batches.py runs here again unchanged (its tests are imported, so they
use this module's stack): every line keyed by custom_id, files listed, read, deleted and scoped per
tenant, a batch worker killed mid-batch, a batch past its window.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import openai
import pytest
import redis

from broker.batches import files
from broker.batches.s3_store import S3FileStore
from broker.config import hash_key
from broker.config.batches import S3Store
from broker.config.types import Secret
from broker.keys import Keys
from tests.fakes.openai_upstream import UpstreamServer
from tests.fakes.s3_server import S3Server
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import Stack, StackFactory
from tests.test_batches import (  # noqa: F401  (collected here, against the S3 stack)
    OTHER_KEY,
    chat_line,
    jsonl,
    test_a_batch_past_its_window_expires_with_its_unfinished_lines,
    test_a_batch_runs_every_line_and_keys_its_output_by_custom_id,
    test_a_batch_worker_killed_mid_batch_loses_no_line_and_runs_none_twice,
    test_files_and_batches_are_listed_read_deleted_and_tenant_scoped,
    wait_until,
)

pytestmark = pytest.mark.upstream(chunks=3)

PREFIX = "broker/files/"
PART_BYTES = 5 * 1024 * 1024  # S3's smallest part: uploads past it go multipart


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    return s3.bucket("llm-broker-files")


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer, s3: S3Server, bucket: str) -> Stack:
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 16}},
        {"quick": [{"provider": "up", "model": "fake-model"}], "broken": [{"provider": "up", "model": "fail-400"}],
         "hold": [{"provider": "up", "model": "hold"}]},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": [hash_key(OTHER_KEY)]}},
        batches={"max_in_flight": 50, "s3": s3.settings(bucket, prefix=PREFIX, part_bytes=PART_BYTES)},
    )
    stack.up("up")
    stack.batch_worker()
    return stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return str(stack.base_url)


def test_bodies_live_in_the_bucket_under_the_prefix_and_nowhere_on_disk(client: openai.OpenAI, s3: S3Server,
                                                                        bucket: str, stack: Stack) -> None:
    lines = [chat_line(f"where-{i}") for i in range(5)] + [chat_line("where-bad", "broken")]
    uploaded = client.files.create(file=("where.jsonl", jsonl(lines)), purpose="batch")
    stored = s3.client().get_object(Bucket=bucket, Key=PREFIX + uploaded.id)["Body"].read()
    assert stored == jsonl(lines)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = wait_until(client, batch.id, "completed")
    keys = s3.keys(bucket)
    assert {PREFIX + uploaded.id, PREFIX + done.output_file_id, PREFIX + done.error_file_id} <= set(keys)
    assert not [k for k in keys if k.startswith(PREFIX + "uncommitted/")], "the output's pieces outlived its commit"
    output = s3.client().get_object(Bucket=bucket, Key=PREFIX + done.output_file_id)["Body"].read()
    assert output == client.files.content(done.output_file_id).content
    assert sorted(json.loads(line)["custom_id"] for line in output.splitlines()) == [f"where-{i}" for i in range(5)]
    assert not (stack.config_path.parent / "files").exists() and not Path("llm-broker-files").exists()
    client.files.delete(uploaded.id)
    assert PREFIX + uploaded.id not in s3.keys(bucket)


def test_a_large_upload_goes_up_in_parts_and_comes_back_byte_for_byte(client: openai.OpenAI, s3: S3Server,
                                                                      bucket: str) -> None:
    # 12 lines of ~1 MiB: past two parts of 5 MiB, so CreateMultipartUpload, 3 UploadParts, Complete.
    lines = [chat_line(f"big-{i}", text=f"{i} " + "x" * (1 << 20)) for i in range(12)]
    body = jsonl(lines)
    uploaded = client.files.create(file=("big.jsonl", body), purpose="batch")
    assert uploaded.bytes == len(body)
    listed = s3.keys(bucket, PREFIX + uploaded.id)[PREFIX + uploaded.id]
    # A multipart object's ETag is the md5 of its parts' md5s, then `-<parts>`; a single PUT's is its md5.
    assert listed["ETag"].strip('"').endswith("-3") and listed["Size"] == len(body)
    assert hashlib.sha256(client.files.content(uploaded.id).content).digest() == hashlib.sha256(body).digest()
    client.files.delete(uploaded.id)


def test_an_invalid_upload_never_reaches_the_bucket(client: openai.OpenAI, s3: S3Server, bucket: str) -> None:
    before = set(s3.keys(bucket))
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    assert caught.value.code == "invalid_batch_file"
    assert set(s3.keys(bucket)) == before


def test_expired_files_are_swept_from_the_bucket(client: openai.OpenAI, s3: S3Server, bucket: str,
                                                 stack: Stack, module_namespace: str) -> None:
    kept = client.files.create(file=("kept.jsonl", jsonl([chat_line("k")])), purpose="batch")
    lapsed = client.files.create(file=("lapsed.jsonl", jsonl([chat_line("l")])), purpose="batch",
                                 extra_body={"expires_after[seconds]": "3600"})
    keys = Keys(module_namespace)
    r = redis.Redis.from_url(REDIS_URL)
    assert 3500 < r.ttl(keys.file(lapsed.id)) <= 3600  # the metadata carries the file's expiry
    r.delete(keys.file(lapsed.id))  # as its TTL would, an hour on

    async def sweep() -> int:
        store = S3FileStore(_settings(s3, bucket))
        client_redis = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            return await files.sweep(client_redis, keys, store, min_age_s=0)
        finally:
            await store.aclose()
            await client_redis.aclose()

    assert asyncio.run(sweep()) >= 1
    present = s3.keys(bucket)
    assert PREFIX + lapsed.id not in present and PREFIX + kept.id in present
    with pytest.raises(openai.NotFoundError):
        client.files.content(lapsed.id)
    assert client.files.content(kept.id).content == jsonl([chat_line("k")])


def test_a_store_that_refuses_our_signature_is_a_503_that_names_no_secret(stack_factory: StackFactory,
                                                                          s3: S3Server, bucket: str) -> None:
    wrong = "wRongSecretKey0000000000000000000000000"
    stack = stack_factory({"up": {"kind": "mock"}}, {"m": [{"provider": "up", "model": "m"}]},
                          batches={"s3": s3.settings(bucket, secret_access_key=wrong)})
    stack.api()  # no worker: the upload fails at the store before anything is queued
    sdk = openai.OpenAI(base_url=str(stack.base_url), api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.files.create(file=("a.jsonl", jsonl([chat_line("a", "m")])), purpose="batch")
    assert caught.value.status_code == 503
    body = caught.value.response.text
    assert "file_store_unavailable" in body and "SignatureDoesNotMatch" in body
    assert wrong not in body and s3.secret_access_key not in body
    assert wrong not in "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))


# ------------------------------------------------------------------ the store itself, over real HTTP


def _settings(s3: S3Server, bucket: str) -> S3Store:
    def secret(typ: type, value: object) -> object:
        return Secret(value) if typ is Secret and isinstance(value, str) else value
    return msgspec.convert(s3.settings(bucket, prefix=PREFIX, part_bytes=PART_BYTES), S3Store, dec_hook=secret)


def test_output_pieces_a_dead_step_left_are_overwritten_or_left_out_at_commit(s3: S3Server, bucket: str) -> None:
    out = "file-0123456789abcdef"

    async def run() -> tuple[bytes, bytes, bytes]:
        store = S3FileStore(_settings(s3, bucket))
        try:
            await store.append(out, 0, b"line 1\n")
            await store.append(out, 7, b"written by a step that died before recording it\n")
            await store.append(out, 7, b"line 2\n")  # the next step writes at the recorded size: 7
            big = b"y" * (PART_BYTES + 100) + b"\n"  # past a part: the commit itself goes multipart
            await store.append(out, 14, big)
            await store.append(out, 14 + len(big), b"never recorded\n")  # a step that died again
            await store.commit(out, 14 + len(big))
            await store.commit(out, 14 + len(big))  # a re-run finalize: nothing left to do
            head = await store.read(out, 0, 14)
            tail = await store.read(out, 14 + len(big) - 3, 100)
            whole = b"".join([block async for block in store.stream(out)])
            return head, tail, whole
        finally:
            await store.aclose()

    head, tail, whole = asyncio.run(run())
    assert head == b"line 1\nline 2\n" and tail == b"yy\n"
    assert len(whole) == 14 + PART_BYTES + 101 and whole.endswith(b"y\n")
    keys = s3.keys(bucket, PREFIX)
    assert PREFIX + out in keys and keys[PREFIX + out]["ETag"].strip('"').endswith("-2")
    assert not [k for k in keys if out in k and "uncommitted" in k]


def test_an_upload_that_fails_midway_publishes_nothing(s3: S3Server, bucket: str) -> None:
    file_id = "file-00000000000000000000dead"

    async def blocks() -> AsyncIterator[bytes]:
        yield b"z" * (PART_BYTES + 1)  # one part up already
        raise ConnectionResetError("the client went away")

    async def run() -> None:
        store = S3FileStore(_settings(s3, bucket))
        try:
            with pytest.raises(ConnectionResetError):
                await store.put(file_id, blocks())
        finally:
            await store.aclose()

    asyncio.run(run())
    assert PREFIX + file_id not in s3.keys(bucket)
    uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not [u for u in uploads if u["Key"] == PREFIX + file_id], "the aborted upload's parts were kept"
