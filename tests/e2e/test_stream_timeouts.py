"""Streamed requests on their own route (router mode, Envoy --concurrency 2, the
official SDK): streamFirstByteTimeout (on by default), firstTokenTimeout and
streamIdleTimeout, and recovery with the default cooldowns."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from harness import MESSAGES, config, http, provider, wait_until


def client(e, timeout=60):
    return openai.OpenAI(base_url=f"{e.url}/v1", api_key="client-token", max_retries=0, timeout=timeout)


def stream(e):
    """(x-llm-provider, seconds to the first event, seconds to the end, text)."""
    start = time.monotonic()
    raw = client(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
    first, text = None, ""
    for chunk in raw.parse():
        first = first or time.monotonic() - start
        text += "".join(c.delta.content or "" for c in chunk.choices)
    return raw.headers.get("x-llm-provider"), first, time.monotonic() - start, text


def test_with_the_defaults_a_silent_provider_hands_a_stream_to_the_fallback_in_20s(mocks, envoy, raw_providers):
    silent = raw_providers("silent")
    fallback = mocks("fallback")
    # No failover options at all.
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": silent.port, "fallback": fallback.port}, router=True)
    served, first, _, text = stream(e)
    print(f"a silent provider's stream reached the fallback's first event after {first:.2f} s")
    assert (served, text) == ("fallback", "Hello from fallback! 2+2 is 4.")
    assert 19.9 < first < 21.0, first
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["failover_reason"]) == ("primary,fallback", "timeout")
    view = e.providers()["primary"]
    assert (view["state"], view["last_reason"]) == ("cooling", "timeout")
    assert "no response headers within streamFirstByteTimeout (20000 ms)" in e.log()
    wait_until(lambda: silent.closed_at, 5, "Envoy to close the silent provider's connection")


def test_the_stream_timeout_leaves_non_streamed_requests_alone(mocks, envoy):
    """A non-streamed answer's headers come with the whole answer: a 2 s generation is
    not cut by a 1 s streamFirstByteTimeout, not even when the client sends the
    filter's streamed header itself."""
    primary = mocks("primary", "--latency-ms", "2000")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], streamFirstByteTimeout="1s"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    for headers in ({}, {"x-llm-failover-streamed": "1"}):
        start = time.monotonic()
        raw = client(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES,
                                                                  extra_headers=headers)
        assert raw.headers.get("x-llm-provider") == "primary"
        assert time.monotonic() - start > 1.9
    assert fallback.chat_requests() == []
    # The header never reaches a provider.
    assert all("x-llm-failover-streamed" not in r["headers"] for r in primary.chat_requests())
    # A streamed request on the same gateway is cut at 1 s.
    served, first, _, _ = stream(e)
    assert served == "fallback" and 0.9 < first < 1.8, first


def test_first_token_timeout_streams_the_fallback_when_headers_come_without_events(mocks, envoy):
    primary = mocks("primary")
    primary.configure(first_event_delay_ms=5000)
    fallback = mocks("fallback", "--chunk-delay-ms", "20")
    e = envoy(config([provider("primary")], [provider("fallback")], firstTokenTimeout="1s"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    served, first, _, text = stream(e)
    assert (served, text) == ("fallback", "Hello from fallback! 2+2 is 4.")
    assert 0.9 < first < 1.5, first
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["failover_reason"]) == ("primary,fallback", "stall")
    assert e.providers()["primary"]["last_reason"] == "stall"


def test_first_token_timeout_holds_under_16_concurrent_clients(mocks, envoy):
    primary = mocks("primary")
    primary.configure(first_event_delay_ms=3000)
    fallback = mocks("fallback", "--chunk-delay-ms", "5")
    # consecutiveFailures high: the primary stays in rotation, every request meets the stall.
    e = envoy(config([provider("primary")], [provider("fallback")], firstTokenTimeout="500ms",
                     consecutiveFailures=1000),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: stream(e), range(32)))
    assert [(r[0], r[3]) for r in results] == [("fallback", "Hello from fallback! 2+2 is 4.")] * 32
    assert all(0.45 < r[1] < 1.5 for r in results), sorted(r[1] for r in results)
    assert len(primary.chat_requests()) == 32 and len(fallback.chat_requests()) == 32


def test_a_stream_with_its_first_event_at_once_is_not_held_back(mocks, envoy):
    primary = mocks("primary", "--chunk-delay-ms", "200")
    e = envoy(config([provider("primary")], firstTokenTimeout="1s"), {"primary": primary.port}, router=True)
    client_ = client(e)
    start = time.monotonic()
    times = []
    for _ in client_.chat.completions.create(model="m", messages=MESSAGES, stream=True):
        times.append(time.monotonic() - start)
    assert times[0] < 0.15, times
    # Events one by one, 200 ms apart (a stall shorter than firstTokenTimeout).
    assert times[-1] - times[0] > 1.2, times


