"""The native module (Envoy 1.40 dynamic modules, native/): it loads in the PyPI Envoy,
Envoy says its ABI version matched, and its hooks run on real traffic (issue 18's
spike: read a request header, set a response header)."""

from harness import (NATIVE_DIR, Envoy, config, dead_port, insert_before_router, native_filter, provider,
                     wait_until)

ABI_MATCHED = "Dynamic module ABI version v0.2.0 matched."


def limited_primary(mocks):
    """A primary that answers every request with a 429 (Retry-After: 30 s), a healthy
    fallback, and router mode natively in front of them."""
    primary = mocks("primary", "--failure-injection-rate", "100", "--failure-types", "rate_limit",
                    "--retry-after", "30")
    fallback = mocks("fallback")
    envoy = Envoy(config([provider("primary")], [provider("fallback")]),
                  {"primary": primary.port, "fallback": fallback.port}, native=True)
    return primary, fallback, envoy


def test_the_native_module_loads_with_a_matching_abi_and_runs_on_every_request(mocks):
    a = mocks("a")
    envoy = Envoy(config([provider("a")]), {"a": a.port},
                  env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(NATIVE_DIR)},
                  tweak=lambda cfg: insert_before_router(cfg, native_filter("spike")), native=False)
    try:
        assert ABI_MATCHED in envoy.log()
        for _ in range(16):
            status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
            assert status == 200
            # The module read :path on the request and said so on the response.
            assert headers.get("x-llm-failover-native") == "1"
    finally:
        envoy.stop()


def test_filter_state_a_native_filter_sets_picks_the_routes_cluster(mocks):
    """What router mode natively will stand on (Envoy 1.40, measured): a native filter's
    filter state is read by the route's matcher cluster specifier (key without the
    `wasm.` prefix proxy-wasm adds) and by the access log; a second set replaces the
    first; and the route's cluster, picked before the filter ran, is picked again
    after `clear_route_cluster_cache`."""
    a, b = mocks("a"), mocks("b")

    def native_routing(cfg):
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        # The native filter names the cluster instead of the wasm filter.
        hcm["http_filters"] = [native_filter("state", "ca cb")] + [
            f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            spec = route["route"]["inline_cluster_specifier_plugin"]["extension"]["typed_config"]
            spec["cluster_matcher"]["matcher_tree"]["input"]["typed_config"]["key"] = "llm_failover_next"
        hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]["next"] = \
            "%FILTER_STATE(llm_failover_next:PLAIN)%"

    envoy = Envoy(config([provider("a", "ca")], [provider("b", "cb")]), {"ca": a.port, "cb": b.port},
                  env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(NATIVE_DIR)}, tweak=native_routing, native=False)
    try:
        for _ in range(8):
            status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
            assert (status, headers.get("x-mock-name")) == (200, "b")
            # The module read back its second value.
            assert headers.get("x-state") == "cb"
        assert [e["next"] for e in envoy.access_log_lines(8)] == ["cb"] * 8
    finally:
        envoy.stop()


