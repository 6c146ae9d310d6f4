"""Puts the generated contract into the wheel as ``mcprouter/v1``.

The layout keeps generated code in ``generated/python`` (outside this
project), so a regular wheel copies it in. Editable installs must not: hatch
would copy it into site-packages as well, where a stale copy would shadow
what ``make generate`` writes; ``dev-mode-dirs`` puts the folder itself on
the path instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

GENERATED = Path(__file__).resolve().parents[2] / "generated" / "python" / "mcprouter" / "v1"


class GeneratedContractHook(BuildHookInterface):  # type: ignore[type-arg,misc,unused-ignore]
    """Adds ``generated/python/mcprouter/v1`` to standard (non-editable) wheels."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Force-include the generated package unless this is an editable build."""
        if version == "editable":
            return
        if not (GENERATED / "router_service_pb2.py").is_file():
            raise RuntimeError(f"{GENERATED} is missing: build from a repository checkout")
        build_data["force_include"][str(GENERATED)] = "mcprouter/v1"
