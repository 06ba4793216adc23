"""Error classes (router mode, Envoy --concurrency 2): the upstream filter holds a
failing answer's headers, reads its error body, and decides by class whether the
request goes on, whether the provider cools and for how long. Bodies as the providers
document them (the same as core/src/errors.rs's unit tests)."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from harness import CHAT, MESSAGES, config, dead_port, metric, native_build, provider, wait_until

OPENAI_QUOTA = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                          "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
OPENAI_CONTEXT = {"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages "
                                       "resulted in 9013 tokens. Please reduce the length of the messages.",
                            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
OPENAI_RATE = {"error": {"message": "Rate limit reached for gpt-4o in organization org-abc on requests per min (RPM): "
                                    "Limit 3, Used 3, Requested 1. Please try again in 20s.",
                         "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
AZURE_FILTER = {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                                     "management policy.", "type": None, "param": "prompt", "code": "content_filter",
                          "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation",
                                                        "content_filter_result": {"hate": {"filtered": True}}}}}
ANTHROPIC_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
ANTHROPIC_CONTEXT = {"type": "error", "error": {"type": "invalid_request_error",
                                               "message": "prompt is too long: 208310 tokens > 200000 maximum"}}
ANTHROPIC_CREDIT = {"type": "error", "error": {"type": "invalid_request_error",
                                              "message": "Your credit balance is too low to access the Anthropic API. "
                                                         "Please go to Plans & Billing to upgrade or purchase credits."}}
GEMINI_RATE = [{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                          "status": "RESOURCE_EXHAUSTED",
                          "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}]
GEMINI_CONTEXT = {"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of "
                                                    "tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}
GEMINI_OVERLOADED = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                               "status": "UNAVAILABLE"}}
VLLM_CONTEXT = {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you "
                                              "requested 5000 tokens (4000 in the messages, 1000 in the completion).",
                "type": "BadRequestError", "param": None, "code": 400}
OPENROUTER_CREDITS = {"error": {"code": 402, "message": "Insufficient credits. Add more using "
                                                        "https://openrouter.ai/settings/credits"}}
CLIENT_MISTAKE = {"error": {"message": "Invalid value for 'temperature': expected a number.",
                            "type": "invalid_request_error", "param": "temperature", "code": None}}

MAX_COOLDOWN_MS = 600_000


def failing(mocks, name, status, body, *extra):
    """A mock whose every chat answer is `status` with `body` (as the provider sends it)."""
    m = mocks(name, "--failure-injection-rate", "100", *extra)
    m.configure(failure_status=status, failure_body=json.dumps(body))
    return m


def chat(e, stream=False):
    """One chat request with the official SDK: (x-llm-provider, text) or the SDK's exception."""
    client = openai.OpenAI(base_url=f"{e.url}/v1", api_key="client-token", max_retries=0, timeout=30)
    if stream:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return raw.headers.get("x-llm-provider"), text
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    return raw.headers.get("x-llm-provider"), raw.parse().choices[0].message.content


# A failing answer that fails over: (status, body, class, whether the provider cools,
# the cooldown it gets in ms (None: the default backoff's first, 5 s)).
FAILS_OVER = [
    pytest.param(429, OPENAI_QUOTA, "quota", MAX_COOLDOWN_MS, id="openai-insufficient-quota"),
    pytest.param(400, ANTHROPIC_CREDIT, "quota", MAX_COOLDOWN_MS, id="anthropic-credit-balance"),
    pytest.param(402, OPENROUTER_CREDITS, "quota", MAX_COOLDOWN_MS, id="openrouter-402"),
    pytest.param(529, ANTHROPIC_OVERLOADED, "overloaded", 5_000, id="anthropic-529"),
    pytest.param(503, GEMINI_OVERLOADED, "overloaded", 5_000, id="gemini-503-overloaded"),
    pytest.param(429, GEMINI_RATE, "rate_limited", 37_000, id="gemini-429-retry-delay-in-body"),
    pytest.param(429, OPENAI_RATE, "rate_limited", 20_000, id="openai-429-try-again-in-body"),
]