def test_a_native_upstream_filter_moves_the_retry_to_the_cluster_it_names(mocks):
    """The other half of router mode natively (measured): as an upstream filter on a
    provider's cluster, the module turns the answer into the route's retry status
    (591) and names the next cluster in filter state; Envoy's router retries there
    (`refresh_cluster_on_retry` runs the matcher again)."""
    a, b = mocks("a"), mocks("b")

    def native_upstream(cfg):
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            spec = route["route"]["inline_cluster_specifier_plugin"]["extension"]["typed_config"]
            spec["cluster_matcher"]["matcher_tree"]["input"]["typed_config"]["key"] = "llm_failover_next"
        for cluster in cfg["static_resources"]["clusters"]:
            options = cluster.get("typed_extension_protocol_options", {})
            for opts in options.values():
                filters = [f for f in opts["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
                if cluster["name"] == "ca":
                    filters.insert(0, native_filter("retry", "cb"))
                opts["http_filters"] = filters

    envoy = Envoy(config([provider("a", "ca")], [provider("b", "cb")]), {"ca": a.port, "cb": b.port},
                  env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(NATIVE_DIR)}, tweak=native_upstream, native=False)
    try:
        for _ in range(8):
            # No wasm upstream filter rewrites the path here: the mocks' own.
            status, headers, _ = envoy.post_chat({"model": "m", "messages": []}, path="/v1/chat/completions")
            assert (status, headers.get("x-mock-name")) == (200, "b")
        # Each request was asked of a first: the retry followed the filter's word.
        assert len(a.chat_requests()) == 8
        assert len(b.chat_requests()) == 8
    finally:
        envoy.stop()


def test_router_mode_natively_fails_over_a_429_within_the_request(mocks):
    """`llm-failover render --native`: the same router wiring with the native module on
    the listener and on each provider cluster; a 429 from the preferred provider goes
    on to the fallback within the request, the client sees the fallback's answer."""
    primary, fallback, envoy = limited_primary(mocks)
    try:
        assert ABI_MATCHED in envoy.log()
        status, headers, _ = envoy.post_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert (status, headers.get("x-llm-provider")) == (200, "fallback")
        entry = envoy.access_log_lines(1)[0]
        assert (entry["tried"], entry["failover_reason"]) == ("primary,fallback", "rate_limited")
        # The primary cools down: the next request goes straight to the fallback.
        status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
        assert (status, headers.get("x-llm-provider")) == (200, "fallback")
        assert len(primary.chat_requests()) == 1
    finally:
        envoy.stop()


def test_router_mode_natively_fails_over_a_refused_connection(mocks):
    """A refused connection ends the native upstream filter's attempt without an end
    Envoy reports: the attempt named the next in advance, and the next attempt's
    filter records the refused provider (ARCHITECTURE.md, "The native module")."""

    fallback = mocks("fallback")
    dead = dead_port()  # nothing listens here
    envoy = Envoy(config([provider("dead")], [provider("fallback")], onStatus=[429]),
                  {"dead": dead, "fallback": fallback.port}, native=True)
    try:
        status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
        assert (status, headers.get("x-llm-provider")) == (200, "fallback")
        entry = envoy.access_log_lines(1)[0]
        assert (entry["tried"], entry["failover_reason"]) == ("dead,fallback", "connection")
        # dead cools down: the next request goes to the fallback alone.
        status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
        assert (status, headers.get("x-llm-provider")) == (200, "fallback")
        assert envoy.access_log_lines(2)[1]["tried"] is None
    finally:
        envoy.stop()


def test_native_metrics_have_the_wasm_builds_names_and_labels(mocks):
    """The native module's metrics (defined when Envoy creates its configuration) are
    the wasm build's: same names and labels in Prometheus, the upstream filter's counts
    included (recorded by the downstream filter, not in the cluster's scope), and the
    health gauge set by the configuration's tick on the main thread."""
    from harness import metric

    primary, fallback, envoy = limited_primary(mocks)
    try:
        for _ in range(3):
            assert envoy.post_chat({"model": "m", "messages": []})[0] == 200
        text = envoy.prometheus()
        assert metric(text, "llm_failover_requests", provider="fallback", status_class="2xx") == 3
        assert metric(text, "llm_failover_failovers",
                      **{"from": "primary", "to": "fallback", "reason": "rate_limited"}) == 1
        assert metric(text, "llm_failover_cooldowns", provider="primary", reason="rate_limited") == 1
        assert "dynamicmodulescustom" not in text
        assert "envoy_cluster_primary_llm_failover" not in text
        # 1: cooling down, 0: healthy (metrics.rs in the core); the tick sets them
        # within about a second.
        wait_until(lambda: metric(envoy.prometheus(), "llm_failover_health", provider="primary") == 1,
                   5, "the primary's health gauge")
        assert metric(envoy.prometheus(), "llm_failover_health", provider="fallback") == 0
    finally:
        envoy.stop()


def test_check_knows_the_native_wiring(tmp_path):
    """`llm-failover check` on the shipped native bootstrap (render --native) finds nothing;
    on a copy whose route reads the wasm build's filter-state key, it says so."""
    import subprocess

    from harness import RENDER_BIN, ROOT

    def check(envoy_yaml):
        return subprocess.run([str(RENDER_BIN), "check", "--config", str(ROOT / "envoy" / "llm-failover.json"),
                               "--envoy", str(envoy_yaml)], capture_output=True, text=True, timeout=30)

    r = check(ROOT / "envoy" / "envoy-native.yaml")
    assert r.returncode == 0 and "fits" in r.stdout, r.stdout + r.stderr
    broken = tmp_path / "envoy.yaml"
    broken.write_text((ROOT / "envoy" / "envoy-native.yaml").read_text()
                      .replace("key: llm_failover_next", "key: wasm.llm_failover_next"))
    r = check(broken)
    assert r.returncode == 1
    assert 'a route reads filter state "wasm.llm_failover_next", but the native module sets' in r.stderr


def spiked(mocks, spike: str, words: str):
    """An Envoy with one of native/src/spike_async.rs's filters before the router."""
    a = mocks("a")
    envoy = Envoy(config([provider("a")]), {"a": a.port},
                  env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(NATIVE_DIR)},
                  tweak=lambda cfg: insert_before_router(cfg, native_filter(spike, words)), native=False)
    return a, envoy


