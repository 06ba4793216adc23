"""Hedging (`failover.hedgeAfter`, router mode): a request without response headers
after `hedgeAfter` is sent to the next provider that is not cooling too; the first
to answer wins and the other attempt is cancelled (its provider sees the connection
close)."""

import concurrent.futures
import json
import time

import openai
import pytest
from harness import MESSAGES, config, metric, provider, wait_until

CHAT_PATH = "/v1/chat/completions"


def sdk(envoy):
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="client-token", max_retries=0, timeout=30)


def hedge_metric(e, frm, to, winner):
    return metric(e.prometheus(), "llm_failover_hedges", winner=winner, **{"from": frm, "to": to}) or 0


def ask_whole(client, i):
    """Request `i` (streamed when even), checked whole; the provider that answered."""
    stream = i % 2 == 0
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=stream)
    parsed = raw.parse()
    if stream:
        chunks = list(parsed)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        assert parsed.choices[0].message.content
    return raw.headers["x-llm-provider"]


def test_a_silent_primary_is_hedged_and_the_hedge_wins(mocks, envoy, raw_providers):
    silent = raw_providers("silent")
    fallback = mocks("fallback", "--chunk-delay-ms", "20")
    e = envoy(config([provider("primary")], [provider("fallback", openai={"model": "fallback-model"})], hedgeAfter="300ms"),
              {"primary": silent.port, "fallback": fallback.port}, router=True)
    start = time.monotonic()
    raw = sdk(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    took = time.monotonic() - start
    answer = raw.parse()
    assert raw.headers["x-llm-provider"] == "fallback"
    assert answer.choices[0].message.content and answer.model == "fallback-model"
    assert 0.3 <= took < 0.8, took
    # The routed attempt is cancelled: the primary sees its connection close.
    wait_until(lambda: silent.closed_at, 5, "the primary's connection to close")
    assert silent.closed_at[0] - start < took + 0.5
    # Exactly two attempts: one each.
    assert len(silent.received) == 1 and len(fallback.chat_requests()) == 1
    sent = fallback.chat_requests()[0]
    assert json.loads(sent["body"])["model"] == "fallback-model"
    assert "x-llm-failover-hedge" not in {k.lower() for k, _ in sent["headers"]}
    log = e.access_log_lines(1)[0]
    assert (log["provider"], log["hedge"], log["http.status"]) == ("fallback", "fallback:won", 200)
    wait_until(lambda: hedge_metric(e, "primary", "fallback", "fallback") == 1, 10, "the hedge metric")
    # Losing the race is not a failure: the primary is still healthy.
    view = e.providers()
    assert view["primary"]["state"] == "healthy" and view["primary"]["consecutive_failures"] == 0


def test_a_streamed_request_gets_the_hedges_whole_stream(mocks, envoy, raw_providers):
    silent = raw_providers("silent")
    fallback = mocks("fallback", "--chunk-delay-ms", "20")
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="200ms"),
              {"primary": silent.port, "fallback": fallback.port}, router=True)
    raw = sdk(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
    chunks = list(raw.parse())
    assert raw.headers["x-llm-provider"] == "fallback"
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text, "the whole answer"
    wait_until(lambda: silent.closed_at, 5, "the primary's connection to close")


def test_the_routed_attempt_wins_and_the_hedge_is_cancelled(mocks, envoy, raw_providers):
    primary = mocks("primary")
    primary.configure(latency_ms=700)
    silent = raw_providers("silent")
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="200ms"),
              {"primary": primary.port, "fallback": silent.port}, router=True)
    start = time.monotonic()
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    took = time.monotonic() - start
    assert (status, headers["x-llm-provider"]) == (200, "primary")
    assert 0.7 <= took < 1.2, took
    assert len(silent.received) == 1, "the hedge was sent"
    # The client is told the hedge was asked too, and lost the race.
    assert headers["x-llm-failover-tried"] == "fallback=slow, primary=200"
    # The hedge is cancelled when the primary answers, not left to run.
    wait_until(lambda: silent.closed_at, 5, "the hedge's connection to close")
    assert silent.closed_at[0] - start < took + 0.3, (silent.closed_at[0] - start, took)
    log = e.access_log_lines(1)[0]
    assert (log["provider"], log["hedge"]) == ("primary", "fallback:lost")
    wait_until(lambda: hedge_metric(e, "primary", "fallback", "primary") == 1, 10, "the hedge metric")
    view = e.providers()
    assert view["fallback"]["state"] == "healthy", "a cancelled hedge is not the provider's failure"


