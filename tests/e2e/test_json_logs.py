"""LOG_FORMAT=json: every stderr line of a live server is one JSON object.

The server runs with gRPC's C core at INFO (``GRPC_VERBOSITY=info``, as a
user might set it), so the core writes its own lines to fd 2: they must
arrive wrapped as JSON too. With ACCESS_LOG=true each call has an INFO line
with method, operation, serve status, code, duration and request id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests.e2e.conftest import Launcher

pytestmark = pytest.mark.e2e


async def test_every_stderr_line_is_json_with_an_access_line_per_call(
    launch_server: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "info")
    with launch_server("json-logs", LOG_FORMAT="json", ACCESS_LOG="true") as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            await stub.Stats(rs.StatsRequest(), timeout=5, metadata=[("x-request-id", "acc-1")])
            request = rs.RouteDataRequest(
                get_experiment=rs.GetExperimentOperation(experiment_id="json-logs-none")
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.RouteData(request, timeout=5, metadata=[("x-request-id", "acc-2")])
    text = server.log()  # stdout and stderr; serve prints nothing on stdout
    lines = [json.loads(line) for line in text.splitlines()]  # each one must parse
    assert all(isinstance(line, dict) and {"ts", "level", "msg"} <= line.keys() for line in lines)
    assert any(line["logger"] == "stderr" for line in lines), "no C-core line was wrapped"
    access = {line["request_id"]: line for line in lines if line.get("rpc")}
    assert access["acc-1"]["level"] == "INFO"
    assert access["acc-1"]["method"] == "Stats" and access["acc-1"]["code"] == "OK"
    routed = access["acc-2"]
    assert (routed["method"], routed["operation"], routed["code"]) == (
        "RouteData",
        "get_experiment",
        "NOT_FOUND",
    )
    assert routed["level"] == "INFO" and routed["duration_ms"] >= 0


def test_the_cli_sets_grpc_verbosity_before_grpc_is_imported() -> None:
    code = (
        "import os, sys\n"
        "import mcprouter.server.cli as cli\n"
        "assert 'grpc' not in sys.modules, 'cli imports grpc at import time'\n"
        "try:\n"
        "    cli.main(['health', '--address', '127.0.0.1:1', '--timeout', '0.1'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ['GRPC_VERBOSITY'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ERROR"
    env["GRPC_VERBOSITY"] = "DEBUG"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip().splitlines()[-1] == "DEBUG", "the user's choice is kept"
