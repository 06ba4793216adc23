"""Per-request control (README "Per-request control") and the tried header, in real
Envoy: a trusted caller (the shared secret) may switch failover off, name providers
and their order, and set its own firstByteTimeout and hedgeAfter within bounds; an
untrusted or forged control header is removed and ignored, and the access log says
so; no control header ever reaches a provider."""

import re
import threading
import time

import pytest
from harness import CHAT, llm_hcm, provider, wait_until

SECRET = "s3cret-for-the-e2e-tests-0123456789"
ENV = {"LLM_FAILOVER_CONTROL_SECRET": SECRET}
FORGED = SECRET[:-1] + ("x" if SECRET[-1] != "x" else "y")  # same length, one byte off
CONTROL = {"secret": {"env": "LLM_FAILOVER_CONTROL_SECRET"},
           "firstByteTimeout": {"min": "200ms", "max": "5s"}}
HEDGING = {**CONTROL, "hedgeAfter": {"min": "100ms", "max": "3s"}}
# A provider's class or status, and nothing else: no body, no header of its own.
TRIED = re.compile(r"^[a-z0-9-]+=([a-z_]+|\d{3})(, [a-z0-9-]+=([a-z_]+|\d{3}))*$")


def plugin(control=CONTROL, **failover):
    return {"groups": [{"providers": [provider("a")]}, {"providers": [provider("b")]},
                       {"providers": [provider("c")]}],
            "control": control, **({"failover": failover} if failover else {})}


def trusted(**headers):
    return {"x-llm-failover-secret": SECRET, **headers}


def control_headers_seen(*mocks):
    """Every x-llm-failover-* or per-try header a provider received."""
    seen = []
    for m in mocks:
        for r in m.chat_requests():
            seen += [n for n, _ in r["headers"]
                     if n.lower().startswith("x-llm-failover") or n.lower() == "x-envoy-upstream-rq-per-try-timeout-ms"]
    return seen


@pytest.fixture
def three(mocks, envoy):
    a, b, c = mocks("a", "--latency-ms", "300"), mocks("b"), mocks("c")
    e = envoy(plugin(), {"a": a.port, "b": b.port, "c": c.port}, env=ENV)
    return e, (a, b, c)


def test_trusted_and_untrusted_control_headers(three):
    e, mocks_ = three
    cases = [
        # (headers, expected status, provider, the access log's control field)
        ({"x-llm-failover-providers": "c"}, 200, "a", "ignored: no secret (x-llm-failover-providers)"),
        ({"x-llm-failover-secret": FORGED, "x-llm-failover-providers": "c", "x-llm-failover-fallback": "off"},
         200, "a", "ignored: wrong secret (x-llm-failover-secret, x-llm-failover-fallback, x-llm-failover-providers)"),
        ({"x-llm-failover-secret": "", "x-llm-failover-providers": "c"}, 200, "a", "ignored: wrong secret"),
        (trusted(**{"x-llm-failover-providers": "c,b"}), 200, "c", "applied: providers=c,b"),
        (trusted(**{"x-llm-failover-providers": " b "}), 200, "b", "applied: providers=b"),
        (trusted(), 200, "a", "applied: trusted, nothing asked"),
        # A client's own per-try timeout would cut the primary's 300 ms: removed.
        ({"x-envoy-upstream-rq-per-try-timeout-ms": "50"}, 200, "a", "-"),
    ]
    for headers, status, served, logged in cases:
        got, h, _ = e.post_chat(CHAT, headers)
        assert (got, h.get("x-llm-provider")) == (status, served), headers
    lines = e.access_log_lines(len(cases))
    for (headers, _, _, logged), line in zip(cases, lines):
        if logged == "-":
            assert line["control"] in (None, "-"), line
        else:
            assert line["control"].startswith(logged), (headers, line["control"])
    assert control_headers_seen(*mocks_) == []
    # Nothing was held against the primary: the forged per-try timeout never reached the router.
    assert e.providers()["a"]["state"] == "healthy"


@pytest.mark.parametrize("headers,names", [
    ({"x-llm-failover-providers": "a,zzz"}, 'no provider "zzz"'),
    ({"x-llm-failover-providers": "a,a"}, "named twice"),
    ({"x-llm-failover-fallback": "maybe"}, '"maybe" is neither'),
    ({"x-llm-failover-first-byte-timeout": "100ms"}, "outside the bounds"),
    ({"x-llm-failover-first-byte-timeout": "6s"}, "outside the bounds"),
    ({"x-llm-failover-first-byte-timeout": "soon"}, "x-llm-failover-first-byte-timeout"),
    ({"x-llm-failover-hedge-after": "50ms"}, "this gateway does not hedge"),
])
def test_a_trusted_request_with_a_bad_value_is_refused_naming_it(three, headers, names):
    e, mocks_ = three
    status, h, body = e.post_chat(CHAT, trusted(**headers))
    assert status == 400, body
    err = __import__("json").loads(body)["error"]
    assert names in err["message"] and err["code"] == "invalid_control_header", err
    assert all(m.chat_requests() == [] for m in mocks_)
    assert e.access_log_lines(1)[0]["control"].startswith("refused: ")


