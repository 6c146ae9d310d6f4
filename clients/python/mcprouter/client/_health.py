"""The two messages of the standard ``grpc.health.v1.Health/Check``, without grpcio-health-checking.

The client distribution depends on grpcio, protobuf, googleapis-common-protos
and grpcio-status only. The health messages are tiny, so they are declared
here in a private descriptor pool: the server's venv also loads
``grpc_health.v1.health_pb2`` into the default pool, and one file defined
twice there would clash.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

CHECK_METHOD = "/grpc.health.v1.Health/Check"

_F = descriptor_pb2.FieldDescriptorProto
_FILE = descriptor_pb2.FileDescriptorProto(
    name="mcprouter/client/health.proto",
    package="grpc.health.v1",
    syntax="proto3",
    message_type=[
        descriptor_pb2.DescriptorProto(
            name="HealthCheckRequest",
            field=[_F(name="service", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)],
        ),
        descriptor_pb2.DescriptorProto(
            name="HealthCheckResponse",
            field=[_F(name="status", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)],
        ),
    ],
)
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_FILE)
_Request = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
)
_Response = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
)

# grpc.health.v1.HealthCheckResponse.ServingStatus (an int32 on the wire, like the enum).
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service: str) -> bytes:
    """The serialized ``HealthCheckRequest`` for ``service``."""
    request: Message = _Request(service=service)
    return request.SerializeToString()


def decode_status(data: bytes) -> str:
    """The status name of a serialized ``HealthCheckResponse``: ``"SERVING"``..."""
    response: Message = _Response.FromString(data)
    number: int = getattr(response, "status")  # noqa: B009  (a dynamic message class)
    return STATUS_NAMES.get(number, str(number))