def test_a_module_thread_wakes_one_stream_on_its_own_worker_under_16_clients(mocks):
    """What a native hedge's timer would stand on: a thread the module started commits
    to the stream's own scheduler after 150 ms; Envoy runs the stream's `scheduled`
    hook on that stream's worker thread, which answers."""
    from concurrent.futures import ThreadPoolExecutor

    _, envoy = spiked(mocks, "wake", "150")
    try:
        def one(_):
            status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
            return status, headers.get("x-woke-event"), headers.get("x-same-thread"), \
                int(headers.get("x-woke-after-ms", "-1"))

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(48)))
        assert {a[:3] for a in answers} == {(200, "7", "1")}, answers
        assert all(150 <= a[3] < 1_000 for a in answers), answers
    finally:
        envoy.stop()


def test_a_streaming_call_from_the_filter_is_read_event_by_event_and_can_be_reset(mocks):
    """What a native hedge's call would stand on: a streaming callout from the request's
    own filter to a cluster, its answer read through the stream hooks; it passes the
    cluster's upstream filters like an attempt (here render's wasm one rewrites its
    path, so the mock answers 404 for the chat path); and, reset by the filter once its
    headers came, its reset hook runs inside the reset call, and Envoy goes on."""
    _, envoy = spiked(mocks, "stream", "a /mock/healthz")
    try:
        status, headers, body = envoy.post_chat({"model": "m", "messages": []})
        assert (status, headers.get("x-callout-status")) == (200, "404"), body
        assert b"Unknown request URL: GET /v1/chat/completions" in body, body
    finally:
        envoy.stop()
    _, envoy = spiked(mocks, "stream", "a /mock/healthz cancel")
    try:
        for _ in range(8):
            status, headers, _ = envoy.post_chat({"model": "m", "messages": []})
            assert (status, headers.get("x-callout-status"), headers.get("x-cancelled")) == (200, "404", "1")
        assert envoy.proc.poll() is None
        # Measured: resetting its own streaming call runs its reset hook at once,
        # inside the reset call (a hedge's cancel must expect that re-entry).
        wait_until(lambda: envoy.log().count("spike: http stream reset hook, reason") >= 8, 5, "8 reset hooks")
        assert envoy.log().count("spike: http stream reset hook, reason") == 8
        assert envoy.log().count(", inside our own reset") == 8
    finally:
        envoy.stop()