def test_control_under_concurrency(three):
    """16 clients at once, trusted, untrusted and forged mixed: each request gets
    what its own headers earn, whatever the others send."""
    e, mocks_ = three
    kinds = [
        (trusted(**{"x-llm-failover-providers": "c"}), "c"),
        ({"x-llm-failover-providers": "c"}, "a"),
        ({"x-llm-failover-secret": FORGED, "x-llm-failover-providers": "b"}, "a"),
        (trusted(**{"x-llm-failover-providers": "b,c"}), "b"),
    ]
    results, errors = [], []

    def client(n):
        try:
            for i in range(6):
                headers, want = kinds[(n + i) % len(kinds)]
                status, h, _ = e.post_chat(CHAT, headers)
                results.append((status, h.get("x-llm-provider"), want))
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append(ex)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 96
    wrong = [r for r in results if r[:2] != (200, r[2])]
    assert wrong == [], wrong[:5]
    assert control_headers_seen(*mocks_) == []


def test_fallback_off_and_the_tried_header(mocks, envoy):
    # The primary fails every request with a 503 but never cools (a high threshold).
    a = mocks("a", "--failure-injection-rate", "100", "--failure-types", "server_error")
    b, c = mocks("b"), mocks("c")
    e = envoy(plugin(consecutiveFailures=1000), {"a": a.port, "b": b.port, "c": c.port}, env=ENV)
    # Untrusted: the failover happens, and the client is told what was tried.
    status, h, body = e.post_chat(CHAT, {"x-llm-failover-fallback": "off"})
    assert (status, h["x-llm-provider"]) == (200, "b")
    assert h["x-llm-failover-tried"] == "a=server_error, b=200"
    assert TRIED.match(h["x-llm-failover-tried"])
    # Trusted, failover off: the primary's own 503 comes back, nothing else asked.
    b_before = len(b.chat_requests())
    status, h, body = e.post_chat(CHAT, trusted(**{"x-llm-failover-fallback": "off"}))
    assert (status, h["x-llm-provider"]) == (500, "a"), body
    assert "x-llm-failover-tried" not in h
    assert len(b.chat_requests()) == b_before
    # Trusted, an order of its own that skips b: a fails, c answers.
    status, h, _ = e.post_chat(CHAT, trusted(**{"x-llm-failover-providers": "a,c"}))
    assert (status, h["x-llm-provider"], h["x-llm-failover-tried"]) == (200, "c", "a=server_error, c=200")
    assert len(b.chat_requests()) == b_before
    assert control_headers_seen(a, b, c) == []  # on the router's retry to c too
    # The header never carries what the provider said, or a credential.
    status, h, _ = e.post_chat(CHAT, {"authorization": "Bearer sk-client-secret"})
    assert "sk-client" not in h["x-llm-failover-tried"] and "Service" not in h["x-llm-failover-tried"]
    lines = e.access_log_lines(4)
    assert [l["control"] for l in lines[:3]] == [
        "ignored: no secret (x-llm-failover-fallback)", "applied: fallback=off", "applied: providers=a,c"]


def test_the_tried_header_can_be_switched_off(mocks, envoy):
    a = mocks("a", "--failure-injection-rate", "100", "--failure-types", "server_error")
    b = mocks("b")
    cfg = {"groups": [{"providers": [provider("a")]}, {"providers": [provider("b")]}],
           "triedHeader": False, "failover": {"consecutiveFailures": 1000}}
    e = envoy(cfg, {"a": a.port, "b": b.port})
    status, h, _ = e.post_chat(CHAT)
    assert (status, h["x-llm-provider"]) == (200, "b")
    assert "x-llm-failover-tried" not in h
    assert e.access_log_lines(1)[0]["tried"] == "a,b"


