#!/usr/bin/env python3
"""The lock files agree with pyproject.toml, with each other and (--installed) with this environment.

requirements-dev.lock is what README and .ci/run install (the product with its `dev` extra);
requirements.lock is the product alone, for the Dockerfile, resolved under the dev lock's pins.
Both are written by .ci/relock. This check fails when:
- a requirement in pyproject (a dependency or an extra's) is missing from the lock that covers it,
  or pinned at a version outside its range;
- the lock holds a package that nothing in it or in pyproject asks for (a dependency dropped
  from pyproject, its lock not rewritten);
- a pin has no hash, so pip could not check what it downloads;
- the two locks pin one package at different versions;
- (--installed) what is installed here differs from the dev lock: the suite would test something else.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "llm-broker"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")


@dataclass
class Pin:
    version: Version
    marker: Marker | None
    hashes: int = 0
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, list[Pin]]:
    """name → its pins (a universal lock may pin one package twice, under exclusive markers)."""
    pins: dict[str, list[Pin]] = {}
    current: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if match := _PIN.match(raw):
            marker = match.group("marker")
            current = Pin(Version(match.group("version")), Marker(marker) if marker else None)
            pins.setdefault(canonicalize_name(match.group("name")), []).append(current)
            in_via = False
        elif current is None:
            continue
        elif line.startswith("--hash="):
            current.hashes += 1
        elif line.startswith("# via"):
            rest = line[len("# via"):].strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif in_via and line.startswith("#   "):
            current.via.add(line[4:].strip())
        elif line and not line.startswith("#"):
            raise ValueError(f"unexpected line in lock: {raw!r}")
    return pins


def _source(via: str) -> str:
    """`llm-broker (pyproject.toml)` → the project; `uvicorn` → uvicorn."""
    return PROJECT if via.startswith(f"{PROJECT} ") else canonicalize_name(via)


def check(pyproject: dict, lock: dict[str, list[Pin]], extras: tuple[str, ...], label: str) -> list[str]:
    project = pyproject["project"]
    specs = list(project["dependencies"]) + [s for extra in extras for s in project["optional-dependencies"][extra]]
    problems = []
    for spec in specs:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name not in lock:
            problems.append(f"{label}: pyproject asks for {spec!r}; the lock has no {name}")
            continue
        for pin in lock[name]:
            if not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{label}: {name}=={pin.version} is outside pyproject's {spec!r}")
    declared = {canonicalize_name(Requirement(spec).name) for spec in specs}
    for name, name_pins in lock.items():
        for pin in name_pins:
            if not pin.hashes:
                problems.append(f"{label}: {name}=={pin.version} has no hash")
            sources = {_source(via) for via in pin.via}
            if not sources & (set(lock) | {PROJECT}):
                problems.append(f"{label}: {name} is locked, but nothing locked asks for it (via {sorted(pin.via)})")
            if PROJECT in sources and name not in declared and not sources - {PROJECT}:
                problems.append(f"{label}: {name} is locked as pyproject's, but pyproject does not ask for it")
    return problems


def agree(runtime: dict[str, list[Pin]], dev: dict[str, list[Pin]]) -> list[str]:
    problems = []
    for name, pins in runtime.items():
        dev_versions = {pin.version for pin in dev.get(name, [])}
        for pin in pins:
            if pin.version not in dev_versions:
                problems.append(f"requirements.lock pins {name}=={pin.version}; "
                                f"requirements-dev.lock {sorted(map(str, dev_versions)) or 'not at all'}")
    return problems


def installed_matches(lock: dict[str, list[Pin]]) -> list[str]:
    problems = []
    for name, pins in lock.items():
        wanted = [pin.version for pin in pins if pin.marker is None or pin.marker.evaluate()]
        if not wanted:
            continue
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            problems.append(f"installed: {name} is locked at {wanted[0]} but not installed")
            continue
        if have not in wanted:
            problems.append(f"installed: {name} {have}, the lock says {wanted[0]}")
    return problems


def main(argv: list[str]) -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    try:
        dev = parse_lock((ROOT / "requirements-dev.lock").read_text())
        runtime = parse_lock((ROOT / "requirements.lock").read_text())
    except (OSError, ValueError) as exc:
        print(f"check_lock: {exc}", file=sys.stderr)
        return 1
    problems = (check(pyproject, dev, tuple(pyproject["project"]["optional-dependencies"]), "requirements-dev.lock")
                + check(pyproject, runtime, (), "requirements.lock") + agree(runtime, dev))
    if "--installed" in argv:
        problems += installed_matches(dev)
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    if problems:
        print("check_lock: run .ci/relock to rewrite the locks from pyproject.toml (README, Dependencies)",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