def test_a_hedge_never_goes_to_a_cooling_provider(mocks, envoy, raw_providers):
    primary = mocks("primary")
    cooling = mocks("cooling", "--failure-injection-rate", "100", "--retry-after", "60")
    third = mocks("third")
    e = envoy(config([provider("primary")], [provider("cooling")], [provider("third")], hedgeAfter="200ms"),
              {"primary": primary.port, "cooling": cooling.port, "third": third.port}, router=True)
    # Make `cooling` cool down: the primary fails once, the request fails over to it.
    primary.configure(failure_injection_rate=100, retry_after="1")
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (200, "third")
    view = e.providers()
    assert view["cooling"]["state"] == "cooling"
    wait_until(lambda: e.providers()["primary"]["state"] != "cooling",
               5, "the primary's 1 s cooldown to end")
    primary.configure(failure_injection_rate=0, latency_ms=600)
    cooling.reset()
    third.reset()
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert status == 200
    assert cooling.chat_requests() == [], "no hedge to a cooling provider"
    assert len(third.chat_requests()) == 1, "the hedge went to the next provider not cooling"


def test_no_hedge_when_every_other_provider_is_cooling(mocks, envoy):
    primary = mocks("primary")
    cooling = mocks("cooling", "--failure-injection-rate", "100", "--retry-after", "60")
    e = envoy(config([provider("cooling")], [provider("primary")], hedgeAfter="200ms"),
              {"primary": primary.port, "cooling": cooling.port}, router=True)
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (200, "primary")
    primary.configure(latency_ms=500)
    cooling.reset()
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (200, "primary")
    assert cooling.chat_requests() == []
    assert e.access_log_lines(2)[1]["hedge"] in (None, "-", "")


def test_hedging_under_concurrency(mocks, envoy):
    """16 clients at once, the primary slow on some requests: every answer whole,
    every hedge decided, no provider blamed for losing a race."""
    primary = mocks("primary")
    fallback = mocks("fallback")
    primary.configure(latency_ms=400)
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="150ms"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    client = sdk(e)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        served = list(pool.map(lambda i: ask_whole(client, i), range(64)))
    assert served.count("fallback") == 64, served
    logs = e.access_log_lines(64)
    assert all(log["hedge"] == "fallback:won" for log in logs), [log["hedge"] for log in logs]
    wait_until(lambda: hedge_metric(e, "primary", "fallback", "fallback") == 64, 10, "the hedge metric")
    # Every routed attempt was cancelled and none counted as the primary's failure.
    view = e.providers()
    assert view["primary"]["state"] == "healthy" and view["primary"]["consecutive_failures"] == 0


def test_races_both_ways_under_concurrency(mocks, envoy):
    """Both providers take about as long as each other: some requests are won by the
    routed attempt, some by the hedge. Every answer is whole and named after its
    winner, every hedge is counted once, and losing a race is nobody's failure."""
    # A hedge's answer counts once it is whole: the fallback's non-streamed answers
    # (done at about 100 + 150 ms) beat the primary's headers (400 ms), its streams
    # (40 ms between events) do not.
    primary = mocks("primary", "--chunk-delay-ms", "5")
    fallback = mocks("fallback", "--chunk-delay-ms", "40")
    primary.configure(latency_ms=400)
    fallback.configure(latency_ms=150)
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="100ms"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    client = sdk(e)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        served = list(pool.map(lambda i: ask_whole(client, i), range(48)))
    logs = e.access_log_lines(48)
    for log in logs:
        assert log["hedge"] == ("fallback:won" if log["provider"] == "fallback" else "fallback:lost"), log
    assert sorted(log["provider"] for log in logs) == sorted(served)
    won = served.count("fallback")
    assert 0 < won < 48, f"both kinds of winner: {won} hedges won"
    wait_until(lambda: hedge_metric(e, "primary", "fallback", "fallback") == won
               and hedge_metric(e, "primary", "fallback", "primary") == 48 - won, 10, "the hedge metrics")
    view = e.providers()
    for name in ("primary", "fallback"):
        assert view[name]["state"] == "healthy" and view[name]["consecutive_failures"] == 0, view[name]


def test_a_failed_hedge_leaves_the_routed_attempt_alone(mocks, envoy):
    primary = mocks("primary")
    primary.configure(latency_ms=500)
    limited = mocks("limited", "--failure-injection-rate", "100", "--retry-after", "30")
    e = envoy(config([provider("primary")], [provider("limited")], hedgeAfter="100ms"),
              {"primary": primary.port, "limited": limited.port}, router=True)
    status, headers, body = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (200, "primary"), body
    assert len(limited.chat_requests()) == 1
    log = e.access_log_lines(1)[0]
    assert (log["provider"], log["hedge"]) == ("primary", "limited:failed")
    wait_until(lambda: hedge_metric(e, "primary", "limited", "primary") == 1, 10, "the hedge metric")
    view = e.providers()
    assert (view["limited"]["state"], view["limited"]["last_reason"]) == ("cooling", "rate_limited")


