"""Shared fixtures; what they are made of is in tests/harness.py (Redis, namespaces, configs) and
tests/stacks.py (broker processes)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_upstream import UpstreamServer
from tests.fakes.server import FakeServer
from tests.harness import (
    RUN,
    TEST_KEY,
    RedisServer,
    drop_namespace,
    new_namespace,
    share_the_default_ssl_context,
)
from tests.stacks import StackFactory, stacks


def pytest_configure(config: pytest.Config) -> None:
    share_the_default_ssl_context()
    config.addinivalue_line("markers", "upstream(serve=None, **options): the module's fake upstream: what "
                            "`serve()` returns, else the OpenAI fake with create_app's options (chunks=3, ...)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in the order xdist should hand them out (README's test command: `--dist loadfile
    --no-loadscope-reorder`): the chaos soak first (tests/test_chaos_soak.py, ~130 s in a subprocess
    of its own), so one worker starts it at once while the others run everything else, then the files with
    the most tests first (xdist's own reorder, which would put the one-test soak last), so the run does not
    end waiting on one big file. A plain run takes them in the same order; each test keeps its place in
    its file."""
    per_file = Counter(item.path for item in items)
    first_seen = {path: i for i, path in reversed(list(enumerate(item.path for item in items)))}
    items.sort(key=lambda item: (item.path.name != "test_chaos_soak.py", -per_file[item.path], first_seen[item.path]))


@pytest.fixture(scope="session", autouse=True)
def _sweep_run() -> Iterator[None]:
    """At the end, whatever this run left (a key written after its test's cleanup, by a process being stopped)."""
    yield
    drop_namespace(f"t-{RUN}-*")


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = new_namespace()
    yield ns
    drop_namespace(ns)


@pytest.fixture(scope="module")
def module_namespace() -> Iterator[str]:
    ns = new_namespace()
    yield ns
    drop_namespace(ns)


@pytest.fixture
def stack_factory(tmp_path: Path, namespace: str) -> Iterator[StackFactory]:
    with stacks(tmp_path, namespace) as make:
        yield make


@pytest.fixture(scope="module")
def module_stack_factory(tmp_path_factory: pytest.TempPathFactory, module_namespace: str) -> Iterator[StackFactory]:
    with stacks(tmp_path_factory.mktemp("stack"), module_namespace) as make:
        yield make


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    """The official SDK against the module's `base_url` fixture (its own broker stack)."""
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)


def _fake_upstream(node: pytest.Item | pytest.Collector) -> FakeServer:
    mark = node.get_closest_marker("upstream")
    options = dict(mark.kwargs) if mark else {}
    serve = options.pop("serve", None)
    return serve() if serve else UpstreamServer(**options)


@pytest.fixture(scope="module")
def upstream(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    """The fake upstream a module's stack calls, one for the whole module. The module's mark picks it:
    `pytestmark = pytest.mark.upstream(chunks=3)` for the OpenAI fake with those options (the default),
    `pytest.mark.upstream(serve=make_server)` for another fake."""
    with _fake_upstream(request.node) as server:
        yield server


@pytest.fixture
def own_upstream(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    """The same fake, started for one test: for tests that judge everything it has seen, or leave it stalled."""
    with _fake_upstream(request.node) as server:
        yield server


# ------------------------------------------------------------------ a Redis of a test's own


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.kill()
