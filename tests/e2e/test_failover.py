"""Priority-group failover in real Envoy (--concurrency 2) with the built .wasm."""

import json
import time
from email.utils import formatdate

import openai
import pytest
from harness import CHAT, MESSAGES, config, insert_before_router, provider, sdk, served_by, wait_until











def test_lab_sequence_with_within_request_false(mocks, envoy):
    """The reference lab, step 4: request 1 gets the primary's 429, requests 2 and 3
    are served by the fallback."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "rate_limit",
                    "--retry-after", "60")
    fallback = mocks("fallback", "--api-key", "sk-fallback")
    e = envoy(config([provider("mock-ratelimit-provider", "primary", openai={"model": "mock-gpt-4o"})],
                     [provider("openai-fallback", "fallback", openai={"model": "gpt-4o-mini"},
                               policies={"auth": {"key": {"env": "OPENAI_API_KEY"}}})],
                     withinRequest=False),
              {"primary": primary.port, "fallback": fallback.port}, env={"OPENAI_API_KEY": "sk-fallback"})
    client = sdk(e)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="", messages=MESSAGES)
    assert err.value.status_code == 429
    assert err.value.response.headers["x-llm-provider"] == "mock-ratelimit-provider"
    assert err.value.response.headers["retry-after"] == "60"
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="", messages=MESSAGES)
        assert raw.status_code == 200
        assert raw.headers["x-llm-provider"] == "openai-fallback"
        assert raw.parse().model == "gpt-4o-mini"
    assert len(primary.chat_requests()) == 1
    assert len(fallback.chat_requests()) == 2


def test_within_request_failover_across_three_groups(mocks, envoy):
    p1 = mocks("p1", "--failure-injection-rate", "100", "--failure-types", "rate_limit", "--retry-after", "60")
    p2 = mocks("p2", "--failure-injection-rate", "100", "--failure-types", "service_unavailable")
    p3 = mocks("p3")
    e = envoy(config([provider("p1", openai={"model": "m1"})], [provider("p2", openai={"model": "m2"})],
                     [provider("p3", openai={"model": "m3"})]),
              {"p1": p1.port, "p2": p2.port, "p3": p3.port})
    raw = sdk(e).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["x-llm-provider"] == "p3"
    assert raw.headers["x-mock-name"] == "p3"
    assert raw.parse().model == "m3"
    # Each provider saw the request once, with its own model.
    for mock, model in ((p1, "m1"), (p2, "m2"), (p3, "m3")):
        reqs = mock.chat_requests()
        assert len(reqs) == 1, mock.name
        assert json.loads(reqs[0]["body"])["model"] == model
    # p1 and p2 now cool down: the next request goes straight to p3.
    assert served_by(e) == (200, "p3")
    assert len(p1.chat_requests()) == 1 and len(p2.chat_requests()) == 1


def test_primary_takes_traffic_back_after_short_retry_after(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "2")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], defaultCooldown="600s"),
              {"primary": primary.port, "fallback": fallback.port})
    failed_at = time.monotonic()
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0)
    # Still cooling: the fallback keeps the traffic (the primary is not even asked).
    assert served_by(e) == (200, "fallback")
    assert len(primary.chat_requests()) == 1
    wait_until(lambda: served_by(e) == (200, "primary"), 10, "primary to take traffic back")
    assert time.monotonic() - failed_at >= 1.9
    assert served_by(e) == (200, "primary")


def test_server_error_fails_over_and_uses_default_cooldown(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], defaultCooldown="1500ms"),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0)
    assert served_by(e) == (200, "fallback")
    wait_until(lambda: served_by(e) == (200, "primary"), 10, "primary back after defaultCooldown")


def test_status_outside_on_status_is_passed_through(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], onStatus=[429]),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (500, "primary")
    assert served_by(e) == (500, "primary")
    assert fallback.chat_requests() == []


def test_http_date_retry_after(mocks, envoy):
    # defaultCooldown is huge: if the date were not understood, the primary would
    # stay out for 10 minutes and the wait below would time out.
    primary = mocks("primary", "--failure-injection-rate", "100")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], defaultCooldown="600s", maxCooldown="600s"),
              {"primary": primary.port, "fallback": fallback.port})
    primary.configure(retry_after=formatdate(time.time() + 3, usegmt=True))
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0)
    assert served_by(e) == (200, "fallback")
    wait_until(lambda: served_by(e) == (200, "primary"), 10, "primary back at the HTTP-date")


def test_max_cooldown_caps_retry_after(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "3600")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], defaultCooldown="1s", maxCooldown="2s"),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0)
    assert served_by(e) == (200, "fallback")
    wait_until(lambda: served_by(e) == (200, "primary"), 10, "primary back after maxCooldown, not Retry-After")


def test_weights_share_a_group(mocks, envoy):
    a = mocks("a")
    b = mocks("b")
    e = envoy(config([provider("a", weight=3), provider("b", weight=1)]), {"a": a.port, "b": b.port})
    counts = {"a": 0, "b": 0}
    for _ in range(200):
        status, name = served_by(e)
        assert status == 200
        counts[name] += 1
    # Each worker walks its own tickets through the cycle of 4 (a a a b): after any
    # number of requests its count of a is off its exact share by less than one (the
    # README's bound, min(weight, total - weight) = 1 per worker). Two workers: at
    # most 2 off 150, however the kernel spread the connections.
    assert abs(counts["a"] - 150) <= 2, counts
    assert counts["a"] + counts["b"] == 200


def test_health_is_shared_by_both_workers(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], withinRequest=False),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (429, "primary")
    # Every request on a fresh connection; the kernel spreads them over both workers.
    results = [served_by(e) for _ in range(40)]
    assert results == [(200, "fallback")] * 40
    assert len(primary.chat_requests()) == 1
    stats = e.stats()
    prefix = f"listener.127.0.0.1_{e.port}.worker_"
    per_worker = [v for k, v in stats.items() if k.startswith(prefix) and k.endswith("downstream_cx_total")]
    assert len(per_worker) == 2 and all(v > 0 for v in per_worker), per_worker


def test_forged_routing_header_is_replaced(mocks, envoy):
    primary = mocks("primary")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": primary.port, "fallback": fallback.port})
    for forged in ("fallback", "no-such-cluster", "primary, fallback"):
        assert served_by(e, headers={"x-llm-failover-cluster": forged}) == (200, "primary")
    assert fallback.chat_requests() == []
    for r in primary.chat_requests():
        # The route reads it for the cluster and keeps it from the provider.
        assert [v for n, v in r["headers"] if n == "x-llm-failover-cluster"] == []
    assert len(primary.chat_requests()) == 3


def test_every_provider_cooling_down(mocks, envoy):
    p1 = mocks("p1", "--failure-injection-rate", "100", "--retry-after", "30")
    p2 = mocks("p2", "--failure-injection-rate", "100", "--retry-after", "40")
    e = envoy(config([provider("p1")], [provider("p2")]), {"p1": p1.port, "p2": p2.port})
    status, h, body = e.post_chat(CHAT)
    assert status == 429
    assert h["x-llm-provider"] == "p2"
    assert int(h["retry-after"]) in (29, 30)
    assert json.loads(body)["error"]["code"] == "rate_limit"
    # Both cool down now: the request goes to p1, whose cooldown ends first.
    status, h, _ = e.post_chat(CHAT)
    assert (status, h["x-llm-provider"]) == (429, "p1")
    assert int(h["retry-after"]) in (29, 30)
    assert len(p1.chat_requests()) == 2 and len(p2.chat_requests()) == 1


def test_refused_connection_fails_over_and_cools_down(mocks, envoy):
    from harness import dead_port

    fallback = mocks("fallback")
    dead = dead_port()  # nothing listens here
    e = envoy(config([provider("dead")], [provider("fallback")], onStatus=[429]),
              {"dead": dead, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    fails = e.stats().get(f"cluster.{e.cluster('dead')}.upstream_cx_connect_fail", 0)
    assert fails >= 1
    # Cooling now: further requests do not even try to connect.
    for _ in range(5):
        assert served_by(e) == (200, "fallback")
    assert e.stats().get(f"cluster.{e.cluster('dead')}.upstream_cx_connect_fail", 0) == fails


def test_refused_connection_on_failover_attempt(mocks, envoy):
    from harness import dead_port

    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    last = mocks("last")
    e = envoy(config([provider("primary")], [provider("dead")], [provider("last")], onStatus=[429]),
              {"primary": primary.port, "dead": dead_port(), "last": last.port})
    assert served_by(e) == (200, "last")
    assert served_by(e) == (200, "last")
    assert len(primary.chat_requests()) == 1


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_upstream_timeout_counts_as_failure(mocks, envoy, router):
    slow = mocks("slow", "--latency-ms", "3000")
    fallback = mocks("fallback")
    # Router mode: attemptTimeout (the per-try timeout); dispatch mode: the hand-wired
    # route's timeout.
    e = envoy(config([provider("slow")], [provider("fallback")], **({"attemptTimeout": "1s"} if router else {})),
              {"slow": slow.port, "fallback": fallback.port}, route_timeout="1s", router=router)
    assert served_by(e) == (200, "fallback")
    started = time.monotonic()
    assert served_by(e) == (200, "fallback")
    assert time.monotonic() - started < 0.9, "the slow primary should be cooling, not tried again"


# Envoy's own 503 for requests marked `x-test-fault` (a fault filter after the
# llm-failover filter): an Envoy local reply, not a provider's answer.
FAULT_FILTER = {"name": "envoy.filters.http.fault", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "abort": {"http_status": 503, "percentage": {"numerator": 100, "denominator": "HUNDRED"}},
    "headers": [{"name": "x-test-fault", "present_match": True}]}}


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_envoy_local_reply_is_not_a_provider_failure(mocks, envoy, router):
    """A 503 that Envoy itself answers (here a fault filter's abort; a local rate limit's
    429 is the same) passes through untouched: no cooldown, no failover, and the next
    request goes to the primary."""
    primary = mocks("primary")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": primary.port, "fallback": fallback.port}, router=router,
              tweak=lambda cfg: insert_before_router(cfg, FAULT_FILTER))
    status, h, body = e.post_chat(CHAT, {"x-test-fault": "1"})
    assert status == 503 and b"fault filter abort" in body, body
    assert primary.chat_requests() == [] and fallback.chat_requests() == []
    assert [p["state"] for p in e.health()["providers"]] == ["healthy", "healthy"]
    assert served_by(e, headers=None) == (200, "primary")