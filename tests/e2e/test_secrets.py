"""No injected key leaks: after requests that fail over across three providers with
injected keys (plain and streamed, both modes), every key is searched for in the
filter's logs at debug level, the access log, every response, the metrics, the health
view, and the other providers' request logs: it appears only in its own provider's."""

import json

import openai
import pytest
from harness import config, http, is_llm_failover, llm_hcm, provider

KEYS = {"a": "sk-secret-a-3f9c", "b": "sk-secret-b-71de", "c": "sk-secret-c-0b2a"}


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_no_injected_key_appears_anywhere_but_its_own_provider(mocks, envoy, router):
    a = mocks("a", "--failure-injection-rate", "100", "--retry-after", "1", "--api-key", KEYS["a"])
    b = mocks("b", "--failure-injection-rate", "100", "--failure-types", "server_error",
              "--api-key", KEYS["b"], "--api-key-header", "api-key")
    c = mocks("c", "--api-key", KEYS["c"], "--api-key-header", "x-api-key")
    plugin = config(
        [provider("a", openai={"model": "ma"}, policies={"auth": {"key": {"env": "KEY_A"}}})],
        [provider("b", openai={"model": "mb"}, policies={"auth": {"key": {"env": "KEY_B", "header": "api-key"}}})],
        [provider("c", openai={"model": "mc"}, policies={"auth": {"key": {"env": "KEY_C", "header": "x-api-key"}}})],
        consecutiveFailures=1000,  # b stays in rotation: every request fails over twice
    )
    e = envoy(plugin, {"a": a.port, "b": b.port, "c": c.port}, router=router, wasm_log="debug",
              env={"KEY_A": KEYS["a"], "KEY_B": KEYS["b"], "KEY_C": KEYS["c"]})
    seen = []
    for _ in range(3):
        status, headers, body = e.post_chat({"model": "x", "messages": [{"role": "user", "content": "hi"}]},
                                            {"authorization": "Bearer client-token"})
        assert (status, headers["x-llm-provider"]) in ((200, "c"),), body
        seen.append(json.dumps(headers) + body.decode())
    client = openai.OpenAI(base_url=f"{e.url}/openai", api_key="client-token", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                           stream=True)
    seen.append(json.dumps(dict(raw.headers)) + "".join(chunk.model_dump_json() for chunk in raw.parse()))
    seen.append(e.prometheus())
    seen.append(json.dumps(e.health()))
    seen.append(http("GET", f"http://127.0.0.1:{e.admin_port}/stats")[2].decode())
    e.access_log_lines(4)
    seen.append(e.access_log.read_text())
    log = e.log()
    filter_lines = "[dynamic_modules]" if e.native else "wasm log"
    assert filter_lines in log and "failing over" in log, "the log has the filter's lines"
    seen.append(log)
    everything = "\n".join(seen)
    for name, key in KEYS.items():
        assert key not in everything, f"{name}'s key leaked"
    for m in (a, b, c):
        requests = json.dumps(m.requests())
        for name, key in KEYS.items():
            if name != m.name:
                assert key not in requests, f"{m.name} got {name}'s key"
        assert KEYS[m.name] in requests, f"{m.name} never got its own key: the test met no failover"


def test_a_forged_hedge_mark_cannot_pick_whose_key_an_attempt_carries(mocks, envoy):
    """A hand-wired Envoy without the downstream filter, and without the route's header
    removal: a client's `x-llm-failover-hedge` naming another cluster's provider must
    not make the upstream filter inject that provider's key."""
    a = mocks("a")
    b = mocks("b")

    def bare(cfg):
        hcm = llm_hcm(cfg)
        hcm["http_filters"] = [f for f in hcm["http_filters"] if not is_llm_failover(f)]
        for vh in hcm["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                route.pop("request_headers_to_remove", None)

    plugin = config([provider("a", policies={"auth": {"key": {"env": "KEY_A"}}})],
                    [provider("b", policies={"auth": {"key": {"env": "KEY_B"}}})])
    e = envoy(plugin, {"a": a.port, "b": b.port}, router=True, tweak=bare,
              env={"KEY_A": KEYS["a"], "KEY_B": KEYS["b"]})
    status, headers, body = e.post_chat({"model": "x", "messages": []}, {"x-llm-failover-hedge": "1.1"},
                                        path="/v1/chat/completions")
    assert status == 200, body
    sent = dict((k.lower(), v) for k, v in a.chat_requests()[0]["headers"])
    assert sent.get("authorization") == f"Bearer {KEYS['a']}", sent
    assert "x-llm-failover-hedge" not in sent
    assert KEYS["b"] not in json.dumps(a.chat_requests())
