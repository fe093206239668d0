"""The batch worker rides out losing Redis (its own redis-server, persistent: this test kills it), as a
Sentinel failover loses the primary: arq's worker stops on a Redis error, and broker/batches/worker.py
`run` starts it again, which resumes the batch from its saved state."""

from __future__ import annotations

import shutil
import time

import openai
import pytest

from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY, RedisServer
from tests.stacks import StackFactory
from tests.test_batches import by_custom_id, chat_line, jsonl, wait_until

pytestmark = [pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server"),
              pytest.mark.upstream(chunks=3)]


def test_a_batch_in_progress_when_redis_dies_completes_when_it_returns(
        stack_factory: StackFactory, persistent_redis: RedisServer, upstream: UpstreamServer) -> None:
    stack = stack_factory({"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 8}},
                          {"hold": [{"provider": "up", "model": "hold"}]}, redis_url=persistent_redis.url,
                          queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0}, batches={"max_in_flight": 8})
    base_url = stack.up("up")
    batch_worker = stack.batch_worker()
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=8)
    lines = [chat_line(f"line-{i}", "hold") for i in range(24)]  # ~3 s at 8 at a time
    uploaded = client.files.create(file=("outage.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_until(client, batch.id, "in_progress")
    time.sleep(1.0)

    persistent_redis.kill()
    time.sleep(2.0)  # long enough for arq's poll to hit the dead connection and stop
    persistent_redis.start()  # same port, its data back from the append-only file

    done = wait_until(client, batch.id, "completed", timeout_s=120)
    assert batch_worker.popen.poll() is None, batch_worker.output()  # the process rode it out
    assert "batch worker lost Redis" in batch_worker.output()  # ...by starting its arq worker again
    output = by_custom_id(client, done.output_file_id)
    assert set(output) == {f"line-{i}" for i in range(24)} and done.error_file_id is None
    assert all(line["response"]["status_code"] == 200 for line in output.values())
