"""The provider under test, its fake upstream, and a stack serving it.

Package-scoped: pytest runs the tests of this directory grouped by provider, so
each provider's fake and stack start once for all the modules here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.server import FakeServer
from tests.harness import drop_namespace, new_namespace
from tests.providers.case import ProviderCase
from tests.stacks import stacks


@pytest.fixture(scope="package")
def provider(request: pytest.FixtureRequest) -> ProviderCase:
    """Given by `scenario()` (tests/providers/__init__.py), or by the `provider` mark of a provider's own module."""
    case: ProviderCase = request.param
    return case


@pytest.fixture(scope="package")
def upstream(provider: ProviderCase) -> Iterator[FakeServer]:
    with provider.serve() as server:
        yield server


@pytest.fixture(scope="package")
def base_url(provider: ProviderCase, upstream: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A namespace of its own: the next provider's stack must not share its streams.
    namespace = new_namespace()
    with stacks(tmp_path_factory.mktemp(provider.name), namespace) as make:
        yield provider.start(make, upstream)
    drop_namespace(namespace)
