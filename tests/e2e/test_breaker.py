"""Circuit-breaker semantics in real Envoy (--concurrency 2): half-open probing,
thresholds, backoff, provider rate-limit headers and proactive cooldown."""

import json
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest
from harness import CHAT, config, provider, served_by, wait_until





def chain(*names, **failover):
    """One group per named provider, in order."""
    return config(*([provider(n)] for n in names), **failover)




def cooldowns(envoy, name):
    """The cooldown lengths (ms) the filter logged for provider `name`, in order."""
    return [int(m) for m in re.findall(rf"provider {name} failed \([^)]*\); cooling down for (\d+) ms", envoy.log())]


def wait_for_cooldowns(envoy, name, count, timeout=10):
    return wait_until(lambda: len(cooldowns(envoy, name)) >= count and cooldowns(envoy, name), timeout,
                      f"{count} cooldowns of {name} in the log")


def in_background(envoy):
    """Sends one request on a thread that may still be waiting when the test ends."""
    def run():
        try:
            served_by(envoy)
        except OSError:
            pass  # Envoy stopped under it at teardown
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def burst(envoy, count):
    """`count` concurrent requests on fresh connections; their (status, provider)."""
    results = []
    lock = threading.Lock()

    def one():
        r = served_by(envoy)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == count
    return results


def state(envoy, name):
    """The provider's breaker state, as the health view shows it."""
    return {p["name"]: p["state"] for p in envoy.health()["providers"]}[name]


def wait_for_state(envoy, name, wanted, timeout=10):
    """Polls the health view until the provider is in `wanted` (e.g. its cooldown ended)."""
    wait_until(lambda: state(envoy, name) == wanted, timeout, f"{name} to be {wanted}")


def test_exactly_one_probe_when_a_cooldown_ends(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "2")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback"), {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    # Healed, but slow: the probe is still under way while the burst arrives.
    primary.configure(failure_injection_rate=0, latency_ms=1500)
    wait_for_state(e, "primary", "half_open")
    results = burst(e, 50)
    assert all(status == 200 for status, _ in results), results
    assert sum(1 for _, p in results if p == "primary") == 1, results
    assert len(primary.chat_requests()) == 2  # the first failure and the one probe
    # The probe succeeded: the primary has the traffic again.
    primary.configure(latency_ms=0)
    assert served_by(e) == (200, "primary")


def test_failover_within_a_request_also_claims_the_probe(mocks, envoy):
    """A half-open provider met while failing over is probed by one request only."""
    first = mocks("first", "--failure-injection-rate", "100", "--failure-types", "server_error")
    second = mocks("second", "--failure-injection-rate", "100", "--retry-after", "1")
    third = mocks("third")
    # `first` stays in rotation (threshold not reached), so every request fails over.
    e = envoy(chain("first", "second", "third", consecutiveFailures=1000),
              {"first": first.port, "second": second.port, "third": third.port})
    assert served_by(e) == (200, "third")
    second.configure(failure_injection_rate=0, latency_ms=1500)
    wait_for_state(e, "second", "half_open")
    results = burst(e, 20)
    assert all(status == 200 for status, _ in results), results
    assert sum(1 for _, p in results if p == "second") == 1, results
    assert len(second.chat_requests()) == 2  # the first failure and the one probe


def test_probe_whose_connection_is_reset_reopens_the_cooldown(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", defaultCooldown="1s", maxCooldown="10s"),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    assert wait_for_cooldowns(e, "primary", 1) == [1000]
    primary.configure(failure_injection_rate=0, latency_ms=5000)
    wait_for_state(e, "primary", "half_open")
    result = {}
    probe = threading.Thread(target=lambda: result.setdefault("r", served_by(e)))
    probe.start()
    wait_until(lambda: len(primary.chat_requests()) == 2, 5, "the probe to reach the primary")
    primary.stop()  # the provider dies mid-request: Envoy sees the connection reset
    probe.join(10)
    assert result["r"] == (200, "fallback"), "the failed probe still got the fallback's answer"
    # The cooldown reopened, doubled (no Retry-After), and requests skip the primary.
    assert wait_for_cooldowns(e, "primary", 2) == [1000, 2000]
    assert served_by(e) == (200, "fallback")


def test_probe_that_never_answers_lets_another_probe_after_probe_timeout(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "1")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", probeTimeout="1500ms"),
              {"primary": primary.port, "fallback": fallback.port}, route_timeout="30s")
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0, latency_ms=20_000)  # answers far too late
    wait_for_state(e, "primary", "half_open")
    in_background(e)
    wait_until(lambda: len(primary.chat_requests()) == 2, 5, "the first probe")
    # While the claim holds, others go to the fallback without touching the primary.
    for _ in range(3):
        assert served_by(e) == (200, "fallback")
    assert len(primary.chat_requests()) == 2
    assert state(e, "primary") == "probing", "the check above must run inside the claim"
    # The claim expires: the next request probes again.
    wait_for_state(e, "primary", "half_open")
    in_background(e)
    wait_until(lambda: len(primary.chat_requests()) == 3, 5, "a second probe after the claim expired")


