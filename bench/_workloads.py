"""Key plans and request factories of the PostgreSQL benchmark.

Keys are plain strings chosen so that each scenario's promise holds:
hit cells cycle through a warmed working set, miss cells never repeat a key
(a fresh slice per cell), assignment misses use brand-new user ids (each one a
first-time assignment, i.e. an INSERT).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from _common import RequestFactory

from mcprouter.v1 import router_service_pb2 as rs

OPERATIONS = ("get_experiment", "get_user_profile", "get_assignment")


def experiment_id(i: int) -> str:
    """An experiment of the main data set."""
    return f"exp-{i:05d}"


def miss_experiment_id(cell: int, i: int) -> str:
    """An experiment that exists only to be read once, by miss cell ``cell``."""
    return f"expm-{cell}-{i:06d}"


def stampede_experiment_id(i: int) -> str:
    """An experiment read only by the single-flight stampede."""
    return f"exps-{i:03d}"


def user_id(i: int) -> str:
    """A user with a profile."""
    return f"u{i:06d}"


def get_experiment(exp: str) -> rs.RouteDataRequest:
    """A GetExperiment request."""
    return rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id=exp))


def get_user_profile(user: str) -> rs.RouteDataRequest:
    """A GetUserProfile request."""
    return rs.RouteDataRequest(get_user_profile=rs.GetUserProfileOperation(user_id=user))


def get_assignment(exp: str, user: str) -> rs.RouteDataRequest:
    """A GetAssignment request."""
    return rs.RouteDataRequest(
        get_assignment=rs.GetAssignmentOperation(experiment_id=exp, user_id=user)
    )


@dataclass(frozen=True)
class KeyPlan:
    """How many of each kind of key exist, and which keys each cell uses."""

    experiments: int
    users: int
    working_set: int
    miss_cap: int
    cells: int  # miss cells per operation (one per concurrency level)
    stampede_keys: int

    def all_experiments(self) -> list[str]:
        """Every experiment row to load."""
        main = [experiment_id(i) for i in range(self.experiments)]
        miss = [miss_experiment_id(c, i) for c in range(self.cells) for i in range(self.miss_cap)]
        stampede = [stampede_experiment_id(i) for i in range(self.stampede_keys)]
        return main + miss + stampede

    def all_users(self) -> list[str]:
        """Every profile row to load."""
        return [user_id(i) for i in range(self.users)]

    def warm_requests(self, op: str) -> list[rs.RouteDataRequest]:
        """One request per working-set key of ``op`` (to prime the cache)."""
        return [self.hit_factory(op)(i) for i in range(self.working_set)]

    def hit_factory(self, op: str) -> RequestFactory:
        """Requests cycling through the working set."""
        n_exp, ws = self.experiments, self.working_set
        if op == "get_experiment":
            return lambda n: get_experiment(experiment_id(n % min(ws, n_exp)))
        if op == "get_user_profile":
            return lambda n: get_user_profile(user_id(n % ws))
        return lambda n: get_assignment(experiment_id(n % ws % n_exp), user_id(n % ws))

    def miss_factory(self, op: str, cell: int) -> RequestFactory:
        """Requests whose keys were never read before (cell ``cell`` of ``op``)."""
        n_exp = self.experiments
        if op == "get_experiment":
            return lambda n: get_experiment(miss_experiment_id(cell, n))
        if op == "get_user_profile":
            first = self.working_set + cell * self.miss_cap
            return lambda n: get_user_profile(user_id(first + n))
        return lambda n: get_assignment(experiment_id(n % n_exp), f"am{cell}-{n:06d}")


class Zipf:
    """Zipf(s) ranks over ``n`` keys, mapped to users in a fixed random order."""

    def __init__(self, n: int, s: float, seed: int = 11) -> None:
        weights = (1.0 / (k**s) for k in range(1, n + 1))
        self._cumulative = list(itertools.accumulate(weights))
        self._rng = random.Random(seed)
        self._users = [user_id(i) for i in range(n)]
        self._rng.shuffle(self._users)

    def sequence(self, length: int) -> list[str]:
        """``length`` user ids drawn from the distribution."""
        total = self._cumulative[-1]
        draw: Callable[[], float] = self._rng.random
        cum = self._cumulative
        return [self._users[bisect.bisect_left(cum, draw() * total)] for _ in range(length)]


def ideal_hit_rate(window: list[str], seen_before: set[str]) -> float:
    """Best possible hit rate of ``window`` for an unbounded cache holding ``seen_before``."""
    if not window:
        return 0.0
    compulsory = len(set(window) - seen_before)
    return 1 - compulsory / len(window)
