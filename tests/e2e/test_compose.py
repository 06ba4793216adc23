"""The docker-compose demo, checked offline (no image can be pulled here):
`docker-compose config -q`, `promtool check config`, `envoy --mode validate` on the
mounted Envoy config, and the Grafana dashboard's structure and queries against the
metrics a real Envoy exposes after real traffic."""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from harness import ROOT, WASM, validate, wait_until

COMPOSE = ROOT / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "llm-failover.json"


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is missing: `make test` installs it (scripts/setup.sh --test)"
    return path


def test_compose_file_is_valid():
    r = subprocess.run([tool("docker-compose"), "-f", str(COMPOSE / "docker-compose.yaml"), "config", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_mounts_and_builds_exist():
    spec = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())
    services = spec["services"]
    assert set(services) == {"primary", "fallback", "envoy", "prometheus", "grafana"}
    assert services["envoy"]["image"] == "envoyproxy/envoy:v1.40.0", "same Envoy as the tests"
    assert "--failure-injection-rate" in services["primary"]["command"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            src = (COMPOSE / volume.split(":")[0]).resolve()
            if src == WASM.resolve():
                continue  # built by `make build`
            assert src.exists(), volume
        build = svc.get("build")
        if build:
            assert (COMPOSE / build["context"] / build["dockerfile"]).exists()
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"host port {port} must be bound to loopback"


def test_prometheus_config_is_valid_and_scrapes_envoy():
    r = subprocess.run([tool("promtool"), "check", "config", str(COMPOSE / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    job = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["metrics_path"] == "/stats/prometheus"
    assert job["static_configs"][0]["targets"] == ["envoy:9901"]


def test_mounted_envoy_config_validates():
    text = (COMPOSE / "envoy.yaml").read_text().replace("/etc/envoy/llm_failover.wasm", str(WASM))
    path = Path(tempfile.mkdtemp()) / "envoy.yaml"
    path.write_text(text)
    r = validate(path, {"OPENAI_API_KEY": "sk-validate"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_provisioning_points_at_the_dashboard():
    ds = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert ds["uid"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/llm-failover.yaml").read_text())["providers"][0]
    mount = next(v for v in yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())["services"]["grafana"]["volumes"]
                 if "dashboards" in v and "provisioning" not in v)
    assert mount.split(":")[1] == provider["options"]["path"]


def test_dashboard_structure():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "llm-failover" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "state-timeline", "stat"}
        assert p["datasource"]["uid"] == "prometheus"
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in ("requests by provider and status", "failovers", "health", "429", "latency", "hedges"):
        assert topic in titles, topic


def test_dashboard_queries_name_metrics_envoy_exposes(mocks, envoy):
    # One request meets everything the dashboard shows: the primary's 429 (a cooldown
    # and a failover), a slow second provider, and a hedge to the third that wins.
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    fallback = mocks("fallback", "--latency-ms", "600")
    third = mocks("third")
    cfg = {"groups": [{"providers": [{"name": name, "cluster": name, "path": "/v1/chat/completions"}]}
                      for name in ("primary", "fallback", "third")],
           "failover": {"hedgeAfter": "100ms"}}
    e = envoy(cfg, {"primary": primary.port, "fallback": fallback.port, "third": third.port}, router=True)
    for _ in range(3):
        assert e.post_chat({"model": "", "messages": []}, path="/v1/chat/completions")[0] == 200
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = {m for expr in exprs for m in re.findall(r"\b((?:llm_failover|envoy_cluster)_[a-z_]+)\b", expr)}
    wanted = {n for n in names if n != "envoy_cluster_name"}  # a label, not a metric
    assert any(w.startswith("llm_failover_") for w in wanted)

    def exposed():
        text = e.prometheus()
        missing = {w for w in wanted if not re.search(rf"^{w}[{{ ]", text, re.M)}
        return not missing or None

    wait_until(exposed, 15, f"every dashboard metric ({sorted(wanted)}) at /stats/prometheus")
    text = e.prometheus()
    # The labels the queries group by exist on those metrics.
    assert re.search(r'^llm_failover_requests\{[^}]*provider="third"[^}]*status_class="2xx"', text, re.M)
    assert re.search(r'^llm_failover_hedges\{from="fallback",to="third",winner="third"\} [1-9]', text, re.M)
    # Router mode: a 429 that the filter sends on to the next provider reaches Envoy's
    # router as the filter's retry status, so the errors panel counts the filter's own
    # llm_failover_errors by class.
    assert re.search(r'^llm_failover_errors\{[^}]*provider="primary"[^}]*class="rate_limited"[^}]*\} [1-9]', text, re.M) \
        or re.search(r'^llm_failover_errors\{[^}]*class="rate_limited"[^}]*provider="primary"[^}]*\} [1-9]', text, re.M), text