def test_a_probe_whose_client_goes_away_gives_its_claim_back(mocks, envoy):
    import socket as sock

    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "1")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback"), {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0, latency_ms=10_000)
    wait_for_state(e, "primary", "half_open")
    body = json.dumps(CHAT).encode()
    c = sock.create_connection(("127.0.0.1", e.port))
    c.sendall(b"POST /openai HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))
    wait_until(lambda: len(primary.chat_requests()) == 2, 5, "the probe to reach the primary")
    c.close()  # the client gives up mid-probe
    primary.configure(latency_ms=0)
    # Well within probeTimeout (60 s): the next request may probe, and the primary is back.
    wait_until(lambda: served_by(e) == (200, "primary"), 5, "a new probe after the client left")


def test_server_errors_below_and_at_the_threshold(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", consecutiveFailures=3),
              {"primary": primary.port, "fallback": fallback.port})
    for n in (1, 2):
        assert served_by(e) == (200, "fallback")
        assert len(primary.chat_requests()) == n, "below the threshold the primary stays in rotation"
    assert cooldowns(e, "primary") == []
    assert served_by(e) == (200, "fallback")
    assert wait_for_cooldowns(e, "primary", 1) == [5_000]  # defaultCooldown
    assert served_by(e) == (200, "fallback")
    assert len(primary.chat_requests()) == 3
    assert "primary failed (status 500, server_error); 2 of 3 failures before a cooldown" in e.log()


def test_a_success_resets_the_failure_count(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", consecutiveFailures=2),
              {"primary": primary.port, "fallback": fallback.port}, concurrency=1)
    assert served_by(e) == (200, "fallback")
    primary.configure(failure_injection_rate=0)
    assert served_by(e) == (200, "primary")
    primary.configure(failure_injection_rate=100)
    assert served_by(e) == (200, "fallback")
    assert cooldowns(e, "primary") == [], "1 failure after a success is below a threshold of 2"


def test_rate_limit_ignores_the_threshold(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "30")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", consecutiveFailures=5),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "fallback")
    assert wait_for_cooldowns(e, "primary", 1) == [30_000]


def test_backoff_doubles_without_retry_after_and_stops_at_max(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "server_error")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", defaultCooldown="300ms", maxCooldown="1s"),
              {"primary": primary.port, "fallback": fallback.port})
    for n in range(1, 5):
        assert served_by(e) == (200, "fallback")
        wait_for_cooldowns(e, "primary", n)
        wait_for_state(e, "primary", "half_open")
    assert cooldowns(e, "primary") == [300, 600, 1000, 1000]


RFC3339_IN_30S = object()


@pytest.mark.parametrize("headers,expected_ms", [
    ({"retry-after-ms": "1500"}, 1500),
    ({"x-ms-retry-after-ms": "2500"}, 2500),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1500),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
      "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "20ms"}, 360_000),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 20),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "45"}, 45_000),
    ({"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": RFC3339_IN_30S}, 30_000),
    # Absurd values: never beyond maxCooldown, never a panic.
    ({"retry-after-ms": "-5", "retry-after": "garbage", "x-ratelimit-reset": "99999999999999999999999"}, 600_000),
    ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, 600_000),
])
def test_provider_rate_limit_headers_set_the_cooldown(mocks, envoy, headers, expected_ms):
    primary = mocks("primary", "--failure-injection-rate", "100")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", defaultCooldown="7s", maxCooldown="600s"),
              {"primary": primary.port, "fallback": fallback.port})
    if RFC3339_IN_30S in headers.values():
        at = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        headers = {k: (at if v is RFC3339_IN_30S else v) for k, v in headers.items()}
    primary.configure(failure_headers=headers)
    assert served_by(e) == (200, "fallback")
    (got,) = wait_for_cooldowns(e, "primary", 1)
    if expected_ms == 30_000:
        assert 28_000 <= got <= 30_000, got
    else:
        assert got == expected_ms
    assert served_by(e) == (200, "fallback")
    assert "panicked" not in e.log()


@pytest.mark.parametrize("proactive", [True, False])
def test_proactive_cooldown_when_the_quota_is_spent(mocks, envoy, proactive):
    primary = mocks("primary", "--header", "x-ratelimit-remaining-requests: 0",
                    "--header", "x-ratelimit-reset-requests: 20s")
    fallback = mocks("fallback")
    e = envoy(chain("primary", "fallback", proactive=proactive),
              {"primary": primary.port, "fallback": fallback.port})
    assert served_by(e) == (200, "primary")
    if proactive:
        # The very next request goes to the fallback: no 429 is ever met.
        assert served_by(e) == (200, "fallback")
        assert len(primary.chat_requests()) == 1
        assert wait_for_cooldowns(e, "primary", 1)[0] in range(19_900, 20_001)
        assert "primary failed (quota spent)" in e.log()
    else:
        assert served_by(e) == (200, "primary")
        assert cooldowns(e, "primary") == []
