"""The `llm-broker` command line: what each subcommand refuses, says and shows in --help."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli.main import build_parser
from broker.config import ConfigError
from tests.harness import REDIS_URL

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["dev", "api", "worker", "hash-key", "check-config", "dead"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLM_BROKER_CONFIG")}
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**base, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("args", [["api", "--port", "0"], ["worker", "--provider", "mock"], ["check-config"]])
def test_production_commands_refuse_to_run_without_a_config(args: list[str]) -> None:
    # Before, `api` served the built-in dev tenant (key sk-dev) on 0.0.0.0.
    proc = cli(*args, env={"REDIS_URL": REDIS_URL})
    assert proc.returncode == 2
    assert "needs a config: pass --config FILE or set $LLM_BROKER_CONFIG" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_api_factory_refuses_to_run_without_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.app import app_from_env

    monkeypatch.delenv("LLM_BROKER_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="LLM_BROKER_CONFIG"):
        app_from_env()


@pytest.mark.parametrize("command", ["dev", "api"])
def test_a_busy_port_is_one_clear_line(tmp_path: Path, command: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"redis_url: {REDIS_URL}\nproviders: {{mock: {{kind: mock}}}}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"llm-broker: cannot listen on 127.0.0.1:{port}: the port is in use (pick another with --port)"
    assert "Traceback" not in proc.stdout


def test_check_config_counts_in_words(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("providers: {mock: {kind: mock}}\nmodels: {m: [{provider: mock, model: m}]}\n")
    proc = cli("check-config", "--config", str(config))
    assert (proc.returncode, proc.stdout.strip()) == (0, "config OK: 1 provider, 1 model, 0 tenants")


def test_check_config_rejects_an_empty_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# nothing here yet\n")
    proc = cli("check-config", "--config", str(config))
    assert proc.returncode == 2
    assert f"{config}: the file is empty" in proc.stderr


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("llm-broker 0.")


def help_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--help"])
    return capsys.readouterr().out


def test_help_shows_the_defaults_that_differ_between_dev_and_api(capsys: pytest.CaptureFixture[str]) -> None:
    dev, api = help_text(capsys, "dev"), help_text(capsys, "api")
    assert "(default: 127.0.0.1)" in dev and "(default: 0.0.0.0)" in api
    assert "(default: 8080)" in dev and "(default: 8080)" in api
    assert "(default: 1)" in api  # --workers


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_describes_itself(capsys: pytest.CaptureFixture[str], command: str) -> None:
    usage, _, rest = help_text(capsys, command).partition("\n\n")
    description = rest.split("\n\n")[0]
    assert not description.startswith(("options:", "positional arguments:")), f"{command} has no description"
    assert len(description) > 30


def test_hash_key_explains_its_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert "Authorization: Bearer" in help_text(capsys, "hash-key")


def test_hash_key_reads_the_key_from_stdin_without_its_newline() -> None:
    # Keys typed as arguments end up in shell history and in `ps` for every user of the machine.
    expected = cli("hash-key", "sk-from-argv").stdout
    for given in ("sk-from-argv\n", "sk-from-argv", "sk-from-argv\r\n"):
        proc = subprocess.run([sys.executable, "-m", "broker.cli", "hash-key"], input=given, capture_output=True,
                              text=True, cwd=REPO, timeout=30)
        assert (proc.returncode, proc.stdout) == (0, expected), given


@pytest.mark.parametrize("given", ["", "\n", "two\nkeys\n"])
def test_hash_key_refuses_anything_but_one_key_on_stdin(given: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "broker.cli", "hash-key"], input=given, capture_output=True,
                          text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "hash-key needs one key" in proc.stderr
