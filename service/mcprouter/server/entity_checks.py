"""Checks of the entities clients write (experiments, user profiles).

One definition, used at the gRPC edge (with the request's field path) and by
the PostgreSQL store (so no caller can store what the edge would refuse).
"""

from __future__ import annotations

from mcprouter.server.postgres.assignment import MAX_WEIGHT, MIN_WEIGHT
from mcprouter.server.validation import Reason, Violations
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, UserProfile

MAX_VARIANTS = 20
MAX_NAME_LENGTH = 256
MAX_DESCRIPTION_LENGTH = 4096
MAX_SALT_LENGTH = 64
MAX_ATTRIBUTES = 256
MAX_ATTRIBUTE_KEY_LENGTH = 128
MAX_ATTRIBUTE_VALUE_LENGTH = 4096

STORED_STATUSES = frozenset(
    {
        ExperimentStatus.EXPERIMENT_STATUS_DRAFT,
        ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        ExperimentStatus.EXPERIMENT_STATUS_PAUSED,
        ExperimentStatus.EXPERIMENT_STATUS_COMPLETED,
    }
)


def check_experiment(v: Violations, exp: Experiment, field: str) -> None:
    """Record every problem of an experiment to upsert, under ``field``."""
    v.identifier(f"{field}.experiment_id", exp.experiment_id)
    if not exp.name:
        v.required(f"{field}.name")
    v.text(f"{field}.name", exp.name, MAX_NAME_LENGTH)
    v.text(f"{field}.description", exp.description, MAX_DESCRIPTION_LENGTH)
    if exp.status not in STORED_STATUSES:
        v.add(f"{field}.status", "must be DRAFT, RUNNING, PAUSED or COMPLETED", Reason.INVALID_ENUM)
    v.count(f"{field}.variants", len(exp.variants), 1, MAX_VARIANTS)
    seen: set[str] = set()
    for index, variant in enumerate(exp.variants[:MAX_VARIANTS]):
        path = f"{field}.variants[{index}]"
        # Variant names become cache-key segments (metrics keys).
        v.identifier(f"{path}.name", variant.name)
        if variant.name in seen:
            v.add(f"{path}.name", f"duplicates variant {variant.name!r}", Reason.DUPLICATE_ITEM)
        seen.add(variant.name)
        if not MIN_WEIGHT <= variant.weight <= MAX_WEIGHT:
            v.add(f"{path}.weight", f"must be in {MIN_WEIGHT}..{MAX_WEIGHT}", Reason.OUT_OF_RANGE)
    if exp.version < 0:
        v.add(
            f"{field}.version", "must be 0 (create) or the version last read", Reason.OUT_OF_RANGE
        )
    if exp.salt:
        v.identifier(f"{field}.salt", exp.salt)
        v.text(f"{field}.salt", exp.salt, MAX_SALT_LENGTH)


def check_user_profile(v: Violations, profile: UserProfile, field: str) -> None:
    """Record every problem of a user profile to upsert, under ``field``."""
    v.identifier(f"{field}.user_id", profile.user_id)
    if len(profile.attributes) > MAX_ATTRIBUTES:
        v.add(
            f"{field}.attributes",
            f"must hold at most {MAX_ATTRIBUTES} entries",
            Reason.TOO_MANY_ITEMS,
        )
    for key, value in profile.attributes.items():
        path = f"{field}.attributes[{key[:32]!r}]"
        if not 1 <= len(key) <= MAX_ATTRIBUTE_KEY_LENGTH:
            reason = Reason.TEXT_TOO_LONG if key else Reason.MISSING_FIELD
            v.add(path, f"keys must be 1..{MAX_ATTRIBUTE_KEY_LENGTH} characters", reason)
        elif "\x00" in key:
            v.add(path, "keys must not contain NUL (U+0000) characters", Reason.INVALID_ARGUMENT)
        v.text(path, value, MAX_ATTRIBUTE_VALUE_LENGTH)
    if profile.version < 0:
        v.add(
            f"{field}.version", "must be 0 (create) or the version last read", Reason.OUT_OF_RANGE
        )
