"""Metrics, access log fields and the health view, read from real Envoy after real traffic."""

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import CHAT, ROOT, http, is_llm_failover, metric, native_build, set_plugin_config, wait_until
from test_timeline import timeline  # scripts/timeline.py, as that test loads it

# The reference lab's step 5, exactly (reference-lab.txt): its gateway's access log,
# request lines only, status and the endpoint that answered.
LAB_JQ = 'select(.scope == "request") | {status: ."http.status", endpoint: .endpoint}'




def config(within_request=True):
    return {"groups": [
        {"providers": [{"name": "primary", "cluster": "primary", "path": "/v1/chat/completions",
                        "openai": {"model": "m1"}}]},
        {"providers": [{"name": "fallback", "cluster": "fallback", "path": "/v1/chat/completions",
                        "openai": {"model": "m2"}}]}],
        "failover": {"withinRequest": within_request}}


@pytest.fixture
def failing_primary(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    fallback = mocks("fallback")
    e = envoy(config(), {"primary": primary.port, "fallback": fallback.port})
    for _ in range(3):
        assert e.post_chat(CHAT)[0] == 200
    return e


def test_metrics_have_provider_status_and_reason_labels(failing_primary):
    e = failing_primary
    text = e.prometheus()
    assert metric(text, "llm_failover_requests", provider="fallback", status_class="2xx") == 3
    assert metric(text, "llm_failover_requests", provider="primary", status_class="4xx") is None
    assert metric(text, "llm_failover_failovers", **{"from": "primary", "to": "fallback", "reason": "rate_limited"}) == 1
    assert metric(text, "llm_failover_cooldowns", provider="primary", reason="rate_limited") == 1
    # Every failing answer, by class, whether or not the request went on.
    assert metric(text, "llm_failover_errors", provider="primary", **{"class": "rate_limited"}) == 1
    # Gauges are refreshed from shared data once a second: 1 = cooling, 0 = healthy.
    wait_until(lambda: metric(e.prometheus(), "llm_failover_health", provider="primary") == 1, 5, "health gauge")
    assert metric(e.prometheus(), "llm_failover_health", provider="fallback") == 0
    # The failover time histogram appears after a stats flush.
    wait_until(lambda: metric(e.prometheus(), "llm_failover_failover_time_ms_count") == 1, 10,
               "failover time histogram")


def test_access_log_shows_who_answered_who_was_tried_and_why(failing_primary):
    first, second, _ = failing_primary.access_log_lines(3)
    assert first == {**first, "http.status": 200, "provider": "fallback", "tried": "primary,fallback",
                     "attempts": "2", "failover_reason": "rate_limited"}
    assert second == {**second, "http.status": 200, "provider": "fallback", "tried": None,
                      "attempts": None, "failover_reason": None, "upstream_cluster": "fallback"}


def test_access_log_in_lab_mode_shows_the_429(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    fallback = mocks("fallback")
    e = envoy(config(within_request=False), {"primary": primary.port, "fallback": fallback.port})
    assert e.post_chat(CHAT)[0] == 429
    assert e.post_chat(CHAT)[0] == 200
    lines = e.access_log_lines(2)
    assert [(l["http.status"], l["provider"]) for l in lines] == [(429, "primary"), (200, "fallback")]
    text = e.prometheus()
    assert metric(text, "llm_failover_requests", provider="primary", status_class="4xx") == 1


def test_health_view_on_the_ops_listener_only(failing_primary):
    e = failing_primary
    view = e.health()
    by_name = {p["name"]: p for p in view["providers"]}
    assert by_name["primary"]["state"] == "cooling"
    assert by_name["primary"]["last_reason"] == "rate_limited"
    assert 55_000 < by_name["primary"]["cooling_for_ms"] <= 60_000
    assert by_name["primary"]["cooling_until"].endswith("Z")
    assert by_name["fallback"]["state"] == "healthy"
    assert by_name["fallback"]["group"] == 1
    # On the LLM listener the path is just a request for a provider, not the view.
    status, headers, body = http("GET", e.url + "/llm-failover/health")
    assert b'"providers"' not in body
    assert headers.get("x-llm-provider") == "fallback"


@pytest.mark.parametrize("ops", ["view-only", "mistyped-copy"])
def test_health_view_and_gauge_follow_the_routing_configuration(mocks, envoy, ops):
    """The view lists what the routing filter has, not a copy; a differently
    configured copy is shown as a conflict; the health gauge has one source and
    agrees with the view on every scrape."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    fallback = mocks("fallback")
    ops_plugin = None
    if ops == "mistyped-copy":
        # One provider missing, one model mistyped, as a hand copy can be.
        copy = config()
        copy["groups"] = copy["groups"][:1]
        copy["groups"][0]["providers"][0]["openai"]["model"] = "m1-typo"
        ops_plugin = dict(copy, healthPath="/llm-failover/health")
    def ops_copy(cfg):
        # The ops listener's filter configured with the hand copy instead of the view-only one.
        (ops_listener,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == "ops"]
        for f in ops_listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
            if is_llm_failover(f):
                set_plugin_config(f, json.dumps(ops_plugin))

    e = envoy(config(), {"primary": primary.port, "fallback": fallback.port},
              tweak=ops_copy if ops_plugin else None)
    assert e.post_chat(CHAT)[0] == 200
    view = e.health()
    assert [(p["name"], p["model"], p["state"]) for p in view["providers"]] == [
        ("primary", "m1", "cooling"), ("fallback", "m2", "healthy")]
    if ops == "mistyped-copy":
        (conflict,) = view["conflicts"]
        assert "provider primary is configured twice" in conflict and "m1-typo" in conflict
        assert "configured twice" in e.log()
    else:
        assert view["conflicts"] == []
    wait_until(lambda: metric(e.prometheus(), "llm_failover_health", provider="primary") == 1, 10,
               "the primary's health gauge")
    for _ in range(5):
        text = e.prometheus()
        assert metric(text, "llm_failover_health", provider="primary") == 1
        assert metric(text, "llm_failover_health", provider="fallback") == 0
        time.sleep(0.3)


def test_health_view_shows_probing(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "1")
    fallback = mocks("fallback")
    e = envoy(config(), {"primary": primary.port, "fallback": fallback.port})
    assert e.post_chat(CHAT)[0] == 200
    primary.configure(failure_injection_rate=0, latency_ms=3000)
    wait_until(lambda: e.providers()["primary"]["state"] == "half_open", 5,
               "the primary's cooldown to end")
    def probe():
        try:
            e.post_chat(CHAT)
        except OSError:
            pass  # Envoy stopped under it at teardown

    threading.Thread(target=probe, daemon=True).start()
    wait_until(lambda: e.providers()["primary"]["state"] == "probing", 5,
               "the view to show the probe")


def _ports_free(*ports):
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


@pytest.mark.skipif(not _ports_free(10000, 9901, 9902, 8000, 8001, 10010, 9911, 9912, 10020, 9921, 9922), reason="the demo's fixed loopback ports are in use")
def test_demo_runs_and_explains_itself():
    """`make demo`; under LLM_FAILOVER_BUILD=native `make demo BUILD=native`."""
    native = native_build()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), *(["--native"] if native else [])],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert ("envoy/envoy-native.yaml (the native module" in out) == native
    # The lab's three, the streamed one, the ones firstByteTimeout sent on and
    # hedgeAfter asked (step 7), and the spent quota's (step 8).
    assert out.count("HTTP 200 from openai-fallback") == 7
    # Step 8: a content-policy 400 goes back unchanged, a spent quota fails over loudly.
    assert "Request 6: HTTP 400 from mock-ratelimit-provider: content_filter" in out
    assert "Request 7: HTTP 200 from openai-fallback" in out
    assert "provider mock-ratelimit-provider is out of quota or credit (status 429)" in out
    assert 'llm_failover_errors{provider="mock-ratelimit-provider",class="content_policy"} 1' in out
    assert re.search(r"HTTP 200 from openai-fallback after 1\.\d s, instead of waiting 10 s", out)
    assert re.search(r"HTTP 200 from openai-fallback after 0\.[5-9] s, instead of waiting 10 s", out)
    assert "Request 5 (streamed): HTTP 200 from openai-fallback" in out
    assert "event 7: '4.'" in out
    assert "mock-ratelimit-provider failed (status 429, rate_limited)" in out
    assert "HTTP 200 from mock-ratelimit-provider" in out
    # The reference lab's own command (its step 5) on the demo's access log: one object
    # per request, each with its status and the endpoint that answered; the lab's first
    # request, which failed over within itself, shows the fallback's.
    access = Path(re.search(r"logs were in (/[^\s\x1b]+)", out).group(1)) / "access.log"
    lines = access.read_text().splitlines()
    with open(access) as f:
        jq = subprocess.run(["jq", LAB_JQ], stdin=f, capture_output=True, text=True, timeout=30)
    assert jq.returncode == 0, jq.stderr
    objs, text = [], jq.stdout.strip()
    while text:
        obj, end = json.JSONDecoder().raw_decode(text)
        objs.append(obj)
        text = text[end:].strip()
    assert len(objs) == len(lines) >= 7, (len(objs), len(lines))
    assert objs[0] == {"status": 200, "endpoint": "127.0.0.1:8001"}, objs[0]
    assert all(isinstance(o["status"], int) and o["endpoint"] for o in objs), objs
    # Step 10: the timeline of steps 3 to 5 (scripts/timeline.py), a real PNG, and what it
    # is drawn from: the lab's first request failing over, the primary without a 2xx for
    # its Retry-After (5 s), then back, and the background client's requests meanwhile.
    png = access.parent / "timeline.png"
    assert str(png) in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    entries, left_out = timeline.read_log(access)
    assert left_out == [] and len(entries) == len(lines)
    s = timeline.series(entries)
    assert (s.failovers[0].t, s.failovers[0].tried, s.failovers[0].reason) == \
        (0, ("mock-ratelimit-provider", "openai-fallback"), "rate_limited"), s.failovers
    first = s.cooldowns[0]
    assert (first.provider, first.start, first.reason) == ("mock-ratelimit-provider", 0, "rate_limited"), first
    assert first.end is not None and 4.9 <= first.length <= 7, first
    assert s.recoveries[0] == (first.end, "mock-ratelimit-provider")
    during = [e for e in entries if 0.5 <= s.since(e) < first.end]
    assert len(during) >= 25 and {e.provider for e in during} == {"openai-fallback"}, len(during)
    assert "1 failover; mock-ratelimit-provider cooled down from 0.0 s and was back at " in out
    assert "http://127.0.0.1:9901/stats/prometheus" in out
    assert "http://127.0.0.1:9902/llm-failover/health" in out
