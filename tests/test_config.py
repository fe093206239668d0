"""Config loading: typed, env-expanded, and every error names the field path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import (
    ConfigError,
    MockProvider,
    OpenAIProvider,
    default_config,
    hash_key,
    load,
    resolve,
)
from broker.config.providers import KINDS

GOOD = """
redis_url: redis://127.0.0.1:6379/0
providers:
  local-vllm: {kind: openai, base_url: "http://127.0.0.1:8000/v1", api_key: "${VLLM_KEY}", concurrency: 8}
  mock: {kind: mock}
models:
  fast-chat:
    - {provider: local-vllm, model: "Qwen/Qwen2.5-7B-Instruct", input_per_mtok: 0.1}
tenants:
  acme: {keys: ["%s", {key: "%s", name: ci, rpm: 60}], rpm: 600}
""" % (hash_key("sk-acme"), hash_key("sk-acme-ci"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_good_config_decodes_into_typed_structs(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD), env={"VLLM_KEY": "secret-123"})
    provider = config.providers["local-vllm"]
    assert isinstance(provider, OpenAIProvider) and isinstance(config.providers["mock"], MockProvider)
    assert provider.api_key is not None and provider.api_key.reveal() == "secret-123"
    assert provider.concurrency == 8
    assert config.models["fast-chat"][0].model == "Qwen/Qwen2.5-7B-Instruct"
    assert config.tenants["acme"].rpm == 600
    ci = config.tenants["acme"].api_key("ci")
    assert ci is not None and ci.rpm == 60 and ci.key == hash_key("sk-acme-ci")


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD), env={"VLLM_KEY": "secret-123"})
    assert "secret-123" not in repr(config)


@pytest.mark.parametrize(
    ("edit", "env", "expected"),
    [
        (("concurrency: 8", "concurency: 8"), {"VLLM_KEY": "k"}, "`$.providers.local-vllm`"),
        (("kind: openai", "kind: anthropix"), {"VLLM_KEY": "k"}, "$.providers.local-vllm.kind"),
        (("concurrency: 8", "concurrency: many"), {"VLLM_KEY": "k"}, "$.providers.local-vllm.concurrency"),
        (("", ""), {}, "VLLM_KEY is not set - at `$.providers.local-vllm.api_key`"),
        (("provider: local-vllm", "provider: nowhere"), {"VLLM_KEY": "k"}, "$.models.fast-chat[0].provider"),
        (("rpm: 600", "rpm: 600, color: red"), {"VLLM_KEY": "k"}, "$.tenants.acme"),
        (('keys: ["sha256:', 'keys: ["plain:'), {"VLLM_KEY": "k"}, "$.tenants.acme.keys[0]"),
        (("base_url", "base_uri"), {"VLLM_KEY": "k"}, "$.providers.local-vllm"),
        (('{key: "sha256:', '{key: "plain:'), {"VLLM_KEY": "k"}, "$.tenants.acme.keys[1].key"),
        (("name: ci, rpm: 60", "name: ci, rpm: 0"), {"VLLM_KEY": "k"}, "$.tenants.acme.keys[1].rpm"),
        (("name: ci", "name: 'c i'"), {"VLLM_KEY": "k"}, "$.tenants.acme.keys[1].name"),
        (("acme:", "'ac{me}':"), {"VLLM_KEY": "k"}, "a name may hold only letters, digits"),
        (("  mock: {kind: mock}", "  'mo ck': {kind: mock}"), {"VLLM_KEY": "k"}, "- at `$.providers.mo ck`"),
        (("name: ci", "name: ci, colour: red"), {"VLLM_KEY": "k"}, "$.tenants.acme.keys[1]"),
        (("name: ci, rpm: 60}", "name: ci}, {key: '%s', name: ci}" % hash_key("x")), {"VLLM_KEY": "k"},
         "duplicate key name 'ci' - at `$.tenants.acme.keys[2].name`"),
        # Values Redis or the event loop cannot live with: SET EX 0, a keep-alive busy loop, no heartbeat.
        (("redis_url:", "server: {result_ttl_s: 0}\nredis_url:"), {"VLLM_KEY": "k"}, "$.server.result_ttl_s"),
        (("redis_url:", "server: {keepalive_interval_s: 0}\nredis_url:"), {"VLLM_KEY": "k"},
         "$.server.keepalive_interval_s"),
        (("redis_url:", "queue: {heartbeat_interval_s: 0}\nredis_url:"), {"VLLM_KEY": "k"},
         "$.queue.heartbeat_interval_s"),
        (("redis_url:", "queue: {max_attempts: 0}\nredis_url:"), {"VLLM_KEY": "k"}, "$.queue.max_attempts"),
        # A deadline Redis cannot hold as an expiry; aiohttp's 0, which means no timeout at all.
        (("redis_url:", "server: {request_timeout_s: 1e12}\nredis_url:"), {"VLLM_KEY": "k"},
         "$.server.request_timeout_s"),
        (("base_url", "connect_timeout_s: 0, base_url"), {"VLLM_KEY": "k"}, "connect_timeout_s"),
        (("base_url", "timeout_s: 0, base_url"), {"VLLM_KEY": "k"}, "timeout_s"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, edit: tuple[str, str], env: dict[str, str],
                                      expected: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as info:
        load(path, env=env)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_and_non_yaml_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "providers: [unclosed"), env={})
    assert str(info.value).startswith(f"{tmp_path / 'config.yaml'}: not valid YAML at line 1, column 21: expected")
    assert "<unicode string>" not in str(info.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        load(write(tmp_path, text), env={})


@pytest.mark.parametrize("kind", ["kind: anthropix", "label: x"])
def test_a_wrong_or_missing_kind_lists_the_kinds(tmp_path: Path, kind: str) -> None:
    assert {"anthropic", "azure", "bedrock", "cohere", "gemini", "mock", "openai", "vertex"} <= set(KINDS)
    # Every registered kind, in order (providers.KINDS): each new provider joins the list.
    kinds = re.escape(", ".join(KINDS))
    with pytest.raises(ConfigError, match=rf"\(kinds: {kinds}\) - at `\$.providers.local-vllm"):
        load(write(tmp_path, GOOD.replace("kind: openai", kind, 1)), env={"VLLM_KEY": "k"})


def test_invalid_config_fails_at_start_with_the_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("concurrency: 8", "concurrency: -1"))
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", "worker", "--config", str(path), "--provider", "mock"],
        capture_output=True, text=True, env={"VLLM_KEY": "k", "PATH": "/usr/bin:/bin"}, timeout=30,
    )
    assert proc.returncode == 2
    assert "$.providers.local-vllm.concurrency" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_config_serves_mock_models_to_the_dev_key() -> None:
    config = default_config()
    assert "mock-chat" in config.models
    assert all(isinstance(p, MockProvider) for p in config.providers.values())
    assert config.tenants["dev"].keys == [hash_key("sk-dev")]
    assert default_config("sk-other").tenants["dev"].keys == [hash_key("sk-other")]


def test_redis_url_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = resolve(str(path), env={"VLLM_KEY": "k", "REDIS_URL": "redis://elsewhere:6380/2"})
    assert config.redis_url == "redis://elsewhere:6380/2"
    assert resolve(None, env={"LLM_BROKER_CONFIG": str(path), "VLLM_KEY": "k"}).providers.keys() == {"local-vllm", "mock"}


def test_a_model_group_decodes_and_its_fallbacks_must_exist(tmp_path: Path) -> None:
    group = GOOD.replace("tenants:", """  grouped:
    strategy: weighted
    deployments: [{provider: mock, model: a, weight: 3}, {provider: mock, model: b}]
    fallbacks: [fast-chat]