def test_a_requests_own_first_byte_timeout_and_hedge(mocks, envoy):
    """The primary answers after 1.5 s; hedgeAfter is 3 s for everyone. A trusted
    request hedges after 200 ms, or gives up on the first byte after 500 ms; an
    untrusted one asking the same waits for the primary."""
    a = mocks("a", "--latency-ms", "1500")
    b, c = mocks("b"), mocks("c")
    e = envoy(plugin(HEDGING, hedgeAfter="3s"), {"a": a.port, "b": b.port, "c": c.port}, env=ENV)

    def timed(headers):
        start = time.monotonic()
        status, h, _ = e.post_chat(CHAT, headers)
        return status, h.get("x-llm-provider"), time.monotonic() - start, h

    asks = {"x-llm-failover-hedge-after": "200ms", "x-llm-failover-first-byte-timeout": "500ms"}
    status, served, took, _ = timed(asks)
    assert (status, served) == (200, "a") and took >= 1.4, took
    status, served, took, _ = timed(trusted(**{"x-llm-failover-hedge-after": "off"}))
    assert (status, served) == (200, "a") and took >= 1.4, took
    status, served, took, h = timed(trusted(**{"x-llm-failover-hedge-after": "200ms"}))
    assert (status, served) == (200, "b") and took < 1.2, took
    assert h["x-llm-failover-tried"] == "a=slow, b=200"
    # The hedge cools nobody; the request's own firstByteTimeout abandons the primary.
    assert e.providers()["a"]["state"] == "healthy"
    status, served, took, h = timed(trusted(**{"x-llm-failover-first-byte-timeout": "500ms",
                                               "x-llm-failover-hedge-after": "off"}))
    assert (status, served) == (200, "b") and 0.45 <= took < 1.2, took
    assert h["x-llm-failover-tried"] == "a=timeout, b=200"
    lines = e.access_log_lines(4)
    assert lines[0]["control"].startswith("ignored: no secret")
    assert lines[2]["hedge"] == "b:won", lines[2]
    assert lines[3]["control"] == "applied: first-byte-timeout=500ms hedge-after=off"
    assert (lines[3]["tried"], lines[3]["failover_reason"]) == ("a,b", "timeout")
    wait_until(lambda: "the request's own firstByteTimeout" in e.log(), 5, "the timeout's log line")
    assert control_headers_seen(a, b, c) == []


def test_control_is_refused_in_dispatch_mode_and_without_a_long_secret(tmp_path):
    import json
    import subprocess

    from harness import ROOT

    render = ROOT / "target" / "release" / "llm-failover"
    bad = {**plugin(), "failover": {"mode": "dispatch"}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad))
    r = subprocess.run([str(render), "render", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode != 0 and "control: needs router mode" in r.stderr, r.stderr
    short = plugin(control={"secret": {"env": "S"}, "hedgeAfter": {"min": "1s", "max": "2s"}})
    path.write_text(json.dumps(short))
    r = subprocess.run([str(render), "render", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode != 0 and "control.hedgeAfter: needs failover.hedgeAfter" in r.stderr, r.stderr


def test_dispatch_mode_removes_and_ignores_control_headers(mocks, envoy):
    """Control is router mode only; in dispatch mode the headers still never reach a
    provider, on the routed attempt or on the dispatched failover."""
    a = mocks("a", "--failure-injection-rate", "100", "--failure-types", "server_error")
    b = mocks("b")
    cfg = {"groups": [{"providers": [provider("a")]}, {"providers": [provider("b")]}],
           "failover": {"mode": "dispatch", "consecutiveFailures": 1000}}
    e = envoy(cfg, {"a": a.port, "b": b.port})
    status, h, _ = e.post_chat(CHAT, trusted(**{"x-llm-failover-providers": "b", "x-llm-failover-fallback": "off"}))
    assert (status, h["x-llm-provider"], h["x-llm-failover-tried"]) == (200, "b", "a=server_error, b=200")
    assert control_headers_seen(a, b) == []
    assert e.access_log_lines(1)[0]["control"].startswith("ignored: per-request control is off")


def trusting_loopback(cfg):
    """A listener where Envoy treats loopback clients as internal (as a mesh does its
    own workloads): it then leaves their x-envoy-* request headers in place."""
    hcm = llm_hcm(cfg)
    hcm["use_remote_address"] = True
    hcm["internal_address_config"] = {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}


@pytest.mark.parametrize("header", ["x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms"])
def test_a_clients_router_timeouts_are_removed_where_envoy_trusts_it(mocks, envoy, header):
    """Where Envoy keeps a client's x-envoy-* headers, a client's 50 ms timeout would
    cut the primary's 300 ms answer, and the timeout would count against the primary's
    health. The filter removes such headers from every request it routes."""
    a, b = mocks("a", "--latency-ms", "300"), mocks("b")
    cfg = {"groups": [{"providers": [provider("a")]}, {"providers": [provider("b")]}]}
    e = envoy(cfg, {"a": a.port, "b": b.port}, tweak=trusting_loopback)
    for _ in range(3):
        status, h, _ = e.post_chat(CHAT, {header: "50", "x-envoy-retry-on": "5xx", "x-envoy-max-retries": "5"})
        assert (status, h["x-llm-provider"]) == (200, "a")
    assert "x-llm-failover-tried" not in h
    view = e.providers()["a"]
    assert (view["state"], view["consecutive_failures"]) == ("healthy", 0), view
    assert len(b.chat_requests()) == 0


def test_a_providers_own_tried_header_never_reaches_the_client(mocks, envoy):
    a = mocks("a", "--header", "x-llm-failover-tried: a=forged-by-the-provider")
    b = mocks("b")
    cfg = {"groups": [{"providers": [provider("a")]}, {"providers": [provider("b")]}]}
    e = envoy(cfg, {"a": a.port, "b": b.port})
    status, h, _ = e.post_chat(CHAT)
    assert (status, h["x-llm-provider"]) == (200, "a")
    assert "x-llm-failover-tried" not in h, h
