"""Requests the checker sends and what their answers say about the entities.

Values are designed so that "newer" is decidable and content can be checked:

- experiments and profiles carry the store's ``version``; the write's token
  (``c{client}.{n}``) is the experiment's ``name`` and the profile's ``tok``
  attribute, so a read of version v must carry the token of the write that
  made v;
- an embedding item's metadata carries ``seq``, a counter the checker bumps
  for every write of that item (one writer at a time), and its token;
- experiments always run with the variants ``control`` and ``treatment``
  (weights change), so events and assignments are always valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import search_pb2 as search
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, UserProfile, Variant
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.consistency.history import Observation

COLLECTION = "ckitems"
DIMENSION = 8
VARIANTS = ("control", "treatment")


def experiment_entity(experiment_id: str) -> str:
    return f"exp:{experiment_id}"


def user_entity(user_id: str) -> str:
    return f"user:{user_id}"


def item_entity(item_id: str) -> str:
    return f"item:{item_id}"


def assignment_entity(experiment_id: str, user_id: str) -> str:
    return f"assign:{experiment_id}:{user_id}"


def cache_key(entity: str) -> str:
    """The client-visible cache key of an entity (not for items: searches are keyed by query)."""
    family, _, rest = entity.partition(":")
    if family == "exp":
        return f"experiment:{rest}"
    if family == "user":
        return f"user:{rest}:profile"
    if family == "assign":
        return f"assignment:{rest}"
    raise ValueError(entity)


def entity_of_key(key: str) -> str:
    family, _, rest = key.partition(":")
    if family == "experiment":
        return experiment_entity(rest)
    if family == "user":
        return user_entity(rest.removesuffix(":profile"))
    if family == "assignment":
        return f"assign:{rest}"
    raise ValueError(key)


def status_name(value: int) -> str:
    return str(ServeStatus.Name(value)).removeprefix("SERVE_STATUS_")  # type: ignore[arg-type]


# --- requests ---------------------------------------------------------------


def upsert_experiment(experiment_id: str, version: int, token: str, weight: int) -> Any:
    exp = Experiment(
        experiment_id=experiment_id,
        name=token,
        description=f"written by {token}",
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name=VARIANTS[0], weight=weight), Variant(name=VARIANTS[1], weight=10)],
        version=version,
    )
    return rs.RouteDataRequest(upsert_experiment=rs.UpsertExperimentOperation(experiment=exp))


def upsert_profile(user_id: str, version: int, token: str, counter: int) -> Any:
    profile = UserProfile(
        user_id=user_id,
        attributes={"tok": token, "n": str(counter)},
        version=version,
    )
    return rs.RouteDataRequest(upsert_user_profile=rs.UpsertUserProfileOperation(profile=profile))


def vector(item_index: int) -> list[float]:
    """One axis per item: an item is its own nearest neighbour, whatever the others hold."""
    return [1.0 if d == item_index % DIMENSION else 0.0 for d in range(DIMENSION)]


def upsert_item(item_id: str, item_index: int, seq: int, token: str) -> Any:
    item = search.EmbeddingItem(
        id=item_id,
        embedding=vector(item_index),
        document=token,
        metadata={
            "item": search.MetadataValue(string_value=item_id),
            "seq": search.MetadataValue(int_value=seq),
            "tok": search.MetadataValue(string_value=token),
        },
    )
    return rs.RouteDataRequest(
        upsert_embeddings=rs.UpsertEmbeddingsOperation(collection=COLLECTION, items=[item])
    )


def search_item(item_id: str, item_index: int) -> Any:
    flt = search.MetadataFilter(
        conditions=[
            search.MetadataCondition(
                key="item",
                operator=search.FilterOperator.FILTER_OPERATOR_EQ,
                value=search.MetadataValue(string_value=item_id),
            )
        ]
    )
    op = rs.SemanticSearchOperation(
        collection=COLLECTION, embedding=vector(item_index), k=1, filter=flt
    )
    return rs.RouteDataRequest(semantic_search=op)


def get_experiment(experiment_id: str) -> Any:
    return rs.RouteDataRequest(
        get_experiment=rs.GetExperimentOperation(experiment_id=experiment_id)
    )


def get_profile(user_id: str) -> Any:
    return rs.RouteDataRequest(get_user_profile=rs.GetUserProfileOperation(user_id=user_id))


def get_assignment(experiment_id: str, user_id: str) -> Any:
    return rs.RouteDataRequest(
        get_assignment=rs.GetAssignmentOperation(experiment_id=experiment_id, user_id=user_id)
    )


def get_cached(keys: Iterable[str]) -> Any:
    return rs.GetCachedRequest(keys=list(keys))


def make_event(event_id: str, experiment_id: str, user_id: str, variant: str, kind: str) -> Event:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC).replace(microsecond=0))
    return Event(
        event_id=event_id,
        experiment_id=experiment_id,
        user_id=user_id,
        variant=variant,
        event_type=kind,
        value=1.0 if kind == "conversion" else 0.0,
        timestamp=stamp,
    )


def track_events(events: Iterable[Event]) -> Any:
    return rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=list(events)))


# --- answers ------------------------------------------------------------------


def experiment_observation(exp: Experiment, source: str) -> Observation:
    return Observation(experiment_entity(exp.experiment_id), exp.version, "read", exp.name, source)


def profile_observation(profile: UserProfile, source: str) -> Observation:
    return Observation(
        user_entity(profile.user_id),
        profile.version,
        "read",
        profile.attributes.get("tok", ""),
        source,
    )


def search_observation(item_id: str, result: search.SearchResult, source: str) -> Observation:
    for hit in result.hits:
        if hit.id == item_id:
            meta = hit.metadata
            return Observation(
                item_entity(item_id),
                meta["seq"].int_value,
                "read",
                meta["tok"].string_value,
                source,
            )
    return Observation(item_entity(item_id), 0, "read", "", source)


def assignment_token(variant: str, bucket: int) -> str:
    return f"{variant}/{bucket}"


def read_observations(response: Any, entity: str) -> list[Observation]:
    """What a successful RouteData read says about ``entity``."""
    source = status_name(response.status)
    field = response.WhichOneof("result")
    if field == "experiment":
        return [experiment_observation(response.experiment, source)]
    if field == "user_profile":
        return [profile_observation(response.user_profile, source)]
    if field == "assignment":
        a = response.assignment
        return [Observation(entity, 1, "read", assignment_token(a.variant, a.bucket), source)]
    if field == "search_result":
        return [search_observation(entity.removeprefix("item:"), response.search_result, source)]
    return []


def cached_observations(response: rs.GetCachedResponse) -> list[Observation]:
    """What GetCached hits say; a miss says nothing."""
    out = []
    for entry in response.entries:
        if not entry.hit:
            continue
        entity = entity_of_key(entry.key)
        source = "get_cached" if entry.fresh else "get_cached(stale)"
        if entry.not_found:
            if entity.startswith("assign:"):
                # "no assignment" is cached only when the experiment did not exist
                entity = experiment_entity(entity.split(":")[1])
            out.append(Observation(entity, 0, "read", "", f"{source} {entry.key} not_found"))
        elif entry.HasField("experiment"):
            out.append(experiment_observation(entry.experiment, source))
        elif entry.HasField("user_profile"):
            out.append(profile_observation(entry.user_profile, source))
        elif entry.HasField("assignment"):
            a = entry.assignment
            out.append(
                Observation(entity, 1, "read", assignment_token(a.variant, a.bucket), source)
            )
    return out
