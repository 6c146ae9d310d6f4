"""What the Dockerfile builds, reproduced without a Docker engine.

* ``dockerfile_copies``: the build-context paths the Dockerfile's ``COPY``
  lines take (``.dockerignore`` applied), so a test can lay out exactly the
  files the image build sees and build the wheel from them;
* ``dependency_closure``: the distributions ``pip install <wheel>`` would
  bring in (the wheel's ``Requires-Dist`` without extras, recursively),
  resolved against the project's own environment, so a fresh virtualenv can
  get the image's dependency set without downloading anything;
* ``link_distributions``: a folder of symlinks to exactly those
  distributions' top-level files, for that virtualenv's ``.pth``.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import os
import re
import shlex
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Dockerfile:
    """The parts of a Dockerfile the image test reproduces."""

    base_image: str
    copies: tuple[tuple[tuple[str, ...], str], ...]  # (sources, destination)
    env: dict[str, str]
    healthcheck: tuple[str, ...]
    cmd: tuple[str, ...]


def _logical_lines(text: str) -> Iterator[str]:
    line = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            line += stripped[:-1] + " "
            continue
        yield line + stripped
        line = ""


def _exec_form(text: str) -> tuple[str, ...]:
    text = text.strip()
    if text.startswith("["):
        return tuple(re.findall(r'"((?:[^"\\]|\\.)*)"', text))
    return ("/bin/sh", "-c", text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Read FROM, COPY (build-context sources only), ENV, HEALTHCHECK and CMD."""
    base = ""
    copies: list[tuple[tuple[str, ...], str]] = []
    env: dict[str, str] = {}
    healthcheck: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            base = rest.split()[0]
        elif instruction in ("COPY", "ADD"):
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(rest)):
                continue  # from another stage, not from the build context
            copies.append((tuple(words[:-1]), words[-1]))
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
        elif instruction == "HEALTHCHECK":
            _, _, command = rest.partition("CMD ")
            healthcheck = _exec_form(command)
        elif instruction == "CMD":
            cmd = _exec_form(rest)
    return Dockerfile(base, tuple(copies), env, healthcheck, cmd)


def _ignored(relative: str, patterns: Iterable[str]) -> bool:
    parts = relative.split("/")
    for line in patterns:
        pattern = line.strip().rstrip("/")
        if not pattern or pattern.startswith("#"):
            continue
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(p, pattern[3:]) for p in parts):
                return True
        elif fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(parts[0], pattern):
            return True
    return False


def lay_out_context(root: Path, dockerfile: Dockerfile, target: Path) -> list[str]:
    """Copy what the COPY lines take from ``root`` into ``target``; return the files copied."""
    ignore_file = root / ".dockerignore"
    patterns = ignore_file.read_text().splitlines() if ignore_file.exists() else []
    copied: list[str] = []
    for sources, destination in dockerfile.copies:
        for source in sources:
            src = root / source
            # "COPY a b ./" keeps names; "COPY dir dir" copies dir's content into dir.
            dest = target / (source if destination.endswith("/") else destination)
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(root).as_posix()
                if _ignored(relative, patterns):
                    continue
                out = dest if src.is_file() else dest / file.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
                copied.append(relative)
    return copied


def _wanted(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras})


def dependency_closure(requirements: Iterable[str]) -> dict[str, md.Distribution]:
    """Installed distributions that ``requirements`` (and theirs) pull in, by name.

    Markers are evaluated for this interpreter; a dependency's extras are followed.
    """
    found: dict[str, md.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [Requirement(r) for r in requirements]
    while queue:
        requirement = queue.pop()
        if not _wanted(requirement, frozenset()):
            continue
        name = canonicalize_name(requirement.name)
        extras = frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = md.distribution(requirement.name)
        found[name] = dist
        for child in dist.requires or []:
            parsed = Requirement(child)
            if _wanted(parsed, extras):
                parsed.marker = None
                queue.append(parsed)
    return found


def link_distributions(dists: Iterable[md.Distribution], target: Path) -> list[str]:
    """Symlink every top-level file or folder the distributions installed into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    linked: set[str] = set()
    for dist in dists:
        site = Path(str(dist.locate_file(""))).resolve()
        for file in dist.files or []:
            top = Path(file).parts[0]
            if top == ".." or top.endswith(".pth") or top in linked or top == "__pycache__":
                continue
            source = site / top
            if source.exists():
                os.symlink(source, target / top)
                linked.add(top)
    return sorted(linked)