def test_stream_idle_timeout_ends_a_stalled_stream_and_counts_a_stall(mocks, envoy):
    primary = mocks("primary")
    primary.configure(stall_after=3, stall_ms=5000)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], streamIdleTimeout="1s"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    start = time.monotonic()
    seen = 0
    with pytest.raises(openai.APIConnectionError):
        for _ in client(e).chat.completions.create(model="m", messages=MESSAGES, stream=True):
            seen += 1
    took = time.monotonic() - start
    assert seen == 3, seen
    # The stall is noticed after 1 s and reaches the client at once (no delayed close).
    assert 0.95 < took < 1.5, took
    assert fallback.chat_requests() == [], "bytes went out: the stream cannot move"
    log = e.access_log_lines(1)[0]
    assert (log["provider"], log["stream"]) == ("primary", "stall")
    view = e.providers()["primary"]
    assert (view["state"], view["last_reason"]) == ("cooling", "stall")


def test_stream_idle_timeout_under_16_concurrent_clients(mocks, envoy):
    primary = mocks("primary")
    primary.configure(stall_after=2, stall_ms=3000)
    e = envoy(config([provider("primary")], streamIdleTimeout="500ms", consecutiveFailures=1000),
              {"primary": primary.port}, router=True)

    def one(_):
        start = time.monotonic()
        try:
            for _ in client(e).chat.completions.create(model="m", messages=MESSAGES, stream=True):
                pass
        except openai.APIConnectionError:
            return time.monotonic() - start
        return None

    with ThreadPoolExecutor(16) as pool:
        took = list(pool.map(one, range(32)))
    assert all(t is not None and 0.45 < t < 1.2 for t in took), took
    lines = e.access_log_lines(32)
    assert [l["stream"] for l in lines] == ["stall"] * 32


@pytest.mark.first_pass_only("a minute-long outage; the cooldown and probe schedule it checks is the core's, "
                              "the same in every build and wiring (test_breaker.py covers probes in both builds)")
def test_with_the_defaults_a_provider_healed_after_a_minute_gets_its_traffic_back_within_30s(mocks, envoy):
    """The issue's scenario: 503s for 60 s, then healthy; one request every 4 s. The
    defaults (defaultCooldown 5 s, maxBackoff 20 s) probe it again at least every 20 s."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "service_unavailable")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    start = time.monotonic()
    healed_at = None
    back_at = None
    for _ in range(40):  # at most 160 s
        now = time.monotonic() - start
        if healed_at is None and now >= 60:
            primary.configure(failure_injection_rate=0)
            healed_at = now
        served = client(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        if healed_at is not None and served.headers.get("x-llm-provider") == "primary":
            back_at = time.monotonic() - start
            break
        assert served.headers.get("x-llm-provider") in ("primary", "fallback")
        time.sleep(max(0.0, 4 - (time.monotonic() - start - now)))
    assert back_at is not None, "the primary never got its traffic back"
    print(f"the primary healed at {healed_at:.1f} s and served again at {back_at:.1f} s")
    assert back_at - healed_at <= 30, f"back {back_at - healed_at:.1f} s after healing"


def test_a_body_too_large_to_read_goes_on_unread(mocks, envoy):
    """No model to rewrite and no hedge: the filter reads the body only to tell a
    stream, and one over maxBodyBytes goes on unread (as a non-streamed request)
    instead of getting a 413."""
    primary = mocks("primary")
    e = envoy(config([provider("primary")], [provider("fallback")]), {"primary": primary.port,
                                                                      "fallback": primary.port},
              router=True)
    big = json.dumps({"model": "m", "stream": True,
                      "messages": [{"role": "user", "content": "x" * 1_200_000}]}).encode()
    status, headers, body = http("POST", f"{e.url}/v1/chat/completions", big, {"content-type": "application/json"})
    assert (status, headers.get("x-llm-provider")) == (200, "primary"), body[:300]
    (r,) = primary.chat_requests()
    assert len(r["body"]) == len(big)
    # With a model to rewrite the filter must read it: 413. (A small limit and a body a
    # little over it: the 413 comes as soon as the body passes the limit, and a client
    # still sending a large rest may see its connection closed before it reads the answer.)
    small = {**config([provider("primary", openai={"model": "m2"})]), "maxBodyBytes": 4096}
    e2 = envoy(small, {"primary": primary.port}, router=True)
    over = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 6000}]}).encode()
    assert http("POST", f"{e2.url}/v1/chat/completions", over, {"content-type": "application/json"})[0] == 413
