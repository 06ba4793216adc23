"""Router mode (`llm-failover render`'s wiring): failover through Envoy's own retries,
with the filter on every attempt; the fallback's stream arrives event by event."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from harness import MESSAGES, RENDER_BIN, ROOT, config, dead_port, provider

# The fallback streams 9 events 200 ms apart: about 1.6 s from first to last.
CHUNK_DELAY = ["--chunk-delay-ms", "200"]






def stream_times(envoy, model="m"):
    """Streams a chat completion with the openai SDK; returns (x-llm-provider,
    seconds from the request to each content event)."""
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="client-token", max_retries=0, timeout=30)
    start = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, stream=True)
    times = []
    for _chunk in raw.parse():
        times.append(time.monotonic() - start)
    return raw.headers.get("x-llm-provider"), times


def assert_streamed(times, first_by):
    """The first event came by `first_by` s, and the events came one by one (the
    last one about 1.6 s after the first), not in one piece."""
    assert len(times) >= 8, times
    assert times[0] < first_by, f"first event after {times[0]:.3f}s: {times}"
    assert times[-1] - times[0] > 1.2, f"events arrived together: {times}"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(1 for g in gaps if g > 0.1) >= 6, f"events arrived in bursts: {gaps}"


@pytest.mark.parametrize("failure", ["rate_limit", "service_unavailable"])
def test_stream_fails_over_after_a_failing_status(mocks, envoy, failure):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", failure, "--retry-after", "30")
    fallback = mocks("fallback", *CHUNK_DELAY)
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    served, times = stream_times(e)
    assert served == "fallback"
    assert_streamed(times, first_by=0.15)
    assert len(primary.chat_requests()) == 1 and len(fallback.chat_requests()) == 1


@pytest.mark.parametrize("fault", ["refused", "reset"])
def test_stream_fails_over_when_the_provider_cannot_be_reached(mocks, envoy, raw_providers, fault):
    port = dead_port() if fault == "refused" else raw_providers("reset").port
    fallback = mocks("fallback", *CHUNK_DELAY)
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": port, "fallback": fallback.port}, router=True)
    served, times = stream_times(e)
    assert served == "fallback"
    assert_streamed(times, first_by=0.15)
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["attempts"], log["failover_reason"]) == ("primary,fallback", "2", "connection")


def without_healthy_host(port):
    """A `tweak` for the rendered bootstrap: the cluster of the provider on `port` keeps
    no host of its own (what an empty DNS answer or EDS update, or health checks failing
    every host, leave)."""
    def tweak(cfg):
        (c,) = [c for c in cfg["static_resources"]["clusters"]
                if any(e["endpoint"]["address"].get("socket_address", {}).get("port_value") == port
                       for e in c.get("load_assignment", {}).get("endpoints", [{}])[0].get("lb_endpoints", []))]
        c["load_assignment"]["endpoints"][0]["lb_endpoints"] = []
    return tweak


def test_stream_fails_over_when_the_provider_has_no_healthy_host(mocks, envoy):
    fallback = mocks("fallback", *CHUNK_DELAY)
    dead = dead_port()
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": dead, "fallback": fallback.port}, router=True,
              tweak=without_healthy_host(dead))
    served, times = stream_times(e)
    assert served == "fallback"
    assert_streamed(times, first_by=0.15)
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["attempts"], log["failover_reason"]) == ("primary,fallback", "2", "connection")
    assert e.health()["providers"][0]["state"] == "cooling"


def test_a_provider_by_host_name_without_a_healthy_host_fails_over(mocks, envoy):
    """The stand-in for no healthy host in a DNS cluster (a pipe endpoint there is
    dropped by Envoy: this test failed with it)."""
    fallback = mocks("fallback", *CHUNK_DELAY)
    dead = dead_port()
    e = envoy(config([provider("primary", endpoint=f"http://localhost:{dead}")], [provider("fallback")]),
              {"fallback": fallback.port}, router=True, tweak=without_healthy_host(dead))
    served, times = stream_times(e)
    assert served == "fallback"
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["failover_reason"]) == ("primary,fallback", "connection")


def test_providers_by_host_name_are_served(mocks, envoy):
    """A host name gives a STRICT_DNS cluster (with its no-healthy-host stand-in)."""
    primary = mocks("primary")
    e = envoy(config([provider("primary", endpoint=f"http://localhost:{primary.port}")]), {}, router=True)
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path="/v1/chat/completions")
    assert (status, headers.get("x-llm-provider")) == (200, "primary")
    assert len(primary.chat_requests()) == 1


def test_stream_fails_over_after_an_attempt_timeout(mocks, envoy, raw_providers):
    silent = raw_providers("silent")
    fallback = mocks("fallback", *CHUNK_DELAY)
    e = envoy(config([provider("primary")], [provider("fallback")], attemptTimeout="1s"),
              {"primary": silent.port, "fallback": fallback.port}, router=True)
    served, times = stream_times(e)
    assert served == "fallback"
    # The primary had 1 s for its first byte; then the fallback streams at once.
    assert 1.0 <= times[0] < 1.3, times
    assert_streamed(times, first_by=1.3)
    assert e.health()["providers"][0]["state"] == "cooling"


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_no_request_is_lost_when_the_provider_refuses_under_load(mocks, envoy, router):
    """16 concurrent clients, 2 KB bodies, a primary that refuses connections and
    recovers every 100 ms: every request gets the fallback's answer. (In dispatch
    mode Envoy's answer to the refused connection often comes before the body.)"""
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], defaultCooldown="100ms"),
              {"primary": dead_port(), "fallback": fallback.port}, router=router)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    deadline = time.monotonic() + 120

    def one(_):
        if time.monotonic() > deadline:
            return "late"
        status, headers, _ = e.post_chat(body, path="/v1/chat/completions")
        return status, headers.get("x-llm-provider")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(800)))
    lost = [r for r in results if r != (200, "fallback")]
    assert lost == [], f"{len(lost)} of 800 lost: {lost[:5]}"
    stats = e.stats()
    # The primary was tried again after each cooldown (so the test met the fault).
    fails = stats.get(f"cluster.{e.cluster('primary')}.upstream_cx_connect_fail", 0)
    assert fails >= 2, fails


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_each_attempt_carries_only_its_own_providers_credentials(mocks, envoy, router):
    a = mocks("a", "--failure-injection-rate", "100", "--retry-after", "30")
    b = mocks("b", "--failure-injection-rate", "100", "--failure-types", "server_error")
    c = mocks("c", "--api-key", "sk-c")
    plugin = config(
        [provider("a", openai={"model": "model-a"}, host="a.example",
                  policies={"auth": {"key": {"env": "KEY_A", "header": "api-key"}}})],
        [provider("b", openai={"model": "model-b"})],
        [provider("c", openai={"model": "model-c"}, policies={"auth": {"key": {"env": "KEY_C"}}})],
    )
    e = envoy(plugin, {"a": a.port, "b": b.port, "c": c.port}, router=router,
              env={"KEY_A": "sk-a", "KEY_C": "sk-c"})
    status, headers, body = e.post_chat({"model": "x", "messages": MESSAGES},
                                        {"authorization": "Bearer client-token",
                                         "x-llm-failover-streamed": "forged",
                                         "x-envoy-max-retries": "9"},
                                        path="/v1/chat/completions?tag=1")
    assert status == 200 and headers["x-llm-provider"] == "c", body
    seen = {}
    for m in (a, b, c):
        (r,) = m.chat_requests()
        seen[m.name] = (dict(r["headers"]), json.loads(r["body"])["model"], r["path"])
    assert seen["a"][0]["api-key"] == "sk-a" and "authorization" not in seen["a"][0]
    assert seen["a"][0]["host"] == "a.example"
    # b is passthrough: the client's own token, not a's key, and the client's host.
    assert seen["b"][0]["authorization"] == "Bearer client-token" and "api-key" not in seen["b"][0]
    assert seen["b"][0]["host"] != "a.example"
    assert seen["c"][0]["authorization"] == "Bearer sk-c" and "api-key" not in seen["c"][0]
    assert [seen[n][1] for n in "abc"] == ["model-a", "model-b", "model-c"]
    assert all(seen[n][2] == "/v1/chat/completions?tag=1" for n in "abc")
    for name, (h, _, _) in seen.items():
        internal = [k for k in h if k.startswith("x-llm-") or k in ("x-envoy-max-retries", "x-envoy-attempt-count")]
        assert internal == [], f"{name} got internal headers {internal}"
    assert "sk-a" not in json.dumps(headers) and "sk-c" not in json.dumps(headers)


def test_shipped_envoy_configs_are_render_output():
    """envoy/*.yaml, compose/envoy.yaml and the k8s ConfigMap are `make render`'s output
    of their plugin configurations (each is validated by Envoy in its own test)."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_shipped.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr


def test_render_refuses_what_the_filter_refuses(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"groups": [{"providers": [{"name": "a", "cluster": "c", "weight": 0}]}]}))
    r = subprocess.run([str(RENDER_BIN), "render", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    assert "groups[0].providers[0].weight: 0 is out of range" in r.stderr
