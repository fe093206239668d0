"""pyproject.toml's `dependencies` are exactly what the product (api/, broker/, workers/) imports.

Tests and bench bring their own needs through the `dev` extra; an install of
the product alone should neither miss a module nor pull one nobody imports.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("api", "broker", "workers")
# Distribution name → the module it provides, where they differ.
MODULE_OF = {"pyyaml": "yaml", "prometheus-client": "prometheus_client"}
# Imported modules that a declared dependency brings and pins: FastAPI its starlette (a second
# requirement could only disagree with FastAPI's pin), uvicorn[standard] uvloop.
BROUGHT_BY = {"starlette": "fastapi", "uvloop": "uvicorn"}
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
