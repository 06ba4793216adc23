"""Before and after the first byte (router mode): a provider that says nothing is
abandoned after `firstByteTimeout`, and a stream that breaks off counts as the
provider's failure, with the client told."""

import json
import time

import openai
import pytest
from harness import MESSAGES, config, provider, wait_until

CHUNK_DELAY = ["--chunk-delay-ms", "100"]


def sdk(envoy):
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="client-token", max_retries=0, timeout=30)


def test_first_byte_timeout_moves_on_and_closes_the_silent_attempt(mocks, envoy, raw_providers):
    silent = raw_providers("silent")
    fallback = mocks("fallback", *CHUNK_DELAY)
    e = envoy(config([provider("primary")], [provider("fallback")], firstByteTimeout="500ms"),
              {"primary": silent.port, "fallback": fallback.port}, router=True)
    start = time.monotonic()
    raw = sdk(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
    times = [time.monotonic() - start for _ in raw.parse()]
    assert raw.headers["x-llm-provider"] == "fallback"
    # 0.5 s for the primary, then the fallback's own time (its first event at once).
    assert 0.5 <= times[0] < 0.8, times
    assert times[-1] - times[0] > 0.5, "events arrive one by one"
    wait_until(lambda: silent.closed_at, 5, "Envoy to close the abandoned attempt's connection")
    assert silent.closed_at[0] - start < 1.0
    log = e.access_log_lines(1)[0]
    assert (log["tried"], log["failover_reason"]) == ("primary,fallback", "timeout")
    view = e.providers()
    assert (view["primary"]["state"], view["primary"]["last_reason"]) == ("cooling", "timeout")


def test_first_byte_timeout_respects_the_failure_threshold(mocks, envoy, raw_providers):
    silent = raw_providers("silent")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], firstByteTimeout="300ms",
                     consecutiveFailures=2),
              {"primary": silent.port, "fallback": fallback.port}, router=True)
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path="/v1/chat/completions")
    assert (status, headers["x-llm-provider"]) == (200, "fallback")
    view = e.providers()["primary"]
    assert (view["state"], view["consecutive_failures"]) == ("healthy", 1)


@pytest.mark.parametrize("mode", ["broken", "reset"])
def test_a_stream_that_breaks_off_is_the_providers_failure(mocks, envoy, raw_providers, mode):
    bad = raw_providers(f"{mode}-stream")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]),
              {"primary": bad.port, "fallback": fallback.port}, router=True)
    got = []
    # Ended cleanly but unfinished: the filter appends an error event, the SDK raises
    # APIError. Reset: the client's connection is reset too, at once (no delayed
    # close), and the SDK raises APIConnectionError.
    expected = openai.APIConnectionError if mode == "reset" else openai.APIError
    start = time.monotonic()
    with pytest.raises(expected) as raised:
        for chunk in sdk(e).chat.completions.create(model="m", messages=MESSAGES, stream=True):
            got.append(chunk.choices[0].delta.content)
    took = time.monotonic() - start
    assert got and got[0] == "half", "the client had the first part"
    if mode == "broken":
        assert type(raised.value) is openai.APIError and "broke off" in str(raised.value), raised.value
    else:
        # The provider resets 0.1 s after its first event.
        assert took < 0.6, took
    log = e.access_log_lines(1)[0]
    assert log["stream"] == mode
    view = e.providers()["primary"]
    assert (view["state"], view["last_reason"]) == ("cooling", "broken_stream")
    wait_until(lambda: 'llm_failover_cooldowns{provider="primary",reason="broken_stream"} 1' in e.prometheus(),
               10, "the cooldown metric")
    # The next request goes to the fallback.
    status, headers, _ = e.post_chat({"model": "m", "messages": MESSAGES}, path="/v1/chat/completions")
    assert (status, headers["x-llm-provider"]) == (200, "fallback")


def test_first_byte_timeout_needs_router_mode(tmp_path):
    import subprocess

    from harness import RENDER_BIN
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps(config([provider("a")], mode="dispatch", firstByteTimeout="1s")))
    r = subprocess.run([str(RENDER_BIN), "render", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "failover.firstByteTimeout: needs router mode" in r.stderr
