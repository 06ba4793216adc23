"""The shipped Grafana dashboard against a real Prometheus: Debian's `prometheus`
scrapes a real Envoy with the filter (the shipped scrape job, faster), traffic makes a
failover, a cooldown, a recovery and a hedge, and every query of every panel is
evaluated through Prometheus's HTTP API and must return the series its panel is about.
Each panel's result goes to target/dashboard-series.json."""

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from harness import LOOPBACK, ROOT, config, free_port, http, metric, provider, served_by, stop_process, wait_until

DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "llm-failover.json"
SCRAPE_CONFIG = ROOT / "compose" / "prometheus.yml"
RESULTS = ROOT / "target" / "dashboard-series.json"

# Short enough for the test's budget, long enough for a 1 s scrape to see the cooldown.
RETRY_AFTER = "2"

# What each metric's panel must show after the traffic below, by the metric its query
# reads (not by panel title, so a retitled panel keeps its check): label sets the
# query must return exactly (the panel's `by` labels), each with a finite value.
# A panel on a metric not listed here is still queried and must return something.
EXPECTED = {
    "llm_failover_requests": [{"provider": "fallback", "status_class": "2xx"},
                              {"provider": "primary", "status_class": "2xx"}],
    "llm_failover_errors": [{"provider": "primary", "class": "rate_limited"}],
    "llm_failover_failovers": [{"from": "primary", "to": "fallback", "reason": "rate_limited"}],
    "llm_failover_cooldowns": [{"provider": "primary", "reason": "rate_limited"}],
    "llm_failover_health": [{"provider": "primary"}, {"provider": "fallback"}],
    "envoy_cluster_upstream_rq_time_bucket": [{"envoy_cluster_name": "primary"},
                                              {"envoy_cluster_name": "fallback"}],
    # Summed by `le` alone, so one series without labels.
    "llm_failover_failover_time_ms_bucket": [{}],
    "llm_failover_hedges": [{"from": "primary", "to": "fallback", "winner": "fallback"}],
}

# Grafana fills these in before a query reaches Prometheus; a panel may use them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}


class Prometheus:
    """Prometheus on a free loopback port with a throwaway TSDB, scraping `target`
    (host:port) with the shipped scrape job every second."""

    def __init__(self, binary: str, target: str):
        self.dir = Path(tempfile.mkdtemp(prefix="llm-failover-prometheus-"))
        cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
        # Rate windows are 1m and the test lasts seconds: scrape and evaluate every
        # second (a timeout longer than the interval is refused).
        cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        for job in cfg["scrape_configs"]:
            for static in job["static_configs"]:
                static["targets"] = [target]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log_path = self.dir / "prometheus.log"
        # A port free_port() found can be taken before Prometheus binds it: try others.
        for tries_left in (2, 1, 0):
            self.port = free_port()
            self.log_file = open(self.log_path, "w")
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}"],
                stdout=self.log_file, stderr=subprocess.STDOUT)
            try:
                wait_until(self._ready, 20, "prometheus to become ready", interval=0.05)
                return
            except Exception:
                self.stop_process()
                if tries_left == 0 or "address already in use" not in self.log_path.read_text():
                    shutil.rmtree(self.dir, ignore_errors=True)
                    raise

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return http("GET", f"{self.url}/-/ready", timeout=1)[0] == 200

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def api(self, endpoint: str, **params) -> tuple[list | None, str | None]:
        """(result, None), or (None, error) when Prometheus refuses the query."""
        status, _, body = http("GET", f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}")
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            return None, f"HTTP {status}: {doc.get('error', body[:200])}"
        return doc["data"]["result"], None

    def query(self, expr: str):
        return self.api("query", query=expr)

    def stop_process(self):
        stop_process(self.proc, 10)
        self.log_file.close()

    def stop(self):
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus():
    """Factory: prometheus('127.0.0.1:port') -> Prometheus scraping that Envoy admin,
    stopped after the test. A missing binary fails the test (inside it, not at setup):
    `scripts/setup.sh --test` installs Debian's `prometheus` package."""
    started = []

    def start(target):
        binary = shutil.which("prometheus")
        if not binary:
            pytest.fail("prometheus is missing: `make test` installs it (scripts/setup.sh --test installs Debian's "
                        "`prometheus` package), or `apt-get install prometheus`", pytrace=False)
        p = Prometheus(binary, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def panel_targets(dashboard: dict):
    """(panel, target) for every query of every panel, also those inside rows (a
    collapsed row keeps its panels in its own `panels`)."""
    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield panel, target
            yield from walk(panel.get("panels", []))
    yield from walk(dashboard["panels"])


def as_prometheus_sees_it(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def expected_for(expr: str) -> tuple[str | None, list[dict] | None]:
    for name, series in EXPECTED.items():
        if re.search(rf"\b{name}\b", expr):
            return name, series
    return None, None


def check(prom: Prometheus, panel: dict, target: dict) -> dict:
    """Evaluates one panel query now; the result with what is wrong in `problems`."""
    expr = target["expr"]
    result, error = prom.query(as_prometheus_sees_it(expr))
    row = {"panel": panel.get("title"), "refId": target.get("refId"), "expr": expr,
           "series": len(result or []), "labels": [s["metric"] for s in result or []],
           "values": [s["value"][1] for s in result or []], "problems": []}
    if error:
        row["problems"].append(error)
        return row
    if not result:
        row["problems"].append("no series")
    # The legend names labels ({{provider}}); a series without one shows a blank legend.
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
        if any(label not in s["metric"] for s in result):
            row["problems"].append(f"legend label {label!r} missing from a series")
    _, wanted = expected_for(expr)
    for labels in wanted or []:
        found = [s for s in result if s["metric"] == labels]
        if not found:
            row["problems"].append(f"no series {labels}")
        elif not math.isfinite(float(found[0]["value"][1])):
            # histogram_quantile gives NaN until a bucket grows between two scrapes.
            row["problems"].append(f"series {labels} is {found[0]['value'][1]}")
    return row


def check_all(prom: Prometheus, dashboard: dict) -> list[dict]:
    return [check(prom, panel, target) for panel, target in panel_targets(dashboard)]


def write_results(build: str, rows: list[dict], health_history: list | None):
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"build": build, "panels": rows, "primary_health_history": health_history},
                                  indent=1) + "\n")


