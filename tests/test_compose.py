"""The Docker deployment files agree with the code they deploy.

docker-compose.yml, deploy/config.yaml and the Dockerfile are only checked by
`docker compose up` otherwise; these tests catch a renamed CLI flag, a worker
for a provider that is not configured, or a config that cannot load inside a
container, without needing Docker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from broker import config as config_module
from broker.cli.main import build_parser
from tests.stacks import StackFactory

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SAMPLE_CONFIG = ROOT / "deploy" / "config.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CONTAINER_CONFIG = "/etc/llm-broker/config.yaml"
BROKER_SUBCOMMANDS = {"api", "worker", "dev", "batch-worker"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _built_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _built_services().items() if _argv(svc)[:1] == ["worker"]}


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` as seen by a user who exported nothing."""
    def sub(m: re.Match[str]) -> str:
        op, default = m.group(2), m.group(3)
        if op in (":-", "-"):
            return default
        if op in (":?", "?"):
            raise AssertionError(f"compose requires {m.group(1)} to be set: {value!r}")
        return ""  # compose substitutes an unset variable with ""
    return _INTERPOLATION.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items() if v is not None}


def _config_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target = (str(volume).split(":") + [""])[:2]
        if target == CONTAINER_CONFIG:
            mounts.append((source, target))
    return mounts


def _sample_config() -> config_module.Config:
    # The environment every worker gets from compose (defaults only).
    env = _environment(next(iter(_workers().values())))
    return config_module.load(SAMPLE_CONFIG, env=env)


def test_redis_service_persists_jobs_with_append_only_file() -> None:
    redis = _services().get("redis")
    assert redis is not None, "docker-compose.yml has no `redis` service"
    argv = _argv(redis)
    assert argv[:1] == ["redis-server"], f"redis command should start redis-server, got {argv}"
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes", (
        f"redis must run with --appendonly yes (queued jobs survive a restart), got {argv}"
    )
    data_volumes = [v for v in redis.get("volumes", []) if str(v).endswith(":/data")]
    assert data_volumes, "redis /data (where the AOF lives) must be on a volume"
    volume_name = str(data_volumes[0]).split(":")[0]
    assert volume_name in (_compose().get("volumes") or {}), f"{volume_name!r} is not a declared named volume"
    assert "redis-cli" in " ".join(map(str, redis.get("healthcheck", {}).get("test", []))), (
        "redis needs a `redis-cli ping` healthcheck so api/workers can wait for service_healthy"
    )


@pytest.mark.parametrize("name", sorted(_built_services()))
def test_every_service_command_is_a_real_llm_broker_subcommand(name: str) -> None:
    argv = _argv(_built_services()[name])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"service {name!r}: `llm-broker {shlex.join(argv)}` is rejected by broker.cli's parser")
    assert args.command in BROKER_SUBCOMMANDS, f"service {name!r} runs {args.command!r}, not a server subcommand"
    assert args.config == CONTAINER_CONFIG, f"service {name!r} must read the mounted {CONTAINER_CONFIG}"


def test_every_built_service_uses_the_image_entrypoint_not_its_own() -> None:
    # The command is argv for ENTRYPOINT ["llm-broker"]; an entrypoint override would bypass it.
    for name, svc in _built_services().items():
        assert "entrypoint" not in svc, f"service {name!r} overrides the llm-broker entrypoint"


def test_every_worker_serves_a_provider_from_the_mounted_config() -> None:
    providers = _sample_config().providers
    workers = _workers()
    assert workers, "docker-compose.yml has no worker services"
    for name, svc in workers.items():
        provider = build_parser().parse_args(_argv(svc)).provider
        assert provider in providers, (
            f"service {name!r} runs --provider {provider!r}, not in deploy/config.yaml ({sorted(providers)})"
        )


def test_every_configured_provider_has_a_worker_service() -> None:
    served = {build_parser().parse_args(_argv(svc)).provider for svc in _workers().values()}
    missing = set(_sample_config().providers) - served
    assert not missing, f"providers with no worker service (their jobs would queue forever): {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(_built_services()))