@pytest.mark.parametrize("status,body,klass,cooldown_ms", FAILS_OVER)
def test_a_failing_class_fails_over_streamed_and_cools_as_its_class_says(mocks, envoy, status, body, klass,
                                                                         cooldown_ms):
    primary = failing(mocks, "primary", status, body)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    assert chat(e, stream=True)[0] == "fallback"
    view = e.providers()["primary"]
    assert (view["state"], view["last_reason"]) == ("cooling", klass)
    assert cooldown_ms - 2_000 < view["cooling_for_ms"] <= cooldown_ms, view
    log = e.access_log_lines(1)[0]
    assert (log["http.status"], log["tried"], log["failover_reason"]) == (200, "primary,fallback", klass)
    text = e.prometheus()
    assert metric(text, "llm_failover_failovers", **{"from": "primary", "to": "fallback", "reason": klass}) == 1
    assert metric(text, "llm_failover_cooldowns", provider="primary", reason=klass) == 1
    assert len(primary.chat_requests()) == 1 and len(fallback.chat_requests()) == 1


def test_a_spent_quota_is_said_once_per_cooldown_in_the_log(mocks, envoy):
    primary = failing(mocks, "primary", 429, OPENAI_QUOTA)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], withinRequest=False),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    # The first request gets the provider's own 429 (lab mode); the next ones go on.
    assert e.post_chat(CHAT)[0] == 429
    for _ in range(3):
        assert e.post_chat(CHAT)[0] == 200
    wait_until(lambda: "out of quota or credit" in e.log(), 5, "the quota line")
    lines = [l for l in e.log().splitlines() if "out of quota or credit" in l]
    assert len(lines) == 1, lines
    assert "provider primary" in lines[0] and "600 s (maxCooldown)" in lines[0]


@pytest.mark.parametrize("body", [OPENAI_CONTEXT, ANTHROPIC_CONTEXT, GEMINI_CONTEXT, VLLM_CONTEXT],
                         ids=["openai", "anthropic", "gemini", "vllm"])
def test_context_length_goes_to_a_larger_window_and_cools_nothing(mocks, envoy, body):
    primary = failing(mocks, "primary", 400, body)
    big = mocks("big")
    e = envoy(config([provider("primary", contextWindow=8192)], [provider("big", contextWindow=128000)]),
              {"primary": primary.port, "big": big.port}, router=True)
    assert chat(e, stream=True)[0] == "big"
    assert chat(e)[0] == "big"
    # The request was at fault: the primary stays healthy and is asked again.
    assert len(primary.chat_requests()) == 2 and len(big.chat_requests()) == 2
    assert e.providers()["primary"]["state"] == "healthy"
    log = e.access_log_lines(2)[0]
    assert (log["http.status"], log["provider"], log["failover_reason"]) == (200, "big", "context_length")
    assert metric(e.prometheus(), "llm_failover_errors", provider="primary", **{"class": "context_length"}) == 2


def test_context_length_skips_a_smaller_window(mocks, envoy):
    """The next provider of the order has a smaller window: it is never asked, the
    request goes straight to the third (the filter names the next attempt's cluster)."""
    primary = failing(mocks, "primary", 400, OPENAI_CONTEXT)
    small = mocks("small")
    big = mocks("big")
    e = envoy(config([provider("primary", contextWindow=8192)], [provider("small", contextWindow=4096)],
                     [provider("big", contextWindow=128000)]),
              {"primary": primary.port, "small": small.port, "big": big.port}, router=True)
    assert chat(e, stream=True)[0] == "big"
    assert chat(e)[0] == "big"
    assert small.chat_requests() == [] and len(big.chat_requests()) == 2
    log = e.access_log_lines(2)[0]
    assert (log["tried"], log["attempts"], log["upstream_cluster"]) == ("primary,big", "2", "big")
    assert {p["state"] for p in e.providers().values()} == {"healthy"}


