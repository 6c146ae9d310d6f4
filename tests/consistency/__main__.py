"""``python -m tests.consistency --seed N --duration S``: a soak run; exit 1 on violations."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tests.consistency.faults import FAULTS
from tests.consistency.runner import Options, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.consistency",
        description="Jepsen-style checker: real instances, faults, history, invariants.",
    )
    parser.add_argument("--seed", type=int, default=1, help="workload seed")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of fault phases (whole cycles, >= 1)"
    )
    parser.add_argument(
        "--bound-ms", type=float, default=100.0, help="staleness bound with no fault active"
    )
    parser.add_argument(
        "--fault-bound-ms",
        type=float,
        default=None,
        help="bound during a fault and its grace window (default: L1 max age + retry interval)",
    )
    parser.add_argument(
        "--retry-interval-ms",
        type=float,
        default=None,
        help="longest wait of a follow-up retry after a heal (default: fault length + 500 ms)",
    )
    parser.add_argument(
        "--l1-max-age-s", type=float, default=1.0, help="CACHE_LOCAL_MAX_AGE_S of the instances"
    )
    parser.add_argument("--fault-s", type=float, default=2.0, help="how long each fault lasts")
    parser.add_argument(
        "--p-tight", type=float, default=0.05, help="share of calls with a 10-100 ms deadline"
    )
    parser.add_argument(
        "--p-cancel", type=float, default=0.04, help="share of calls cancelled by the client"
    )
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients")
    parser.add_argument("--instances", type=int, default=2, help="mcp-router processes (>= 2)")
    parser.add_argument(
        "--settle-s", type=float, default=15.0, help="bound on convergence and event settling"
    )
    parser.add_argument(
        "--phases",
        default=None,
        help=f"comma-separated subset of: {', '.join(f.name for f in FAULTS)} (default: all)",
    )
    parser.add_argument(
        "--relax-all-faults",
        action="store_true",
        help="apply the fault bound during every fault, not only those that cut Redis",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.instances < 2:
        sys.exit("--instances must be at least 2")
    options = Options(
        seed=args.seed,
        duration_s=args.duration,
        bound_ms=args.bound_ms,
        fault_bound_ms=args.fault_bound_ms,
        retry_interval_ms=args.retry_interval_ms,
        l1_max_age_s=args.l1_max_age_s,
        fault_s=args.fault_s,
        clients=args.clients,
        instances=args.instances,
        settle_s=args.settle_s,
        p_tight=args.p_tight,
        p_cancel=args.p_cancel,
        phases=tuple(args.phases.split(",")) if args.phases else None,
        relax_all_faults=args.relax_all_faults,
        keep=args.keep,
    )
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

    result = asyncio.run(run(options, log))
    print(result.report)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
