"""Write ``spec/assignment_test_vectors.json`` from ``mcprouter.server.postgres.assignment``.

Run once when the vectors change (they should not: changing the algorithm
moves users between variants)::

    .venv/bin/python spec/generate_assignment_vectors.py          # rewrite
    .venv/bin/python spec/generate_assignment_vectors.py --check  # exit 1 on drift

The file is the published contract; ``tests/unit/test_assignment.py`` checks
the implementation against the committed file, not against this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mcprouter.server.postgres.assignment import BUCKETS, assign, bucket_bounds, choose_variant

OUTPUT = Path(__file__).with_name("assignment_test_vectors.json")

ALGORITHM = {
    "bucket": ("bucket = uint64_big_endian(SHA-256(UTF-8(salt + ':' + user_id))[0:8]) mod 10000"),
    "variant": (
        "total = sum of weights; cum_i = w_0 + ... + w_i; variant i owns buckets "
        "[floor(10000 * cum_{i-1} / total), floor(10000 * cum_i / total)) with cum_-1 = 0; "
        "choose the first i (in the given order) with bucket < floor(10000 * cum_i / total). "
        "Integer arithmetic only."
    ),
    "weights": "integers in 1..10000; at least one variant; 0 is invalid",
    "buckets": BUCKETS,
}

SALTS = ["", "a1b2c3d4e5f60718", "exp-2024-checkout", "0000000000000000"]
USERS = [
    "user-1",
    "user-2",
    "alice",
    "u_42",
    "0",
    "user.with.dots",
    "U-UPPER-case",
    "x" * 128,
]
WEIGHT_SETS: list[list[tuple[str, int]]] = [
    [("control", 50), ("treatment", 50)],
    [("control", 1), ("treatment", 1)],
    [("control", 90), ("treatment", 10)],
    [("a", 1), ("b", 2), ("c", 3)],
    [("a", 3333), ("b", 3333), ("c", 3334)],
    [("control", 1), ("treatment", 9999)],
    [("a", 10), ("b", 20), ("c", 30), ("d", 40)],
    [("control", 5000), ("b", 2500), ("c", 2500)],
    [(f"v{i}", 1) for i in range(7)],
    [("control", 7), ("treatment", 13)],
    [("a", 10000), ("b", 10000), ("c", 1)],
    [("only", 1)],
]

# Buckets straddling every bound of a few weight sets: the off-by-one cases.
BOUNDARY_SETS: list[list[tuple[str, int]]] = [
    [("control", 50), ("treatment", 50)],
    [("a", 1), ("b", 2), ("c", 3)],
    [(f"v{i}", 1) for i in range(7)],
    [("a", 10000), ("b", 10000), ("c", 1)],
    [("control", 7), ("treatment", 13)],
]


def _variants_json(variants: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"name": name, "weight": weight} for name, weight in variants]


def build() -> dict[str, Any]:
    """Build the vector document."""
    cases: list[dict[str, Any]] = []
    # Walk salts and users round-robin so every weight set meets several of each.
    index = 0
    for variants in WEIGHT_SETS:
        for _ in range(5):
            salt = SALTS[index % len(SALTS)]
            user_id = USERS[index % len(USERS)]
            index += 1
            bucket, variant = assign(salt, user_id, variants)
            cases.append(
                {
                    "salt": salt,
                    "user_id": user_id,
                    "variants": _variants_json(variants),
                    "bucket": bucket,
                    "variant": variant,
                }
            )
    boundary: list[dict[str, Any]] = []
    for variants in BOUNDARY_SETS:
        edges: set[int] = {0, BUCKETS - 1}
        for upper in bucket_bounds([w for _, w in variants])[:-1]:
            edges.update({upper - 1, upper})
        for bucket in sorted(b for b in edges if 0 <= b < BUCKETS):
            boundary.append(
                {
                    "bucket": bucket,
                    "variants": _variants_json(variants),
                    "variant": choose_variant(bucket, variants),
                }
            )
    return {
        "description": "Published test vectors for mcp-router experiment assignment.",
        "version": 1,
        "algorithm": ALGORITHM,
        "cases": cases,
        "choose_variant_cases": boundary,
    }


def render() -> str:
    """The file's exact text."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    """Rewrite the file, or with ``--check`` report whether it is current."""
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