def test_context_length_without_a_larger_window_returns_the_providers_400(mocks, envoy):
    primary = failing(mocks, "primary", 400, OPENAI_CONTEXT)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary", contextWindow=128000)], [provider("fallback", contextWindow=8192)]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    status, headers, raw = e.post_chat(CHAT)
    assert (status, json.loads(raw)) == (400, OPENAI_CONTEXT)
    with pytest.raises(openai.BadRequestError) as err:
        chat(e, stream=True)
    assert err.value.code == "context_length_exceeded"
    assert fallback.chat_requests() == []
    assert e.providers()["primary"]["state"] == "healthy"


def test_a_content_policy_rejection_goes_to_the_client_unchanged(mocks, envoy):
    primary = failing(mocks, "primary", 400, AZURE_FILTER)
    fallback = mocks("fallback")
    # Even with 400 in onStatus: a content-policy rejection does not fail over.
    e = envoy(config([provider("primary")], [provider("fallback")], onStatus=[400, 429, 500, 502, 503, 504]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    status, headers, raw = e.post_chat(CHAT)
    assert (status, json.loads(raw), headers.get("x-llm-provider")) == (400, AZURE_FILTER, "primary")
    with pytest.raises(openai.BadRequestError) as err:
        chat(e, stream=True)
    assert err.value.code == "content_filter"
    assert fallback.chat_requests() == []
    assert e.providers()["primary"]["state"] == "healthy"


def test_content_policy_fails_over_when_configured(mocks, envoy):
    primary = failing(mocks, "primary", 400, AZURE_FILTER)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], errorClasses={"content_policy": "failover"}),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    assert chat(e, stream=True)[0] == "fallback"
    assert e.providers()["primary"]["state"] == "healthy"


def test_a_client_mistake_listed_in_on_status_still_returns_for_its_class_but_fails_over_as_listed(mocks, envoy):
    primary = failing(mocks, "primary", 400, CLIENT_MISTAKE)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    # Not in onStatus (the default): the client's mistake is the client's, nothing cools.
    status, _, raw = e.post_chat(CHAT)
    assert (status, json.loads(raw)) == (400, CLIENT_MISTAKE)
    assert e.providers()["primary"]["state"] == "healthy"
    assert fallback.chat_requests() == []


def test_a_refused_injected_key_fails_over_cools_long_and_names_the_variable(mocks, envoy):
    primary = mocks("primary", "--api-key", "the-right-key")
    fallback = mocks("fallback")
    p = provider("primary", policies={"auth": {"key": {"env": "PRIMARY_KEY"}}})
    e = envoy(config([p], [provider("fallback")]), {"primary": primary.port, "fallback": fallback.port},
              env={"PRIMARY_KEY": "a-wrong-key-value"}, router=True)
    assert chat(e, stream=True)[0] == "fallback"
    view = e.providers()["primary"]
    assert (view["state"], view["last_reason"]) == ("cooling", "auth")
    assert view["cooling_for_ms"] > MAX_COOLDOWN_MS - 2_000
    wait_until(lambda: "refused the key" in e.log(), 5, "the auth line")
    (line,) = [l for l in e.log().splitlines() if "refused the key" in l]
    assert "provider primary" in line and "$PRIMARY_KEY" in line
    assert "a-wrong-key-value" not in e.log()


def test_the_clients_own_refused_credentials_go_back_to_the_client_and_cool_nothing(mocks, envoy):
    primary = mocks("primary", "--api-key", "the-right-key")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], onStatus=[401, 429, 500, 502, 503, 504]),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    with pytest.raises(openai.AuthenticationError):
        chat(e)
    assert fallback.chat_requests() == []
    assert e.providers()["primary"]["state"] == "healthy"


