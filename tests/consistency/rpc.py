"""One RPC as the checker makes it: a deadline, maybe a client-side cancel, the outcome.

Raw stubs, not the SDK: the SDK retries reads on UNAVAILABLE, and the
checker must see (and record) every attempt itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mcprouter.v1 import router_service_pb2_grpc as rs_grpc

# Reconnect quickly after an instance restarts on the same port: gRPC's
# default backoff (1 s growing to 120 s) would keep a channel failing long
# after the instance is back.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
]


@dataclass(slots=True)
class Outcome:
    """How a call ended."""

    code: str  # grpc.StatusCode name, "OK", or "CANCELLED" for our own cancel
    response: Any = None
    message: str = ""
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    cancelled_by_client: bool = False


def _error_info(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    with contextlib.suppress(Exception):
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in status.details if status is not None else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason, dict(info.metadata)
    return "", {}


async def call(
    method: Callable[..., Any],
    request: Any,
    *,
    deadline_s: float,
    cancel_after_s: float | None = None,
) -> Outcome:
    """Invoke a unary method; never raises for an RPC failure."""
    rpc = method(request, timeout=deadline_s)
    canceller = None
    if cancel_after_s is not None:
        canceller = asyncio.get_running_loop().call_later(cancel_after_s, rpc.cancel)
    try:
        response = await rpc
    except grpc.aio.AioRpcError as error:
        reason, metadata = _error_info(error)
        cancelled = error.code() == grpc.StatusCode.CANCELLED and cancel_after_s is not None
        return Outcome(
            error.code().name,
            message=(error.details() or "")[:300],
            reason=reason,
            metadata=metadata,
            cancelled_by_client=cancelled and rpc.cancelled(),
        )
    except asyncio.CancelledError:
        # grpc.aio raises this for a call we cancelled; a cancel of our own
        # task must still propagate.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return Outcome("CANCELLED", cancelled_by_client=True)
    finally:
        if canceller is not None:
            canceller.cancel()
    return Outcome("OK", response=response)


class Channels:
    """One channel and stub per instance, rebuilt never (they reconnect by themselves)."""

    def __init__(self, targets: list[str]) -> None:
        self._channels = [grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in targets]
        self.stubs = [rs_grpc.RouterServiceStub(c) for c in self._channels]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
