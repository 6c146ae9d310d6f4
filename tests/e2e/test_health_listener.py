"""HEALTH_LISTEN_ADDRESS: a plaintext port with the health service alone, for probes.

Kubernetes gRPC probes cannot speak TLS, so a TLS server offers its health
on a second port. It must answer what the main port answers, nothing else,
and turn NOT_SERVING at once on SIGTERM while the main port still serves
through the drain delay.
"""

from __future__ import annotations

import signal

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests.e2e.conftest import NOT_SERVING, SERVING, Launcher, free_port, health_status, wait_for

pytestmark = pytest.mark.e2e

# Long enough that "NOT_SERVING, then a call still served" never races its end.
DRAIN_S = 5


def test_health_port_serves_health_only_and_follows_the_drain(launch_server: Launcher) -> None:
    health_port = free_port()
    probe = f"127.0.0.1:{health_port}"
    with launch_server(
        "health-port", HEALTH_LISTEN_ADDRESS=probe, DRAIN_DELAY_S=str(DRAIN_S)
    ) as server:  # fmt: skip
        assert health_status(probe) == SERVING
        assert health_status(probe, "redis") == SERVING
        with grpc.insecure_channel(probe) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                rs_grpc.RouterServiceStub(channel).Stats(rs.StatsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        server.process.send_signal(signal.SIGTERM)
        # The order that matters: the probe port says NOT_SERVING, then the
        # main port still answers a call (the drain), then the process exits.
        assert wait_for(lambda: health_status(probe) == NOT_SERVING, timeout_s=DRAIN_S - 1)
        with grpc.insecure_channel(server.target) as channel:
            rs_grpc.RouterServiceStub(channel).Stats(rs.StatsRequest(), timeout=DRAIN_S - 1)
        assert server.process.wait(timeout=30) == 0
        assert health_status(probe) is None  # its health port went with it
