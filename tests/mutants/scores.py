"""Per-module mutation scores of the last `make mutants` run.

Reads mutmut's result files (``<mutants dir>/src/**/*.py.meta``) and prints, for
each mutated module, how many mutants were killed, survived, timed out, and so
on, with the score: killed, timed out or listed in EQUIVALENT.md, over the
mutants that were checked. Usage: ``python tests/mutants/scores.py .mutmut/mutants``.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit codes (mutmut/stats.py); anything else is "suspicious".
STATUS_BY_EXIT_CODE: dict[int | None, str] = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    37: "type check",
    None: "not checked",
}
COLUMNS = ("killed", "timeout", "equivalent", "survived", "no tests", "suspicious", "not checked")
EQUIVALENT_FILE = Path(__file__).with_name("EQUIVALENT.md")
# A justified mutant is listed as a bullet that starts with its name in backquotes.
EQUIVALENT_LINE = re.compile(r"^\s*[-*]\s+`([\w.]+__mutmut_\d+)`")


def equivalents() -> set[str]:
    """Names of the surviving mutants justified as equivalent in EQUIVALENT.md."""
    if not EQUIVALENT_FILE.exists():
        return set()
    lines = EQUIVALENT_FILE.read_text().splitlines()
    return {m.group(1) for line in lines if (m := EQUIVALENT_LINE.match(line))}


def module_scores(mutants_dir: Path) -> dict[str, Counter[str]]:
    """Count the mutants of each module by status."""
    justified = equivalents()
    scores: dict[str, Counter[str]] = {}
    for meta in sorted((mutants_dir / "src").rglob("*.py.meta")):
        relative = meta.relative_to(mutants_dir / "src").with_suffix("").with_suffix("")
        module = ".".join(relative.parts)
        counts: Counter[str] = Counter()
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = STATUS_BY_EXIT_CODE.get(code, "suspicious")
            if status == "survived" and name in justified:
                status = "equivalent"
            counts[status] += 1
        scores[module] = counts
    return scores


def main(argv: list[str]) -> int:
    """Print the table of scores."""
    mutants_dir = Path(argv[1] if len(argv) > 1 else ".mutmut/mutants")
    print(f"{'module':48} " + " ".join(f"{c:>11}" for c in COLUMNS) + "   total  score")
    for module, counts in module_scores(mutants_dir).items():
        total = sum(counts.values())
        checked = total - counts["not checked"]
        good = counts["killed"] + counts["timeout"] + counts["equivalent"]
        score = f"{100 * good / checked:5.1f}%" if checked else "    -"
        row = " ".join(f"{counts[c]:>11}" for c in COLUMNS)
        print(f"{module:48} {row} {total:>7}  {score}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
