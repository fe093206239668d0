"""Loading the config: YAML → `${ENV}` expanded → the typed tree (broker/config/model.py) → checks.

Every error is a ConfigError naming the file and the field path. Config is loaded
once at start-up and passed down; nothing reads the environment at import time,
so tests and `dev` mode never fight over it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from broker.config import checks as config_checks
from broker.config import legacy
from broker.config.model import (
    DEV_API_KEY,
    Config,
    Deployment,
    ModelGroup,
    Tenant,
    hash_key,
)
from broker.config.providers import KINDS, ProviderConfig
from broker.config.types import Secret


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `2024-10-21` as a date; no setting is a date, and an Azure `api_version` is
    written just so, so timestamps stay the strings they were written as."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class ConfigError(Exception):
    """An invalid config file; the message names the file and the field path."""


def default_config(dev_api_key: str = DEV_API_KEY) -> Config:
    """What `llm-broker dev` serves with no config file: the mock provider only."""
    return validate(
        {
            "providers": {
                "mock": {"kind": "mock"},
                # Streams visibly token by token: handy to watch SSE work.
                "mock-slow": {"kind": "mock", "tokens": 40, "token_delay_s": 0.05},
            },
            "models": {
                "mock-chat": [{"provider": "mock", "model": "mock-chat"}],
                "mock-chat-slow": [{"provider": "mock-slow", "model": "mock-chat-slow"}],
                "gpt-4o-mini": [{"provider": "mock", "model": "gpt-4o-mini"}],
            },
            # Limits far above what a laptop serves, so every answer shows the x-ratelimit-* headers.
            "tenants": {"dev": {"keys": [hash_key(dev_api_key)], "rpm": 100_000, "tpm": 100_000_000}},
        },
        source="<built-in default>",
    )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(node: Any, path: str, env: dict[str, str], source: str) -> Any:
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                raise ConfigError(f"{source}: environment variable {name} is not set - at `{path}`")
            return env[name]
        return _ENV_REF.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}", env, source) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", env, source) for i, v in enumerate(node)]
    return node


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def validate(raw: Any, *, source: str, env: dict[str, str] | None = None) -> Config:
    expanded = legacy.migrate(_expand(raw if raw is not None else {}, "$", dict(os.environ) if env is None else env,
                                      source))
    try:
        config = msgspec.convert(expanded, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_with_kinds(_locate(expanded, exc))}") from None
    if problem := config_checks.first_problem(config):
        raise ConfigError(f"{source}: {problem}")
    return config


_SECTIONS: dict[str, Any] = {"providers": ProviderConfig, "models": list[Deployment], "tenants": Tenant}


def _locate(raw: Any, exc: msgspec.ValidationError) -> str:
    """msgspec writes `$.providers[...]` for dict entries; name the entry instead.

    Re-decode each entry of the keyed sections on its own to find the one at
    fault, and splice its name into the path.
    """
    if "[...]" not in str(exc) or not isinstance(raw, dict):
        return str(exc)
    for section, entry_type in _SECTIONS.items():
        entries = raw.get(section)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if section == "models" and isinstance(entry, dict):
                entry_type = ModelGroup  # the mapping form: its own errors, not "expected array"
            elif section == "models":
                entry_type = list[Deployment]
            try:
                msgspec.convert(entry, entry_type, dec_hook=_dec_hook)
            except msgspec.ValidationError as inner:
                text = str(inner)
                if " - at `$" not in text:  # msgspec leaves out a root path
                    return f"{text} - at `$.{section}.{name}`"
                return text.replace("- at `$", f"- at `$.{section}.{name}", 1)
    return str(exc)


def _with_kinds(message: str) -> str:
    """A wrong or missing provider `kind` is answered with the kinds there are."""
    if (message.startswith("Invalid value") and message.endswith(".kind`")) or "field `kind`" in message:
        text, at, path = message.partition(" - at ")
        return f"{text} (kinds: {', '.join(KINDS)}){at}{path}"
    return message


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML{_yaml_where(exc)}") from None
    if raw is None:  # nothing but comments, or nothing at all: a wrong or truncated file
        raise ConfigError(f"{source}: the file is empty: a config names its providers, models and tenants")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping - at `$`")
    return validate(raw, source=source, env=env)


def _yaml_where(exc: yaml.YAMLError) -> str:
    """PyYAML names the text `<unicode string>`; give the line and column in the file instead."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f": {exc}"
    mark = exc.problem_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context and exc.context_mark:
        where += f" ({exc.context} from line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    return where


def resolve(path: str | None, env: dict[str, str] | None = None, *, dev_api_key: str = DEV_API_KEY) -> Config:
    """--config PATH, else $LLM_BROKER_CONFIG, else the built-in default; $REDIS_URL overrides."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("LLM_BROKER_CONFIG")
    config = load(path, env) if path else default_config(dev_api_key)
    if env.get("REDIS_URL"):
        if problem := config_checks.redis_url_problem(env["REDIS_URL"]):
            raise ConfigError(f"$REDIS_URL: {problem}")
        if problem := config_checks.durability_problem(env["REDIS_URL"], config.redis):
            raise ConfigError(f"$REDIS_URL: {problem} (config `redis.durability`)")
        config = msgspec.structs.replace(config, redis_url=env["REDIS_URL"])
    return config


def with_redis_url(config: Config, redis_url: str) -> Config:
    return msgspec.structs.replace(config, redis_url=redis_url)


def with_files_dir(config: Config, files_dir: str) -> Config:
    return msgspec.structs.replace(config, batches=msgspec.structs.replace(config.batches, files_dir=files_dir))