def test_classes_hold_under_16_concurrent_streamed_clients(mocks, envoy):
    """16 clients at once: 64 requests too long for the primary (each streamed from the
    big provider), then 64 its content policy rejects (each gets the 400). Nothing
    cools, and no request is asked twice of one provider."""
    primary = failing(mocks, "primary", 400, OPENAI_CONTEXT)
    big = mocks("big", "--chunk-delay-ms", "5")
    e = envoy(config([provider("primary", contextWindow=8192)], [provider("big", contextWindow=128000)]),
              {"primary": primary.port, "big": big.port}, router=True)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: chat(e, stream=True), range(64)))
    assert results == [("big", "Hello from big! 2+2 is 4.")] * 64
    primary.configure(failure_body=json.dumps(AZURE_FILTER))

    def one(_):
        try:
            chat(e, stream=True)
        except openai.BadRequestError as err:
            return err.code
        return "answered"

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(64)))
    assert codes == ["content_filter"] * 64
    assert len(big.chat_requests()) == 64 and len(primary.chat_requests()) == 128
    assert {p["state"] for p in e.providers().values()} == {"healthy"}


def test_retries_ask_the_same_provider_again_before_moving_on(mocks, envoy):
    """retries: 1: a 500 is asked once more of the same provider, then the request
    moves on; a timeout or a 429 never is (see the unit tests)."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], retries=1),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    assert [chat(e)[0] for _ in range(3)] == ["fallback"] * 3
    # The first request asked the primary twice; then it was cooling.
    assert len(primary.chat_requests()) == 2
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["attempts"], log["failover_reason"]) == ("primary,primary,fallback", "3",
                                                                      "server_error")


@pytest.mark.wasm_only("a reset before response headers goes to the next provider natively, even with retries: the module names the next attempt in advance (ARCHITECTURE.md, The native module)")
def test_a_retry_that_succeeds_keeps_the_provider_healthy(mocks, envoy, raw_providers):
    flaky = raw_providers("reset-once")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], retries=1),
              {"primary": flaky.port, "fallback": fallback.port}, router=True)
    assert chat(e)[0] == "primary"
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["provider"]) == ("primary,primary", "primary")
    assert e.providers()["primary"]["state"] == "healthy"
    assert fallback.chat_requests() == []


def test_retry_within_waits_out_a_short_429_on_the_same_provider(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "1")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], retries=1, retryWithin="2s"),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    start = time.monotonic()
    # The primary keeps answering 429: waited out once (1 s), then the fallback.
    assert chat(e)[0] == "fallback"
    took = time.monotonic() - start
    assert 0.95 < took < 1.6, took
    assert len(primary.chat_requests()) == 2
    # A Retry-After longer than retryWithin moves on at once.
    primary.configure(retry_after="5")
    e2 = envoy(config([provider("primary")], [provider("fallback")], retries=1, retryWithin="2s"),
               {"primary": primary.port, "fallback": fallback.port}, router=True)
    start = time.monotonic()
    assert chat(e2)[0] == "fallback"
    assert time.monotonic() - start < 0.5


def test_dispatch_mode_judges_its_failover_calls_by_body_and_its_first_attempt_by_status(mocks, envoy):
    """Dispatch mode (hand-wired, no allow_on_headers_stop_iteration): the routed
    attempt is judged by its status alone, a dispatched call by its body too."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "service_unavailable")
    second = failing(mocks, "second", 429, OPENAI_QUOTA)
    third = mocks("third")
    e = envoy(config([provider("primary")], [provider("second")], [provider("third")], mode="dispatch"),
              {"primary": primary.port, "second": second.port, "third": third.port})
    status, headers, _ = e.post_chat(CHAT)
    assert (status, headers.get("x-llm-provider")) == (200, "third")
    view = e.providers()
    assert (view["primary"]["last_reason"], view["second"]["last_reason"]) == ("server_error", "quota")
    assert view["second"]["cooling_for_ms"] > MAX_COOLDOWN_MS - 2_000
    # A context-length 400 on the routed attempt: its body is not read, the client gets it.
    primary.configure(failure_status=400, failure_body=json.dumps(OPENAI_CONTEXT))
    e2 = envoy(config([provider("primary", contextWindow=8192)], [provider("third", contextWindow=128000)],
                      mode="dispatch"), {"primary": primary.port, "third": third.port})
    status, _, raw = e2.post_chat(CHAT)
    assert (status, json.loads(raw)) == (400, OPENAI_CONTEXT)


