"""Background probes (router mode, Envoy --concurrency 2): the root probes a provider
whose cooldown is over, so that no user request pays for finding it still down."""

import json
import time

import openai
from harness import MESSAGES, config, provider, wait_until


def chat(e):
    client = openai.OpenAI(base_url=f"{e.url}/v1", api_key="client-token", max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES).headers.get(
        "x-llm-provider")


def probes(mock):
    return [r for r in mock.chat_requests() if json.loads(r["body"]).get("max_tokens") == 1]


def test_background_probes_bring_a_healed_provider_back_without_a_user_request(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "service_unavailable",
                    "--api-key", "sk-primary")
    fallback = mocks("fallback")
    p = provider("primary", openai={"model": "m-primary"}, policies={"auth": {"key": {"env": "PRIMARY_KEY"}}})
    e = envoy(config([p], [provider("fallback")], backgroundProbes=True, defaultCooldown="1s", maxBackoff="1s"),
              {"primary": primary.port, "fallback": fallback.port}, env={"PRIMARY_KEY": "sk-primary"},
              router=True)
    assert chat(e) == "fallback"
    # Still down: the root probes it about once a second; user requests keep away.
    wait_until(lambda: len(probes(primary)) >= 2, 10, "two background probes")
    for _ in range(10):
        assert chat(e) == "fallback"
        time.sleep(0.1)
    assert len(primary.chat_requests()) == 1 + len(probes(primary)), "only the first user request and probes"
    for r in probes(primary):
        body = json.loads(r["body"])
        headers = dict(r["headers"])
        assert (body["model"], body["messages"][0]["content"]) == ("m-primary", "ping")
        assert headers["authorization"] == "Bearer sk-primary"
        assert "x-llm-failover-probe" not in headers
    # It heals: the next probe finds out, and traffic returns without a user request probing.
    primary.configure(failure_injection_rate=0)
    healed = time.monotonic()
    wait_until(lambda: e.providers()["primary"]["state"] == "healthy", 10, "the probe to close the breaker")
    assert time.monotonic() - healed < 3.5
    assert chat(e) == "primary"
    assert "probing provider primary in the background" in e.log()


def test_a_forged_probe_mark_is_removed_and_ignored(mocks, envoy):
    a = mocks("a")
    b = mocks("b")
    e = envoy(config([provider("a")], [provider("b", policies={"auth": {"key": {"env": "KEY_B"}}})],
                     backgroundProbes=True),
              {"a": a.port, "b": b.port}, env={"KEY_B": "sk-b"}, router=True)
    client = openai.OpenAI(base_url=f"{e.url}/v1", api_key="client-token", max_retries=0, timeout=30)
    client.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-llm-failover-probe": "1"})
    (r,) = a.chat_requests()
    headers = dict(r["headers"])
    assert headers["authorization"] == "Bearer client-token", "b's key must not reach a"
    assert "x-llm-failover-probe" not in headers
