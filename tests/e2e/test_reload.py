"""A configuration reload (router mode, the LLM listener from a watched LDS file, as a
control plane would push it): a provider the new configuration drops leaves the
health view and its gauge reads `removed` (4), while the others go on."""

import json
import os
import tempfile
from pathlib import Path

from harness import CHAT, LOOPBACK, metric, provider, render, wait_until

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def plugin(*names, ports):
    return {"groups": [{"providers": [provider(n, endpoint=f"http://{LOOPBACK}:{ports[n]}")]} for n in names]}


def write_lds(directory: Path, listener: dict):
    """Envoy watches the directory and reads the file again after a rename into it."""
    tmp = directory / "lds.json.tmp"
    tmp.write_text(json.dumps({"resources": [{"@type": LISTENER, **listener}]}))
    os.replace(tmp, directory / "lds.json")


def llm_listener(cfg: dict) -> dict:
    (listener,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] != "ops"]
    return listener


def test_a_provider_dropped_by_a_reload_leaves_the_view_and_its_gauge_says_removed(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "600")
    fallback = mocks("fallback")
    ports = {"primary": primary.port, "fallback": fallback.port}
    lds_dir = Path(tempfile.mkdtemp(prefix="llm-failover-lds-"))

    def from_lds(cfg):
        listener = llm_listener(cfg)
        cfg["static_resources"]["listeners"].remove(listener)
        write_lds(lds_dir, listener)
        cfg["node"] = {"id": "llm-failover-test", "cluster": "llm-failover-test"}  # LDS needs one
        cfg["dynamic_resources"] = {"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds_dir / "lds.json"), "watched_directory": {"path": str(lds_dir)}}}}

    # A short drain: the old listener's filter chain (and its configuration) is
    # released a second after the update instead of Envoy's default 600 s.
    e = envoy(plugin("primary", "fallback", ports=ports), ports, tweak=from_lds, args=("--drain-time-s", "1"))
    status, h, _ = e.post_chat(CHAT)
    assert (status, h["x-llm-provider"]) == (200, "fallback")
    wait_until(lambda: metric(e.prometheus(), "llm_failover_health", provider="primary") == 1, 10,
               "the primary's gauge at cooling")
    assert set(e.providers()) == {"primary", "fallback"}

    # The reload: the same listener, the primary gone from its configuration.
    cfg = render(plugin("fallback", ports=ports), e.port, e.admin_port, e.ops_port,
                 access_log=str(e.access_log), native=e.native)
    write_lds(lds_dir, llm_listener(cfg))
    wait_until(lambda: e.stats().get("listener_manager.lds.update_success", 0) >= 2, 10, "the LDS update")
    status, h, _ = e.post_chat(CHAT)
    assert (status, h["x-llm-provider"]) == (200, "fallback")

    # Gone from the view once no live configuration has it (registry.rs: STALE_MS,
    # 10 s, after the old configuration stopped publishing).
    wait_until(lambda: set(e.providers()) == {"fallback"}, 30, "the primary to leave the health view")
    wait_until(lambda: metric(e.prometheus(), "llm_failover_health", provider="primary") == 4, 5,
               "the primary's gauge at removed")
    assert metric(e.prometheus(), "llm_failover_health", provider="fallback") == 0
    assert "provider primary is in no configuration any more" in e.log()
    # The fallback stays, and is still served.
    status, h, _ = e.post_chat(CHAT)
    assert (status, h["x-llm-provider"]) == (200, "fallback")
    assert e.providers()["fallback"]["state"] == "healthy"
