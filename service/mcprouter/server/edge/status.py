"""Translates exceptions into gRPC statuses once, at the edge.

A ``RouterError`` becomes its status code with a ``google.rpc.Status`` carrying
an ``ErrorInfo`` (stable ``reason``, fixed ``domain``, dynamic ``metadata``)
and, for bad input, a ``BadRequest`` with one field violation per bad field.
Any other exception is a bug: it is logged with its traceback and the caller
gets INTERNAL with no internals in the message.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mcprouter.server.edge.wrapping import Behavior, Malformed, unary_layer
from mcprouter.server.errors import ERROR_DOMAIN, FieldViolation, InvalidArgument, RouterError

log = logging.getLogger(__name__)


def to_rpc_status(error: RouterError) -> grpc.Status:
    """The rich gRPC status of an error."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details = [_pack(info)]
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    code = grpc.StatusCode[error.code].value[0]
    status = status_pb2.Status(code=code, message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _translating(behavior: Behavior, method: str) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if request.__class__ is Malformed:
                raise _malformed(request)
            return await behavior(request, context)
        except RouterError as error:
            await _abort(context, to_rpc_status(error))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            internal = status_pb2.Status(
                code=code_pb2.INTERNAL, message="internal error; see the server log"
            )
            await _abort(context, rpc_status.to_status(internal))

    return wrapper


def _malformed(request: Malformed) -> InvalidArgument:
    return InvalidArgument(
        [
            FieldViolation(
                "(request)",
                f"the request body is not a valid {request.type_name} message",
                "INVALID_ARGUMENT",
            )
        ]
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    # Equivalent to abort_with_status, which the type stubs lack; metadata set
    # earlier in the call (the request id) is kept beside the error details.
    already = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, already + tuple(status.trailing_metadata))


# Every unary-unary method's errors become rich statuses.
ERROR_TRANSLATION = unary_layer(_translating)
