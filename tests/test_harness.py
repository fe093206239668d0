"""The test harness keeps to itself on a shared Redis (tests/harness.py), and README says how to move it."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.harness import RUN, TEST_DB, find_redis

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_local_redis_is_used_on_a_db_of_the_tests_own() -> None:
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    assert TEST_DB != 0 and find_redis({}) == f"redis://127.0.0.1:6379/{TEST_DB}"
    assert find_redis({"LLM_BROKER_TEST_REDIS_URL": "redis://elsewhere:6380/3"}) == "redis://elsewhere:6380/3"


def test_every_namespace_is_under_the_runs_prefix(namespace: str, module_namespace: str) -> None:
    assert namespace.startswith(f"t-{RUN}-") and module_namespace.startswith(f"t-{RUN}-")
    assert namespace != module_namespace


def test_readme_says_how_to_point_the_tests_at_another_redis() -> None:
    text = README.read_text()
    command = text[text.index("<!-- test-command -->"):text.index("<!-- /test-command -->")]
    rest = text.replace(command, "")
    assert "LLM_BROKER_TEST_REDIS_URL" in rest and f"DB {TEST_DB}" in rest
