"""Named semantic mutants of the code that carries the consistency guarantees.

Each mutant is a deliberate, realistic mistake (the kind a refactoring makes)
written as exact text edits of the source. ``test_semantic_mutants.py``
applies each one to a scratch copy of ``service/`` and proves that the tests
named beside it fail. An edit whose ``original`` text is no longer in the
source fails that check loudly: when the code moves, the mutant must move too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    """Replace ``original`` (which must occur exactly once) by ``mutated`` in ``path``."""

    path: str  # relative to service/mcprouter/server
    original: str
    mutated: str


@dataclass(frozen=True)
class Mutant:
    """A mistake and the tests that must catch it."""

    name: str
    why: str
    edits: tuple[Edit, ...]
    killed_by: tuple[str, ...]  # pytest node ids or files, relative to the repository


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "invalidation-before-commit",
        "the classic cache-aside race: a reader between the invalidation and the commit "
        "caches the old value for a whole TTL",
        (
            Edit(
                "postgres/processor.py",
                """        stored = await self._writes.run(
            lambda: self._store.upsert_experiment(op.experiment),
            lambda: self._cache.after_write([key], keys.derived_patterns(exp_id)),
            settled=self._store.write_settled,
        )""",
                """        await self._cache.after_write([key], keys.derived_patterns(exp_id))
        stored = await self._writes.run(
            lambda: self._store.upsert_experiment(op.experiment),
            lambda: self._cache.after_write([]),
            settled=self._store.write_settled,
        )""",
            ),
        ),
        (
            "tests/integration/test_consistency_paths.py::"
            "test_the_invalidation_follows_the_commit_not_precedes_it",
        ),
    ),
    Mutant(
        "single-flight-detach-removed",
        "a load that read the store before a write keeps serving callers that arrive after it",
        (
            Edit(
                "cache/core.py",
                """        for key in [*keys, *self._flights.matching(patterns)]:
            self._flights.forget(key)""",
                """        pass""",
            ),
        ),
        (
            "tests/integration/test_consistency_paths.py::"
            "test_a_write_detaches_the_load_in_flight_on_its_own_instance",
        ),
    ),
    Mutant(
        "invalidation-skipped-on-cancel",
        "the write runs in the caller's task and a cancellation is taken for 'nothing written'",
        (
            Edit(
                "writes.py",
                """        task = asyncio.create_task(self._write(commit, follow_up, settled, deadline), name="write")
        self._track(task)
        return await asyncio.shield(task)""",
                """        return await self._write(commit, follow_up, settled, deadline)""",
            ),
            Edit(
                "writes.py",
                """    return isinstance(exc, RouterError) and not isinstance(exc, Unavailable)""",
                """    return isinstance(exc, (RouterError, asyncio.CancelledError)) and not isinstance(
        exc, Unavailable
    )""",
            ),
        ),
        (
            "tests/integration/test_consistency_paths.py::"
            "test_path1_write_cancelled_while_its_commit_returns_is_still_invalidated",
        ),
    ),
    Mutant(
        "store-without-lease-check",
        "a load stores its value whether or not an invalidation took its lease meanwhile",
        (
            Edit(
                "cache/loading.py",
                """if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0""",
                """redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1""",
            ),
        ),
        (
            "tests/integration/test_consistency_paths.py::"
            "test_path2_pattern_and_entity_invalidations_break_the_leases_they_match",
            "tests/integration/test_consistency_paths.py::"
            "test_path2_a_caller_that_lost_the_lease_does_not_store_a_pre_write_value",
        ),
    ),
    Mutant(
        "dedup-done-before-insert",
        "the record says 'stored' while the insert is in flight: a retry is answered "
        "DUPLICATE, and if the insert then fails the acknowledged event is nowhere",
        (
            Edit(
                "clickhouse/tracking.py",
                """        try:
            await self._batcher.add(new, start_by=claim.start_by)""",
                """        await self._dedup.mark_done([claim])
        try:
            await self._batcher.add(new, start_by=claim.start_by)""",
            ),
        ),
        (
            "tests/integration/test_event_consistency.py::"
            "test_path5_a_retry_while_the_first_attempt_is_in_flight_is_never_duplicate",
        ),
    ),
    Mutant(
        "restart-settles-only-absent-records",
        "settling after a restart leaves other claims' pending records alone, so the "
        "records a killed run left pending expire and a retry stores a second copy",
        (
            Edit(
                "clickhouse/dedup.py",
                """  if redis.call('GET', key) ~= '1' then redis.call('SET', key, '1', 'EX', ARGV[1]); n = n + 1 end""",
                """  if not redis.call('GET', key) then redis.call('SET', key, '1', 'EX', ARGV[1]); n = n + 1 end""",
            ),
        ),
        (
            "tests/integration/test_event_consistency.py::"
            "test_path5_killed_after_its_insert_a_restarted_instance_settles_the_pending_records",
        ),
    ),
    Mutant(
        "ambiguous-write-not-settled",
        "after a write whose outcome is unknown the writer invalidates at once and after a "
        "fixed delay only: a statement PostgreSQL commits in between is cached stale",
        (
            Edit(
                "postgres/store.py",
                """        backend = _WRITE_BACKEND.get()""",
                """        backend = None""",
            ),
        ),
        (
            "tests/integration/test_consistency_paths.py::"
            "test_path1_a_write_that_commits_after_its_caller_gave_up_is_invalidated_once_it_did",
        ),
    ),
)
