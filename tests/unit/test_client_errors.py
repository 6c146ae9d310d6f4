"""The client's error mapping, from hand-built rich statuses (no server)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mcprouter.client import (
    ERROR_DOMAIN,
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RouterError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_class,
    from_rpc_error,
)


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rpc_error(
    code: grpc.StatusCode, message: str, *details: Message, status_code: int | None = None
) -> grpc.aio.AioRpcError:
    """An AioRpcError as grpc.aio raises it, rich details in its trailing metadata."""
    trailing = grpc.aio.Metadata()
    if details or status_code is not None:
        status = status_pb2.Status(
            code=code.value[0] if status_code is None else status_code,
            message=message,
            details=[pack(d) for d in details],
        )
        trailing = grpc.aio.Metadata(*rpc_status.to_status(status).trailing_metadata)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def test_invalid_argument_carries_error_info_and_field_violations() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="INVALID_ARGUMENT", domain=ERROR_DOMAIN, metadata={"operation": "get_experiment"}
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="get_experiment.experiment_id", description="must match [A-Za-z0-9_.-]"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="k", description="1..100"),
        ]
    )
    error = from_rpc_error(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid request: ...", info, bad)
    )
    assert type(error) is InvalidArgument
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid request: ..."
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", ERROR_DOMAIN)
    assert dict(error.metadata) == {"operation": "get_experiment"}
    assert error.field_violations == (
        FieldViolation("get_experiment.experiment_id", "must match [A-Za-z0-9_.-]"),
        FieldViolation("k", "1..100"),
    )
    # A reason that only repeats the code is not printed twice.
    assert str(error) == "INVALID_ARGUMENT: invalid request: ..."


def test_str_names_a_specific_reason_once_and_the_request_id() -> None:
    info = error_details_pb2.ErrorInfo(reason="HOUR_NOT_TRUNCATED", domain=ERROR_DOMAIN)
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="get_event_metrics.hour",
                description="must be truncated",
                reason="HOUR_NOT_TRUNCATED",
            )
        ]
    )
    failed = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid request", info, bad)
    error = from_rpc_error(failed, "rid-1")
    assert str(error) == (
        "INVALID_ARGUMENT (HOUR_NOT_TRUNCATED): invalid request [request_id=rid-1]"
    )
    assert error.field_violations[0].reason == "HOUR_NOT_TRUNCATED"
    assert error.request_id == "rid-1"


def test_the_servers_echoed_request_id_wins() -> None:
    trailing = grpc.aio.Metadata(("x-request-id", "from-server"))
    failed = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), trailing, details="down"
    )
    assert from_rpc_error(failed, "sent").request_id == "from-server"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.ABORTED, Aborted),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
        (grpc.StatusCode.INTERNAL, Internal),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
    ],
)
def test_each_status_code_has_its_class(code: grpc.StatusCode, cls: type[RouterError]) -> None:
    info = error_details_pb2.ErrorInfo(reason="SOME_REASON", domain=ERROR_DOMAIN)
    error = from_rpc_error(rpc_error(code, "boom", info))
    assert type(error) is cls
    assert isinstance(error, RouterError)
    assert error_class(code) is cls
    assert (error.code, error.reason, error.domain) == (code, "SOME_REASON", ERROR_DOMAIN)
    assert error.field_violations == ()


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS]
)
def test_unmapped_codes_are_the_root_class_with_their_code(code: grpc.StatusCode) -> None:
    error = from_rpc_error(rpc_error(code, "odd"))
    assert type(error) is RouterError
    assert error.code == code


def test_a_status_without_details_still_maps() -> None:
    """What the gRPC runtime produces itself, e.g. when nothing listens."""
    error = from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect"))
    assert type(error) is Unavailable
    assert (error.reason, error.domain, dict(error.metadata)) == ("", "", {})
    assert error.message == "failed to connect"
    assert str(error) == "UNAVAILABLE: failed to connect"


def test_details_that_contradict_the_call_are_ignored() -> None:
    info = error_details_pb2.ErrorInfo(reason="NOT_FOUND", domain=ERROR_DOMAIN)
    error = from_rpc_error(
        rpc_error(grpc.StatusCode.INTERNAL, "mismatch", info, status_code=code_pb2.NOT_FOUND)
    )
    assert type(error) is Internal
    assert error.reason == ""


def test_only_the_first_error_info_counts_and_unknown_details_are_skipped() -> None:
    first = error_details_pb2.ErrorInfo(reason="FIRST", domain=ERROR_DOMAIN)
    second = error_details_pb2.ErrorInfo(reason="SECOND", domain="other")
    retry = error_details_pb2.RetryInfo()
    error = from_rpc_error(rpc_error(grpc.StatusCode.ABORTED, "conflict", retry, first, second))
    assert (error.reason, error.domain) == ("FIRST", ERROR_DOMAIN)


def test_metadata_is_read_only() -> None:
    info = error_details_pb2.ErrorInfo(reason="R", domain=ERROR_DOMAIN, metadata={"a": "1"})
    error = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "gone", info))
    with pytest.raises(TypeError):
        error.metadata["a"] = "2"  # type: ignore[index]