@pytest.mark.wasm_only("proxy-wasm's VMs: the native module has none, and sends each hedge from the request's own filter")
def test_one_vm_for_both_filters_sends_no_hedges(mocks, envoy):
    """A hand-wired Envoy that gives the upstream filter the downstream filter's VM:
    hedging would have to start a context inside a running one; the filter says so
    and sends none (no VM crash, the request is served)."""
    primary = mocks("primary")
    primary.configure(latency_ms=400)
    fallback = mocks("fallback")

    def one_vm(cfg):
        for c in cfg["static_resources"]["clusters"]:
            if "typed_extension_protocol_options" not in c:
                continue  # llm_failover_exhausted
            opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            opts["http_filters"][0]["typed_config"]["config"]["vm_config"].pop("configuration")

    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="100ms"),
              {"primary": primary.port, "fallback": fallback.port}, router=True, tweak=one_vm)
    for _ in range(2):
        status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
        assert (status, headers["x-llm-provider"]) == (200, "primary")
    assert fallback.chat_requests() == []
    assert "hedgeAfter needs the upstream filter in a VM of its own" in e.log()
    assert "panicked" not in e.log()


def test_a_client_that_leaves_takes_both_attempts_with_it(envoy, raw_providers):
    primary = raw_providers("silent")
    hedged = raw_providers("silent")
    e = envoy(config([provider("primary")], [provider("hedged")], hedgeAfter="200ms"),
              {"primary": primary.port, "hedged": hedged.port}, router=True)
    start = time.monotonic()
    try:
        e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH, timeout=0.6)
        raise AssertionError("two silent providers cannot answer")
    except (TimeoutError, OSError):
        pass
    left = time.monotonic()
    assert left - start >= 0.6 and len(hedged.received) == 1, "the hedge was sent before the client left"
    wait_until(lambda: primary.closed_at and hedged.closed_at, 5, "both providers to see their connection close")
    assert max(primary.closed_at[0], hedged.closed_at[0]) - left < 0.5
    view = e.providers()
    for name in ("primary", "hedged"):
        assert view[name]["state"] == "healthy" and view[name]["consecutive_failures"] == 0, view[name]


def test_a_hedge_goes_past_the_provider_the_router_moved_on_to(mocks, envoy):
    """The primary's 429 sends the request on to `second` (Envoy's retry); `second` is
    slow, so the hedge goes to `third`, never to `second` again."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    second = mocks("second")
    second.configure(latency_ms=600)
    third = mocks("third")
    e = envoy(config([provider("primary")], [provider("second")], [provider("third")], hedgeAfter="150ms"),
              {"primary": primary.port, "second": second.port, "third": third.port}, router=True)
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (200, "third")
    assert [len(m.chat_requests()) for m in (primary, second, third)] == [1, 1, 1]
    # Every provider asked, in order: the failover, then the hedge past the slow one.
    assert headers["x-llm-failover-tried"] == "primary=rate_limited, second=slow, third=200"
    log = e.access_log_lines(1)[0]
    assert log["hedge"] == "third:won"
    wait_until(lambda: hedge_metric(e, "second", "third", "third") == 1, 10, "the hedge metric")


def test_a_retry_to_the_hedged_provider_waits_for_the_hedge(mocks, envoy, raw_providers):
    """The primary resets 0.4 s in, after the hedge went to the fallback: Envoy's retry
    would ask the fallback a second time. It waits; the hedge wins, and the fallback
    sees the request once."""
    primary = raw_providers("late-reset")
    fallback = mocks("fallback")
    fallback.configure(latency_ms=600)
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="150ms"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (200, "fallback")
    assert len(primary.received) == 1 and len(fallback.chat_requests()) == 1
    assert e.access_log_lines(1)[0]["hedge"] == "fallback:won"
    assert "the retry to fallback waits for the hedge already out to it" in e.log()
    view = e.providers()
    assert view["fallback"]["state"] == "healthy" and view["fallback"]["consecutive_failures"] == 0


def test_when_that_hedge_fails_the_waiting_retry_gets_its_answer(mocks, envoy, raw_providers):
    """The same, with a hedge that fails: the held retry is never sent; the client gets
    the hedge's answer, the one that retry would have got, and the provider is asked
    once."""
    primary = raw_providers("late-reset")
    fallback = mocks("fallback", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback.configure(latency_ms=600)
    e = envoy(config([provider("primary")], [provider("fallback")], hedgeAfter="150ms",
                     consecutiveFailures=3),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    status, headers, body = e.post_chat({"model": "m", "messages": MESSAGES}, path=CHAT_PATH)
    assert (status, headers["x-llm-provider"]) == (500, "fallback")
    assert json.loads(body)["error"], body
    assert len(fallback.chat_requests()) == 1
    assert e.access_log_lines(1)[0]["hedge"] == "fallback:failed"
    view = e.providers()
    assert view["fallback"]["consecutive_failures"] == 1, "one failure: the hedge's"
