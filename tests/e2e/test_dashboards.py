"""The Grafana dashboard and the alert rules: valid, and fed by a live server.

* ``promtool check rules`` and ``promtool test rules`` (Debian's prometheus
  package, installed by ``make test``) check the alert rules and that each
  alert fires on the series meant to trigger it;
* every dashboard query, with Grafana's variables filled in, goes through
  ``promtool check rules`` as a recording rule: it is valid PromQL;
* every metric the dashboard and the rules name is in ``/metrics`` of a live
  server after a short workload.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.search_pb2 import EmbeddingItem
from tests.e2e.conftest import Launcher, free_port
from tests.faults.harness import experiment_request
from tests.toolchains import missing

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-router.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "le",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool not installed", "make promtool (Debian package prometheus)")
    return found


def run_promtool(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    print(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_queries() -> list[str]:
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unfilled variable in {expr}"
            queries.append(expr)
    return queries


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, keywords or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if match[2] is None and match[1] not in PROMQL_WORDS:
            names.add(match[1])
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, op) (rate(a_bucket{x="y(z)"}[5m]))) '
        "/ on (i) group_left b and c"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_alert_rules_pass_promtool() -> None:
    run_promtool("check", "rules", str(ALERTS))
    run_promtool("test", "rules", str(ALERT_TESTS))
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]}  # fmt: skip
    assert len(names) >= 6


def test_dashboard_is_well_formed_and_its_queries_are_valid_promql(tmp_path: Path) -> None:
    data = dashboard()
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"] and panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_queries())
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    output = run_promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in output


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def exposed_names(text: str) -> set[str]:
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def workload(target: str) -> None:
    """A little of everything: writes, reads (fresh and cached), events, search, errors."""
    exp_id = f"dash-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rs_grpc.RouterServiceStub(channel)
        await stub.RouteData(experiment_request(exp_id), timeout=10)
        read = rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id=exp_id))
        for _ in range(3):
            await stub.RouteData(read, timeout=10)
        now = datetime.now(UTC)
        events = []
        for i in range(5):
            event = Event(event_id=f"ev-{exp_id}-{i}", experiment_id=exp_id, user_id=f"u{i}",
                          variant="treatment", event_type="conversion", value=1.0)  # fmt: skip
            event.timestamp.FromDatetime(now)
            events.append(event)
        track = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=events))
        await stub.RouteData(track, timeout=10)
        await stub.RouteData(track, timeout=10)  # duplicates
        collection = f"dash{uuid.uuid4().hex[:8]}"
        items = [EmbeddingItem(id="a", embedding=[1.0, 0.0])]
        await stub.RouteData(
            rs.RouteDataRequest(
                upsert_embeddings=rs.UpsertEmbeddingsOperation(collection=collection, items=items)
            ),
            timeout=30,
        )
        search = rs.SemanticSearchOperation(collection=collection, embedding=[1.0, 0.0], k=1)
        for _ in range(2):
            await stub.RouteData(rs.RouteDataRequest(semantic_search=search), timeout=30)
        await stub.Invalidate(rs.InvalidateRequest(experiment_id=exp_id), timeout=10)
        await stub.Stats(rs.StatsRequest(), timeout=10)
        missing = rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id="no"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RouteData(missing, timeout=10)


async def test_every_metric_used_is_served_by_a_live_server(launch_server: Launcher) -> None:
    metrics_port = free_port()
    with launch_server("dashboards", METRICS_ADDRESS=f"127.0.0.1:{metrics_port}") as server:
        await workload(server.target)
        text = await asyncio.to_thread(scrape, metrics_port)
    served = exposed_names(text)
    used: dict[str, set[str]] = {"dashboard": set(), "alerts": set()}
    for expr in dashboard_queries():
        used["dashboard"] |= metric_names(expr)
    for expr in alert_queries():
        used["alerts"] |= metric_names(expr)
    for source, names in used.items():
        print(f"{source}: {', '.join(sorted(names))}")
        assert names, source
        assert names <= served, f"{source} uses metrics the server does not serve: {names - served}"
