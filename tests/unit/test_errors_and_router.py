"""Error translation to rich gRPC statuses, and routing of unknown processors."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mcprouter.server import operations as ops
from mcprouter.server.edge.status import to_rpc_status
from mcprouter.server.errors import FieldViolation, InvalidArgument, NotFound, Unimplemented
from mcprouter.server.router import Router, RouteResult
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.experiment_pb2 import Experiment
from mcprouter.v1.serve_status_pb2 import ServeStatus


def decode(status: grpc.Status) -> status_pb2.Status:
    (details,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(details)


def test_invalid_argument_carries_error_info_and_bad_request() -> None:
    error = InvalidArgument([FieldViolation("a.b", "is required"), FieldViolation("c", "bad")])
    status = to_rpc_status(error)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    rich = decode(status)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(info)
    assert rich.details[1].Unpack(bad)
    assert (info.domain, info.reason) == ("mcprouter.v1", "INVALID_ARGUMENT")
    assert [v.field for v in bad.field_violations] == ["a.b", "c"]


def test_error_info_reason_is_the_first_violations_kind() -> None:
    error = InvalidArgument(
        [FieldViolation("h", "not truncated", "HOUR_NOT_TRUNCATED"), FieldViolation("c", "bad")]
    )
    rich = decode(to_rpc_status(error))
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(info) and rich.details[1].Unpack(bad)
    assert info.reason == "HOUR_NOT_TRUNCATED"
    assert [v.reason for v in bad.field_violations] == ["HOUR_NOT_TRUNCATED", "INVALID_ARGUMENT"]


def test_other_errors_carry_reason_and_metadata() -> None:
    status = to_rpc_status(NotFound("no experiment e1", metadata={"experiment_id": "e1"}))
    assert status.code is grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ErrorInfo()
    assert decode(status).details[0].Unpack(info)
    assert info.metadata["experiment_id"] == "e1"
    assert "no experiment e1" in status.details


def test_invalid_argument_needs_violations() -> None:
    with pytest.raises(ValueError, match="at least one"):
        InvalidArgument([])


async def test_router_dispatches_and_names_missing_processors() -> None:
    async def get_experiment(op: rs.GetExperimentOperation) -> RouteResult:
        return RouteResult(
            ServeStatus.SERVE_STATUS_FRESH, Experiment(experiment_id=op.experiment_id)
        )

    router = Router({ops.GET_EXPERIMENT: get_experiment})
    result = await router.route(ops.GET_EXPERIMENT, rs.GetExperimentOperation(experiment_id="e"))
    assert result.value == Experiment(experiment_id="e")
    with pytest.raises(Unimplemented, match="clickhouse processor") as caught:
        await router.route(ops.GET_ANALYTICS, rs.GetAnalyticsOperation())
    assert caught.value.metadata == {"operation": "get_analytics", "processor": "clickhouse"}
    with pytest.raises(ValueError, match="served twice"):
        Router({ops.GET_EXPERIMENT: get_experiment}, {ops.GET_EXPERIMENT: get_experiment})


def test_the_operation_table_matches_the_contract() -> None:
    oneof = rs.RouteDataRequest.DESCRIPTOR.oneofs_by_name["operation"]
    results = rs.RouteDataResponse.DESCRIPTOR.oneofs_by_name["result"]
    assert [f.name for f in oneof.fields] == sorted(
        (op.name for op in ops.OPERATIONS), key=[f.name for f in oneof.fields].index
    )
    assert {op.name for op in ops.OPERATIONS} == {f.name for f in oneof.fields}
    result_fields = {f.name for f in results.fields}
    for op in ops.OPERATIONS:
        field = rs.RouteDataRequest.DESCRIPTOR.fields_by_name[op.name]
        assert field.message_type is op.request.DESCRIPTOR, op
        assert op.result_field in result_fields, op
        assert op.owner in ("postgres", "clickhouse", "chroma"), op