tenants:""")
    config = load(write(tmp_path, group), env={"VLLM_KEY": "k"})
    grouped = config.group("grouped")
    assert grouped is not None and grouped.strategy == "weighted" and grouped.fallbacks == ["fast-chat"]
    assert [d.weight for d in grouped.deployments] == [3.0, 1.0]
    listed = config.group("fast-chat")
    assert listed is not None and listed.strategy == "priority" and listed.deployments[0].provider == "local-vllm"
    with pytest.raises(ConfigError, match=r"'nowhere' is not one - at `\$\.models\.grouped\.fallbacks\[0\]`"):
        load(write(tmp_path, group.replace("fallbacks: [fast-chat]", "fallbacks: [nowhere]")), env={"VLLM_KEY": "k"})
    with pytest.raises(ConfigError, match=r"\$\.models\.grouped\.strategy"):
        load(write(tmp_path, group.replace("strategy: weighted", "strategy: fastest")), env={"VLLM_KEY": "k"})


def test_replicated_durability_decodes_and_is_refused_on_a_cluster(tmp_path: Path) -> None:
    assert load(write(tmp_path, GOOD), env={"VLLM_KEY": "k"}).redis.durability == "async"  # the default
    replicated = GOOD.replace("redis_url:",
                              "redis: {durability: replicated, replicas: 2, wait_timeout_ms: 50}\nredis_url:")
    settings = load(write(tmp_path, replicated), env={"VLLM_KEY": "k"}).redis
    assert (settings.durability, settings.replicas, settings.wait_timeout_ms) == ("replicated", 2, 50)
    sentinel = replicated.replace("redis://127.0.0.1:6379/0", "redis+sentinel://127.0.0.1:26379/mymaster")
    assert load(write(tmp_path, sentinel), env={"VLLM_KEY": "k"}).redis.durability == "replicated"
    cluster = replicated.replace("redis://127.0.0.1:6379/0", "redis+cluster://127.0.0.1:7000")
    with pytest.raises(ConfigError, match=r"needs one primary .* Redis WAIT counts the replicas of one node"
                                          r".* - at `\$.redis.durability`"):
        load(write(tmp_path, cluster), env={"VLLM_KEY": "k"})
    with pytest.raises(ConfigError, match=r"\$REDIS_URL: `replicated` needs one primary"):
        resolve(str(write(tmp_path, replicated)), env={"VLLM_KEY": "k", "REDIS_URL": "redis+cluster://h:7000"})
    for bad, field in (("{durability: sync}", "durability"), ("{replicas: 0}", "replicas"),
                       ("{wait_timeout_ms: 0}", "wait_timeout_ms")):
        with pytest.raises(ConfigError, match=re.escape(f"$.redis.{field}")):
            load(write(tmp_path, GOOD.replace("redis_url:", f"redis: {bad}\nredis_url:")), env={"VLLM_KEY": "k"})