def primary_health(prom: Prometheus, expr: str, start: float) -> list[float]:
    """The primary's values of health query `expr` since `start`, a second apart."""
    result, error = prom.api("query_range", query=as_prometheus_sees_it(expr), start=start, end=time.time(), step=1)
    assert not error, (expr, error)
    return [float(v) for s in result if s["metric"] == {"provider": "primary"} for _, v in s["values"]]


def mutants(expr: str) -> list[str]:
    """The query broken as an edit could break it: its metric misspelt, and the last
    label it groups by misspelt."""
    name, _ = expected_for(expr)
    broken = [re.sub(rf"\b{name}\b", name + "_typo", expr, count=1)]
    by = re.search(r"\bby\s*\(([^)]*)\)", expr)
    if by:
        labels = [l.strip() for l in by.group(1).split(",")]
        labels[-1] += "_typo"
        broken.append(expr[:by.start(1)] + ", ".join(labels) + expr[by.end(1):])
    return broken


def test_every_dashboard_panel_shows_its_series_in_prometheus(mocks, envoy, prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    assert list(panel_targets(dashboard)), "the dashboard has queries"
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", RETRY_AFTER)
    fallback = mocks("fallback")
    # Prometheus scrapes a new target only after its discovery's 5 s update tick, so
    # it starts as soon as Envoy's admin port is known: in the bootstrap, before Envoy.
    proms = []

    def scrape_this_envoy(cfg):
        admin = cfg["admin"]["address"]["socket_address"]
        proms.append((admin["port_value"], prometheus(f"{admin['address']}:{admin['port_value']}")))
    # hedgeAfter well above what a loopback answer takes on a busy machine, so the only
    # hedge is the one asked for below.
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="200ms"),
              {"primary": primary.port, "fallback": fallback.port}, tweak=scrape_this_envoy)
    # The last bootstrap is the one Envoy runs (one before may have met a taken port).
    port, prom = proms[-1]
    assert port == e.admin_port
    started = time.time()
    health_exprs = [t["expr"] for _, t in panel_targets(dashboard) if expected_for(t["expr"])[0] == "llm_failover_health"]
    assert len(health_exprs) == 1, f"the dashboard has one health query: {health_exprs}"
    health_expr = health_exprs[0]

    def failovers():
        return metric(e.prometheus(), "llm_failover_failovers",
                      **{"from": "primary", "to": "fallback", "reason": "rate_limited"}) or 0

    def scraped(expr):
        return prom.query(expr)[0]

    # Failover: the primary's 429 goes on to the fallback, and the primary cools.
    assert served_by(e) == (200, "fallback")
    assert failovers() == 1

    # The failover time panel is a quantile of a rate: one failover is a histogram
    # first seen at count 1 that never grows (NaN). So a second failover, after
    # Prometheus has scraped the first (its first scrape comes ~5 s after it starts).
    wait_until(lambda: scraped("llm_failover_failover_time_ms_count"), 15,
               "prometheus to scrape the failover time histogram", interval=0.2)

    # The fallback serves while the primary cools; once the cooldown is over the next
    # request probes the still-failing primary: the second failover, and a cooldown
    # again, until Prometheus has seen one (the health panel's history).
    def failed_over_again_and_cooling_seen():
        assert served_by(e) == (200, "fallback")
        return failovers() >= 2 and 1.0 in primary_health(prom, health_expr, started)
    wait_until(failed_over_again_and_cooling_seen, 6 * int(RETRY_AFTER),
               "a second failover and prometheus to see the primary cooling", interval=0.2)

    # Recovery: healed, the primary gets its traffic back once the cooldown ends.
    primary.configure(failure_injection_rate=0)
    wait_until(lambda: served_by(e) == (200, "primary"), 4 * int(RETRY_AFTER),
               "the healed primary to serve again", interval=0.1)

    # ... and keeps it until Prometheus sees the primary's latency histogram grow: Envoy
    # times only the answer a request ends with (not a 429 retried elsewhere), so up to
    # here it holds one answer, first seen at count 1, and its quantile would be NaN.
    def primary_latency_grows():
        assert served_by(e) == (200, "primary")
        return scraped('increase(envoy_cluster_upstream_rq_time_count{envoy_cluster_name="primary"}[1m]) > 0')
    wait_until(primary_latency_grows, 10, "prometheus to see the primary's latency histogram grow", interval=0.2)

    # A hedge: the primary takes far longer than hedgeAfter, the fallback is asked too
    # and answers first.
    primary.configure(latency_ms=1500)
    assert served_by(e) == (200, "fallback")
    wait_until(lambda: metric(e.prometheus(), "llm_failover_hedges",
                              **{"from": "primary", "to": "fallback", "winner": "fallback"}), 5, "the hedge metric")

    # Every panel, polled: rates need two scrapes after their series appeared, and the
    # histograms reach /stats/prometheus at a stats flush.
    rows = []

    def all_show():
        rows[:] = check_all(prom, dashboard)
        return not any(r["problems"] for r in rows)
    try:
        wait_until(all_show, 15, "every panel to show its series", interval=0.5)
    except TimeoutError:
        pass  # reported below, panel by panel

    # The health panel over the test, as its state timeline draws it (a range query):
    # the primary cooling (1), then healthy (0) again.
    history = primary_health(prom, health_expr, started)
    write_results("native" if e.native else "wasm", [{k: v for k, v in r.items() if k != "problems" or v} for r in rows], history)
    assert 1.0 in history and history[-1] == 0.0 and 0.0 in history[history.index(1.0):], \
        f"{health_expr}: the primary's health over the test was {history}, not cooling (1) then healthy (0)"
    bad = [f"{r['panel']} [{r['refId']}] {r['expr']}: {'; '.join(r['problems'])} (got {r['labels']})"
           for r in rows if r["problems"]]
    assert not bad, "dashboard panels without their series:\n" + "\n".join(bad)

    # The checks above would catch a broken query: each panel's query with its metric
    # or its grouping label misspelt fails them.
    for panel, target in panel_targets(dashboard):
        if expected_for(target["expr"])[0] is None:
            continue
        for broken in mutants(target["expr"]):
            row = check(prom, panel, {**target, "expr": broken})
            assert row["problems"], f"{panel.get('title')}: the broken query {broken} passed the checks"