def test_every_service_loads_the_shared_config_with_only_compose_defaults(name: str) -> None:
    svc = _built_services()[name]
    mounts = _config_mounts(svc)
    assert len(mounts) == 1, f"service {name!r} must mount exactly one config at {CONTAINER_CONFIG}, got {mounts}"
    source = (ROOT / mounts[0][0]).resolve()
    assert source == SAMPLE_CONFIG.resolve(), f"service {name!r} mounts {source}, not deploy/config.yaml"
    assert source.is_file(), f"mounted config {source} does not exist"
    env = _environment(svc)
    # `${VAR}` unset in the container makes the config fail to load, so compose must default each one.
    config = config_module.resolve(str(source), env=env)
    assert env.get("REDIS_URL", "").startswith("redis://redis:"), (
        f"service {name!r} must point REDIS_URL at the compose `redis` service, got {env.get('REDIS_URL')!r}"
    )
    assert config.redis_url == env["REDIS_URL"]


@pytest.mark.parametrize("name", sorted(_built_services()))
def test_every_broker_service_waits_for_a_healthy_redis(name: str) -> None:
    depends_on = _built_services()[name].get("depends_on") or {}
    assert isinstance(depends_on, dict) and depends_on.get("redis", {}).get("condition") == "service_healthy", (
        f"service {name!r} must depend on redis with condition: service_healthy"
    )


def test_worker_services_can_be_scaled() -> None:
    for name, svc in _workers().items():
        assert "container_name" not in svc, f"worker {name!r} has container_name; `--scale` needs unique names"
        assert not svc.get("ports"), f"worker {name!r} publishes host ports; replicas would collide"


def test_api_publishes_port_8080() -> None:
    api = _services()["api"]
    assert "8080:8080" in [str(p) for p in api.get("ports", [])]
    assert "--port" in _argv(api) and _argv(api)[_argv(api).index("--port") + 1] == "8080"


def test_sample_tenant_key_is_sk_demo() -> None:
    demo = _sample_config().tenants["demo"]
    assert config_module.hash_key("sk-demo") in demo.keys


def _dockerfile_instruction(keyword: str) -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.split()[:1] == [keyword]]
    assert lines, f"Dockerfile has no {keyword}"
    value = lines[-1].split(None, 1)[1]
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"Dockerfile {keyword} should be exec form (a JSON array), got {value!r}")
    return parsed


def test_dockerfile_entrypoint_is_the_llm_broker_console_script() -> None:
    assert _dockerfile_instruction("ENTRYPOINT") == ["llm-broker"]
    assert 'llm-broker = "broker.cli.main:main"' in (ROOT / "pyproject.toml").read_text()


def test_dockerfile_default_command_is_a_real_llm_broker_subcommand() -> None:
    argv = _dockerfile_instruction("CMD")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"Dockerfile CMD `llm-broker {shlex.join(argv)}` is rejected by broker.cli's parser")
    assert args.command == "api" and args.config == CONTAINER_CONFIG


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.split()[:1] == ["USER"]]
    assert users and users[-1] not in ("root", "0"), "the image must drop root"


# ---- the `docker run` examples in the Dockerfile's header

_RUN_OPTIONS = {"-p", "-v", "-e", "--env-file", "--network", "--name", "--add-host"}  # take a value