def test_retries_never_ask_a_provider_more_than_one_plus_retries_times_under_16_clients(mocks, envoy,
                                                                                        raw_providers):
    """16 clients, 128 requests, each with its own id. The primary answers half its
    requests 500 (asked again, then the fallback); every request is answered, and no id
    reaches the primary more than twice or the fallback more than once."""
    primary = mocks("primary", "--failure-injection-rate", "50", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], retries=1, consecutiveFailures=1000),
              {"primary": primary.port, "fallback": fallback.port}, router=True)
    client = openai.OpenAI(base_url=f"{e.url}/v1", api_key="client-token", max_retries=0, timeout=30)

    def one(i):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": f"request {i}"}])
        return raw.headers.get("x-llm-provider")

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(one, range(128)))
    assert set(served) <= {"primary", "fallback"} and len(served) == 128

    def per_id(mock):
        counts = {}
        for r in mock.chat_requests():
            rid = json.loads(r["body"])["messages"][0]["content"]
            counts[rid] = counts.get(rid, 0) + 1
        return counts

    p, f = per_id(primary), per_id(fallback)
    assert max(p.values()) <= 2 and max(f.values(), default=0) <= 1, (p, f)
    # Those the fallback served met the primary's 500 twice.
    assert all(p[rid] == 2 for rid in f), (p, f)
    assert sum(1 for s in served if s == "fallback") == len(f)


def test_a_used_up_plan_sends_no_attempt_anywhere_else_under_16_clients(mocks, envoy, raw_providers):
    """The first provider refuses connections, the second resets every request; with
    retries: 1 the second is asked twice per request, then the plan is used up. The
    router's retry left over goes to no provider (llm_failover_exhausted): each request
    ends in a 503, and the second got exactly two attempts per request. (Natively one:
    a reset before response headers goes on to the next provider, of which there is
    none here; see ARCHITECTURE.md, "The native module".)"""
    reset = raw_providers("reset")
    e = envoy(config([provider("a")], [provider("b")], retries=1, consecutiveFailures=1000),
              {"a": dead_port(), "b": reset.port}, router=True)

    def one(_):
        return e.post_chat(CHAT)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(64)))
    # Anything but a 503 is shown whole, with the access log, to tell who answered it.
    odd = [a for a in answers if a[0] != 503]
    assert not odd, (odd, e.access_log_lines(64))
    per_request, tried = (1, "a,b") if native_build() else (2, "a,b,b")
    assert len(reset.received) == 64 * per_request
    lines = e.access_log_lines(64)
    assert {l["tried"] for l in lines} == {tried}


def test_dispatch_mode_retries_the_same_provider_with_another_call(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], mode="dispatch", retries=1),
              {"primary": primary.port, "fallback": fallback.port})
    status, headers, _ = e.post_chat(CHAT)
    assert (status, headers.get("x-llm-provider")) == (200, "fallback")
    assert len(primary.chat_requests()) == 2 and len(fallback.chat_requests()) == 1
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["attempts"]) == ("primary,primary,fallback", "3")
    # A 429 is not asked again: it moves on at once.
    primary.reset()
    primary.configure(failure_types=["rate_limit"])
    e2 = envoy(config([provider("primary")], [provider("fallback")], mode="dispatch", retries=1),
               {"primary": primary.port, "fallback": fallback.port})
    assert e2.post_chat(CHAT)[0] == 200
    assert len(primary.chat_requests()) == 1
