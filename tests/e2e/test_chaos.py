"""Chaos in real Envoy: providers killed and restarted under load, a bad plugin
configuration pushed into a running Envoy, a VM that panics."""

import http.client as http_client
import json
import os
import threading
import time

import pytest
from harness import LOOPBACK, ROOT, Mock, config, free_port, http, provider, served_by, wait_until


def load(envoy, stop: threading.Event, results: list, clients=8):
    """Clients sending chat requests until `stop`; (end, status, provider, start) each;
    status 0 for a connection error or an answer cut short."""
    def run():
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, p = served_by(envoy)
            except (OSError, http_client.HTTPException) as e:
                status, p = 0, type(e).__name__
            results.append((time.monotonic(), status, p, started))
    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_primary_killed_mid_load_and_restarted(mocks, envoy, router):
    port = free_port()
    primary = Mock("primary", port=port)
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")], defaultCooldown="1s", maxCooldown="1s"),
              {"primary": port, "fallback": fallback.port}, router=router)
    stop, results = threading.Event(), []
    threads = load(e, stop, results)
    try:
        wait_until(lambda: sum(1 for r in results if r[2] == "primary") >= 20, 10, "traffic on the primary")
        killed_at = time.monotonic()
        primary.stop()
        wait_until(lambda: any(r[0] > killed_at and r[2] == "fallback" for r in results), 5, "failover")
        time.sleep(0.5)  # the primary stays down for a moment
        primary = Mock("primary", port=port)
        restarted_at = time.monotonic()
        back = wait_until(lambda: next((r[0] for r in results if r[0] > restarted_at and r[2] == "primary"), None),
                          5, "traffic back on the primary")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        primary.stop()
    # Nothing lost, but answers the primary had begun when it was killed: their headers
    # had gone to the client, so they cannot be sent elsewhere (README, "Behaviour").
    cut = [r for r in results if r[1] != 200]
    assert all(r[3] < killed_at and r[0] >= killed_at for r in cut), cut
    assert len(cut) <= 8, cut
    # Back within the cooldown (1 s) plus 1 s of the restart.
    assert back - restarted_at < 2.0, back - restarted_at


def test_fallback_killed_while_the_primary_cools(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "30")
    fallback = mocks("fallback")
    e = envoy(config([provider("primary")], [provider("fallback")]), {"primary": primary.port, "fallback": fallback.port},
              router=True)
    assert served_by(e) == (200, "fallback")
    fallback.stop()
    for _ in range(5):
        start = time.monotonic()
        status, headers, body = e.post_chat({"model": "", "messages": []}, path="/v1/chat/completions")
        took = time.monotonic() - start
        # The first request finds the fallback refusing; then every provider cools (the
        # primary's 429 for 30 s, the fallback's refused connection for 5 s, the default
        # cooldown): each request goes to the one back first, the fallback, and gets
        # Envoy's 503 for its refused connection.
        assert (status, headers.get("x-llm-provider")) == (503, "fallback"), body
        assert int(headers["retry-after"]) > 0
        assert took < 2, took
    assert {name: p["state"] for name, p in e.providers().items()} == {"primary": "cooling", "fallback": "cooling"}


def test_bad_configuration_pushed_over_lds_is_refused_and_the_old_one_serves_dispatch_wiring(mocks, tmp_path):
    """The listener (with the filter's configuration) comes from a file (LDS); a bad
    configuration written there is refused, the log names the field, traffic goes on."""
    from harness import bootstrap, envoy_bin, stop_process
    import subprocess

    up = mocks("up")
    port, admin = free_port(), free_port()
    good = {"groups": [{"providers": [{"name": "up", "cluster": "up", "path": "/v1/chat/completions"}]}]}
    cfg = bootstrap(good, {"up": up.port}, port, admin)
    cfg["node"] = {"id": "llm-failover-test", "cluster": "llm-failover-test"}  # LDS needs them
    listeners = cfg["static_resources"].pop("listeners")
    lds = tmp_path / "lds.json"

    def write_listeners(plugin):
        value = json.dumps(dict(plugin, failover={"mode": "dispatch"}))
        listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][1]["typed_config"][
            "config"]["configuration"]["value"] = value
        doc = {"resources": [dict(l, **{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener"})
                             for l in listeners[:1]]}
        tmp = tmp_path / "lds.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, lds)  # Envoy watches for the file being moved into place

    write_listeners(good)
    cfg["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"}}
    (tmp_path / "envoy.json").write_text(json.dumps(cfg))
    log = open(tmp_path / "envoy.log", "w")
    proc = subprocess.Popen([envoy_bin(), "-c", str(tmp_path / "envoy.json"), "--concurrency", "2",
                             "--disable-hot-restart", "-l", "info"], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{LOOPBACK}:{port}/v1/chat/completions"
        body = json.dumps({"model": "m", "messages": []}).encode()
        wait_until(lambda: http("POST", url, body, {"content-type": "application/json"})[0] == 200, 20, "Envoy")

        def rejected():
            _, _, stats = http("GET", f"http://{LOOPBACK}:{admin}/stats?filter=lds.update_rejected")
            return int(stats.decode().split(":")[-1].strip() or 0)

        bad = json.loads(json.dumps(good))
        bad["groups"][0]["providers"][0]["weight"] = 0
        write_listeners(bad)
        wait_until(lambda: rejected() >= 1, 10, "the update to be rejected")
        text = (tmp_path / "envoy.log").read_text()
        assert "groups[0].providers[0].weight: 0 is out of range" in text
        for _ in range(5):
            status, headers, _ = http("POST", url, body, {"content-type": "application/json"})
            assert (status, headers.get("x-llm-provider")) == (200, "up")
    finally:
        stop_process(proc)
        log.close()


@pytest.mark.wasm_only("a wasm VM's panic and restart; the native module catches panics at each hook")
def test_a_vm_that_panics_is_back_within_milliseconds(mocks, envoy):
    """A debug build's trigger (`--features test-panic`, header
    `x-llm-failover-test-panic`) panics the VM; FAIL_RELOAD gives the next request a
    fresh one."""
    wasm = ROOT / "target" / "test-panic" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
    assert wasm.exists(), "make build builds it (the test-panic feature)"
    up = mocks("up")
    e = envoy(config([provider("up")]), {"up": up.port}, wasm=wasm, concurrency=1)
    # The request that panicked gets a 5xx or a closed connection, nothing else.
    try:
        status = e.post_chat({"model": "", "messages": []}, {"x-llm-failover-test-panic": "1"})[0]
    except http_client.RemoteDisconnected:
        status = 0
    assert status == 0 or status >= 500
    # FAIL_RELOAD (10 ms backoff in the shipped wiring): a fresh VM for what comes next.
    failed = []

    def back():
        result = served_by(e)
        if result != (200, "up"):
            failed.append(result)
        return result == (200, "up")

    panicked_at = time.monotonic()
    wait_until(back, 2, "a fresh VM", interval=0.005)
    # Requests 5 ms apart: the ones in the first ~10 ms fail, then the VM is back.
    assert time.monotonic() - panicked_at < 0.1, failed
    assert e.proc.poll() is None, "Envoy itself survived"
    assert "llm-failover panicked" in e.log()
    assert sum(v for k, v in e.stats().items() if k.endswith(".vm_reload_success")) >= 1