def _docker_runs() -> list[dict[str, Any]]:
    """Each `docker run` example (backslash continuations joined) as options, image and argv."""
    text = "\n".join(line[1:].strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#"))
    commands = re.findall(r"docker run ((?:[^\n]*\\\n)*[^\n]*)", text)
    runs = []
    for command in commands:
        tokens = shlex.split(command.replace("\\\n", " ").replace("$PWD/", "./"))
        options: dict[str, list[str]] = {}
        while tokens and tokens[0].startswith("-"):
            option = tokens.pop(0)
            options.setdefault(option, []).append(tokens.pop(0) if option in _RUN_OPTIONS else "")
        assert tokens, f"no image in `docker run {command}`"
        runs.append({"options": options, "image": tokens[0], "argv": tokens[1:] or _dockerfile_instruction("CMD")})
    return runs


def _run_env(run: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in run["options"].get("--env-file", []):
        lines = (ROOT / path).read_text().splitlines()
        env.update(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    env.update(item.split("=", 1) for item in run["options"].get("-e", []))
    return env


def test_dockerfile_run_examples_load_their_config_and_reach_their_redis() -> None:
    runs = [run for run in _docker_runs() if not run["image"].startswith("redis:")]
    built = re.search(r"docker build -t (\S+)", DOCKERFILE.read_text())
    assert built and built.group(1) == "llm-broker"
    network_names = set(re.findall(r"--name (\S+) --network (\S+)", DOCKERFILE.read_text()))
    for run in runs:
        args = build_parser().parse_args(run["argv"])
        if args.command == "dev":  # built-in config, in-process Redis; reachable through -p only on 0.0.0.0
            assert args.host == "0.0.0.0" and run["options"]["-p"] == [f"{args.port}:{args.port}"]
            continue
        mounts = dict(reversed(volume.split(":")[:2]) for volume in run["options"].get("-v", []))
        assert args.config in mounts, f"{run['argv']} reads {args.config}, which no -v mounts"
        # Every ${VAR} the mounted config names is passed (loading fails otherwise), and Redis is not
        # 127.0.0.1, which inside the container is the container itself.
        config = config_module.resolve(str(ROOT / mounts[args.config]), env=_run_env(run))
        host = config.redis_url.split("://", 1)[1].split(":", 1)[0].split("/", 1)[0]
        assert host not in ("127.0.0.1", "localhost")
        networks = run["options"].get("--network", [])
        assert (host, networks[0] if networks else "") in network_names, f"nothing runs {host} on the run's network"
        if args.command == "worker":
            assert args.provider in config.providers
        else:
            assert run["options"]["-p"] == [f"{args.port}:{args.port}"]
    assert {run["image"] for run in runs} == {"llm-broker"}  # as `docker build -t` names it
    assert {build_parser().parse_args(run["argv"]).command for run in runs} == {"dev", "api", "worker"}


# ---- healthchecks: the commands compose runs, run here against a real API and worker

def _run_check(script: str) -> int:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30).returncode


def _healthcheck(name: str) -> list[str]:
    check = _services()[name].get("healthcheck") or {}
    test = [str(a) for a in check.get("test", [])]
    assert test[:1] == ["CMD"], f"service {name!r} needs an exec-form healthcheck (the image has no shell tools)"
    return test[1:]


def test_api_healthcheck_is_readyz_on_the_port_the_api_listens_on() -> None:
    argv = _healthcheck("api")
    port = _argv(_services()["api"])[_argv(_services()["api"]).index("--port") + 1]
    assert argv[:2] == ["python", "-c"] and f"http://127.0.0.1:{port}/readyz" in argv[2]


def test_api_healthcheck_passes_only_once_the_broker_is_ready(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock"}}, {"m": [{"provider": "mock", "model": "m"}]})
    port = urlsplit(stack.api()).port
    script = _healthcheck("api")[2].replace(":8080/", f":{port}/")
    assert _run_check(script) != 0  # no worker yet: /readyz is 503
    stack.worker("mock")
    assert _run_check(script) == 0


@pytest.mark.parametrize("name", sorted(_workers()))
def test_worker_healthcheck_reads_the_health_file_the_worker_touches(name: str, stack_factory: StackFactory,
                                                                   tmp_path: Path) -> None:
    argv = _argv(_workers()[name])
    health_file = build_parser().parse_args(argv).health_file
    assert health_file is not None, f"worker {name!r} touches no --health-file, so its healthcheck cannot pass"
    script = _healthcheck(name)[2]
    assert _healthcheck(name)[:2] == ["python", "-c"] and f"'{health_file}'" in script
    local = tmp_path / "alive"
    script = script.replace(f"'{health_file}'", repr(str(local)))
    assert _run_check(script) != 0  # no file: the worker never reached Redis
    stack = stack_factory({"mock": {"kind": "mock"}}, {"m": [{"provider": "mock", "model": "m"}]})
    stack.worker("mock", "--health-file", str(local))
    assert _run_check(script) == 0
    stale = time.time() - 60
    stack.stop()  # no more heartbeats...
    os.utime(local, (stale, stale))  # ...and the last one long ago
    assert _run_check(script) != 0
