"""`make bench`: llm-failover against Envoy without it, in one run.

Configurations (each its own Envoy, `--concurrency 1`, pinned to one core):
  no-wasm        plain Envoy routing to the upstream
  noop-wasm      a wasm filter that does nothing (bench/noop): the floor of any wasm filter
  no-wasm-100k, noop-wasm-100k   the same two with the 100 KB body
  native-spike, native-spike-100k   a native module (Envoy's dynamic modules, native/)
                 that reads one request header and sets one response header
  native-noop    the same module doing nothing: Envoy's own cost of a native filter
  floor-routing  the host calls passthrough needs, with no logic (bench/noop "routing")
  floor-rewrite, floor-rewrite-100k   the host calls override-2k/-100k need, no logic
  passthrough    llm-failover, one group, one passthrough provider, no model override
  override-2k    llm-failover, two groups, model override, 2 KB body
  override-100k  the same with a 100 KB body
  failover       the primary answers 429 (Retry-After: 0), each request fails over within itself
  (the rows above: the filter's dispatch mode, wired by hand with `cluster_header`)
  router-wiring  `llm-failover render`'s wiring (matcher cluster specifier on filter
                 state, the two routes, retry policy) with the wasm filters taken out
  router-downstream   the same with the downstream filter only (no upstream filters):
                 with router-wiring and router-2k, where router mode's cost goes
  router-2k, router-100k, router-failover   override-2k, override-100k and failover in
                 router mode (the default), as `llm-failover render` wires them
  router-2k-hedging   router-2k with `hedgeAfter: 5s` (never reached): the normal path's
                 cost of keeping each request for a hedge
  router-2k-no-stream-route   router-2k with `streamFirstByteTimeout: "0s"`: no route for
                 streamed requests, so the request headers are not held until the body
                 is read (what that hold, on by default, costs)
  istio-2k, istio-failover   router-2k and router-failover in the Istio wiring
                 (`llm-failover render --istio`, made into a gateway's configuration as
                 istiod would: tests/e2e/istio_sim.py); istio-gateway: that gateway
                 without the filter's EnvoyFilter (Istio's own filters, routes, clusters)
  native-2k, native-100k, native-failover, native-2k-hedging   router-2k, router-100k,
                 router-failover and router-2k-hedging with the native module
                 (`llm-failover render --native`)

Then time to first event of a streamed answer (llm-mock providers, one request at a
time) and Envoy's CPU per streamed request: straight to the provider (no wasm), router
mode direct (also without the route for streamed requests, and with
`firstTokenTimeout`, which holds the answer's headers until its first event) and on
failover, and dispatch mode on failover.

The upstream is a second Envoy answering with `direct_response` behind a buffer filter
(so it reads the whole body). For each configuration, in rounds (A B C ... A B C ...):
throughput at 32 connections, p50/p99 latency at 1 connection (wrk), Envoy CPU per
request (from /proc), and the proxy's memory. All traffic is on 127.0.0.1; every run is
bounded in time. Writes bench/results.json, BENCHMARKS.md and bench/ratios.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import (LOOPBACK, WASM, Mock, envoy_bin, free_port, http, is_llm_failover, llm_hcm,  # noqa: E402
                     render, render_istio, stop_process, wait_until)

NOOP_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "noop_filter.wasm"
# The native module (native/, `make build`): Envoy finds lib<name>.so here.
NATIVE_DIR = ROOT / "target" / "release-native"
HZ = os.sysconf("SC_CLK_TCK")
CHAT_RESPONSE = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
RATE_LIMITED = json.dumps({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})


def chat_body(size: int) -> bytes:
    """An OpenAI SDK-shaped body (messages first, then model) of about `size` bytes."""
    words = "The quick brown fox jumps over the lazy dog, and asks what 2+2 is. "
    base = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": ""}],
            "model": "gpt-4o", "temperature": 0.2}
    pad = size - len(json.dumps(base))
    base["messages"][1]["content"] = (words * (pad // len(words) + 1))[:max(pad, 0)]
    return json.dumps(base).encode()


def listener(port, routes, http_filters, buffer_limit=2 * 1024 * 1024):
    return {
        "name": f"l{port}", "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
        "per_connection_buffer_limit_bytes": buffer_limit,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "b", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
            "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def bootstrap(admin_port, listeners, clusters=()):
    return {"admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": list(clusters)}}


def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "per_connection_buffer_limit_bytes": 2 * 1024 * 1024,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": LOOPBACK, "port_value": port}}}}]}]}}


def upstream_config(port, admin_port):
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 4194304}}
    routes = [
        {"match": {"prefix": "/v1/limited"}, "direct_response": {"status": 429, "body": {"inline_string": RATE_LIMITED}},
         "response_headers_to_add": [{"header": {"key": "retry-after", "value": "0"}},
                                     {"header": {"key": "content-type", "value": "application/json"}}]},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": CHAT_RESPONSE}},
         "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]},
    ]
    return bootstrap(admin_port, [listener(port, routes, [buffer])])


def wasm_filter(path: Path, plugin: dict | str | None):
    cfg = {"name": "f", "root_id": "llm_failover", "failure_policy": "FAIL_RELOAD",
           "vm_config": {"vm_id": "f", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(path)}}}}
    if plugin is not None:
        value = plugin if isinstance(plugin, str) else json.dumps(plugin)
        cfg["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": cfg}}


def native_filter(filter_name: str, config: str = "{}"):
    """The native module (Envoy's dynamic modules), as filter `filter_name`."""
    return {"name": "llm_failover_native", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "llm_failover_native"},
        "filter_name": filter_name,
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}}}


def provider(name, cluster_name, path, model=None, endpoint=None):
    p = {"name": name, "cluster": cluster_name, "path": path}
    if model:
        p["openai"] = {"model": model}
    if endpoint:
        p["endpoint"] = endpoint
    return p


def dispatch(plugin: dict) -> dict:
    """The same plugin configuration in dispatch mode (the hand-wired rows)."""
    return dict(plugin, failover={"mode": "dispatch"})


def rendered(plugin: dict, downstream: bool = True, upstream: bool = True, native: bool = False):
    """A builder for `llm-failover render`'s bootstrap of `plugin` (router mode), without
    the access log (the hand-wired rows have none); `downstream=False` / `upstream=False`
    take the filter out of the listener / the clusters and keep the rest of the wiring;
    `native`: `render --native`, the native module instead of the .wasm."""
    def build(port, admin):
        cfg = render(plugin, port, admin, free_port(), native=native)
        hcm = llm_hcm(cfg)
        hcm.pop("access_log", None)
        cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 2 * 1024 * 1024
        for c in cfg["static_resources"]["clusters"]:
            c["per_connection_buffer_limit_bytes"] = 2 * 1024 * 1024
        if not downstream:
            hcm["http_filters"] = [f for f in hcm["http_filters"] if not is_llm_failover(f)]
        if not upstream:
            for c in cfg["static_resources"]["clusters"]:
                if "typed_extension_protocol_options" not in c:
                    continue  # llm_failover_exhausted
                opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                opts["http_filters"] = [f for f in opts["http_filters"] if not is_llm_failover(f)]
        return cfg
    return build


def rendered_istio(plugin: dict, patched: bool = True):
    """A builder for the Istio wiring of `plugin` (`render --istio`, made into a
    gateway's configuration as istiod would: tests/e2e/istio_sim.py), without the
    access log; `patched=False`: the gateway Istio alone makes (no filter). Each
    provider's cluster is Istio's for its endpoint."""
    def build(port, admin):
        cfg = render_istio(plugin, port, admin, free_port(), patched=patched)
        llm_hcm(cfg).pop("access_log", None)
        cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 2 * 1024 * 1024
        for c in cfg["static_resources"]["clusters"]:
            c["per_connection_buffer_limit_bytes"] = 2 * 1024 * 1024
        return cfg
    return build


def proxy_configs(upstream_port):
    """name -> (Envoy bootstrap builder(port, admin), body size)."""
    direct = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    by_header = [{"match": {"prefix": "/"}, "route": {"cluster_header": "x-llm-failover-cluster"}}]
    clusters = [cluster("up", upstream_port), cluster("up_fallback", upstream_port)]
    two_groups = {"groups": [
        {"providers": [provider("primary", "up", "/v1/chat/completions", "gpt-4o-mini")]},
        {"providers": [provider("fallback", "up_fallback", "/v1/chat/completions", "gpt-4o-mini")]}]}
    failing = {"groups": [
        {"providers": [provider("primary", "up", "/v1/limited", "gpt-4o-mini")]},
        {"providers": [provider("fallback", "up_fallback", "/v1/chat/completions", "gpt-4o-mini")]}]}
    one = {"groups": [{"providers": [provider("only", "up", "/v1/chat/completions")]}]}
    endpoint = f"http://{LOOPBACK}:{upstream_port}"
    router_two = {"groups": [
        {"providers": [provider("primary", "up", "/v1/chat/completions", "gpt-4o-mini", endpoint)]},
        {"providers": [provider("fallback", "up_fallback", "/v1/chat/completions", "gpt-4o-mini", endpoint)]}]}
    router_failing = {"groups": [
        {"providers": [provider("primary", "up", "/v1/limited", "gpt-4o-mini", endpoint)]},
        {"providers": [provider("fallback", "up_fallback", "/v1/chat/completions", "gpt-4o-mini", endpoint)]}]}

    # The Istio wiring: Istio names a cluster after its host and port, so the fallback
    # reaches the same upstream as `localhost` (a DNS ServiceEntry, as a provider's is).
    istio = {f"{LOOPBACK}": f"outbound|{upstream_port}||{LOOPBACK}", "localhost": f"outbound|{upstream_port}||localhost"}
    istio_two = {"groups": [
        {"providers": [provider("primary", istio[LOOPBACK], "/v1/chat/completions", "gpt-4o-mini", endpoint)]},
        {"providers": [provider("fallback", istio["localhost"], "/v1/chat/completions", "gpt-4o-mini",
                                f"http://localhost:{upstream_port}")]}]}
    istio_failing = json.loads(json.dumps(istio_two))
    istio_failing["groups"][0]["providers"][0]["path"] = "/v1/limited"

    def make(routes, filters):
        return lambda port, admin: bootstrap(admin, [listener(port, routes, filters)], clusters)

    return {
        "no-wasm": (make(direct, []), 2048),
        "noop-wasm": (make(direct, [wasm_filter(NOOP_WASM, None)]), 2048),
        "no-wasm-100k": (make(direct, []), 100 * 1024),
        "noop-wasm-100k": (make(direct, [wasm_filter(NOOP_WASM, None)]), 100 * 1024),
        # Issue 18's spike: a native module that reads one request header and sets one
        # response header (what the C spike in ARCHITECTURE.md did), against the same two.
        "native-noop": (make(direct, [native_filter("noop")]), 2048),
        "native-spike": (make(direct, [native_filter("spike")]), 2048),
        "native-spike-100k": (make(direct, [native_filter("spike")]), 100 * 1024),
        "native-noop-100k": (make(direct, [native_filter("noop")]), 100 * 1024),
        "floor-routing": (make(by_header, [wasm_filter(NOOP_WASM, "routing")]), 2048),
        "floor-rewrite": (make(by_header, [wasm_filter(NOOP_WASM, "rewrite")]), 2048),
        "floor-rewrite-100k": (make(by_header, [wasm_filter(NOOP_WASM, "rewrite")]), 100 * 1024),
        "passthrough": (make(by_header, [wasm_filter(WASM, dispatch(one))]), 2048),
        "override-2k": (make(by_header, [wasm_filter(WASM, dispatch(two_groups))]), 2048),
        "override-100k": (make(by_header, [wasm_filter(WASM, dispatch(two_groups))]), 100 * 1024),
        "failover": (make(by_header, [wasm_filter(WASM, dispatch(failing))]), 2048),
        "router-wiring": (rendered(router_two, downstream=False, upstream=False), 2048),
        "router-downstream": (rendered(router_two, upstream=False), 2048),
        "router-2k": (rendered(router_two), 2048),
        "router-100k": (rendered(router_two), 100 * 1024),
        "router-failover": (rendered(router_failing), 2048),
        # hedgeAfter set, never reached (the upstream answers at once): what keeping each
        # request for a possible hedge costs on the normal path.
        "router-2k-hedging": (rendered(dict(router_two, failover={"hedgeAfter": "5s"})), 2048),
        # streamFirstByteTimeout off: no route for streamed requests, so the request
        # headers are not held until the body is read (router-2k holds them).
        "router-2k-no-stream-route": (rendered(dict(router_two, failover={"streamFirstByteTimeout": "0s"})), 2048),
        # The same router mode with the native module (`render --native`).
        # The same router mode in Istio's wiring (`render --istio`, docs/istio.md).
        "istio-gateway": (rendered_istio(istio_two, patched=False), 2048),
        "istio-2k": (rendered_istio(istio_two), 2048),
        "istio-failover": (rendered_istio(istio_failing), 2048),
        "native-2k": (rendered(router_two, native=True), 2048),
        "native-100k": (rendered(router_two, native=True), 100 * 1024),
        "native-failover": (rendered(router_failing, native=True), 2048),
        "native-2k-hedging": (rendered(dict(router_two, failover={"hedgeAfter": "5s"}), native=True), 2048),
        # Where the native normal path's cost goes: without the upstream filters, and
        # without the route for streamed requests (request headers not held).
        "native-downstream": (rendered(router_two, upstream=False, native=True), 2048),
        "native-2k-no-stream-route": (rendered(dict(router_two, failover={"streamFirstByteTimeout": "0s"}),
                                               native=True), 2048),
    }


class Proc:
    def __init__(self, name, config, workdir: Path, cpu: str | None):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(config(self.port, self.admin)))
        cmd = [envoy_bin(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", cpu] + cmd
        self.log = open(workdir / f"{name}.log", "w")
        env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(NATIVE_DIR))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_until(self.ready, 30, f"{name} Envoy")

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} Envoy exited: {Path(self.log.name).read_text()[-2000:]}")
        status, _, body = http("GET", f"http://{LOOPBACK}:{self.admin}/ready", timeout=1)
        return status == 200 and body.strip() == b"LIVE"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        stop_process(self.proc)
        self.log.close()


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_time(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot parse wrk time {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url, connections, seconds, body_file, cpu, latency=False):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(ROOT / "bench" / "post.lua")]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30,
                         env=dict(os.environ, BODY_FILE=str(body_file))).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": requests}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result["non_2xx"] = int(bad.group(1)) if bad else 0
    result["socket_errors"] = errors.group(1) if errors else ""
    if latency:
        dist = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
        result["p50"] = parse_time(dist["50"])
        result["p99"] = parse_time(dist["99"])
    return result


STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "What is 2+2?"}]}).encode()


def first_event_seconds(port: int) -> float:
    """Seconds from connecting to the first SSE `data:` line of a streamed chat
    completion; reads the stream to its end (every event) before returning."""
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer client-token\r\nConnection: close\r\n"
               f"Content-Length: {len(STREAM_BODY)}\r\n\r\n").encode() + STREAM_BODY
    start = time.perf_counter()
    first = None
    seen = b""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(request)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
            if first is None and b"data:" in seen:
                first = time.perf_counter() - start
    if first is None or b"[DONE]" not in seen or not seen.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"bench: streamed answer incomplete: {seen[:300]!r}")
    return first


def stream_configs(direct: Mock, limited: Mock, fallback: Mock, slow: Mock):
    """name -> Envoy bootstrap builder for the time-to-first-event runs."""
    def ep(m):
        return f"http://{LOOPBACK}:{m.port}"

    def groups(primary: Mock):
        return {"groups": [
            {"providers": [provider("primary", "primary", "/v1/chat/completions", endpoint=ep(primary))]},
            {"providers": [provider("fallback", "fallback", "/v1/chat/completions", endpoint=ep(fallback))]}]}

    def istio_groups(primary: Mock):
        """`groups` with Istio's cluster names (the ServiceEntries' for the endpoints)."""
        g = groups(primary)
        for group, m in zip(g["groups"], (primary, fallback)):
            group["providers"][0]["cluster"] = f"outbound|{m.port}||{LOOPBACK}"
        return g

    by_header = [{"match": {"prefix": "/"}, "route": {"cluster_header": "x-llm-failover-cluster"}}]
    dispatch_failover = dispatch(groups(limited))
    for g in dispatch_failover["groups"]:
        for p in g["providers"]:
            del p["endpoint"]
    return {
        "stream-no-wasm": lambda port, admin: bootstrap(
            admin, [listener(port, [{"match": {"prefix": "/"}, "route": {"cluster": "direct"}}], [])],
            [cluster("direct", direct.port)]),
        "stream-router-direct": rendered(groups(direct)),
        # Without the route for streamed requests (request headers not held for the body).
        "stream-router-direct-no-stream-route": rendered(dict(groups(direct), failover={
            "streamFirstByteTimeout": "0s"})),
        # firstTokenTimeout: the answer's headers are held until its first event.
        "stream-router-direct-first-token": rendered(dict(groups(direct), failover={
            "firstTokenTimeout": "10s"})),
        "stream-router-failover": rendered(groups(limited)),
        "stream-istio-direct": rendered_istio(istio_groups(direct)),
        "stream-istio-failover": rendered_istio(istio_groups(limited)),
        "stream-native-direct": rendered(groups(direct), native=True),
        "stream-native-failover": rendered(groups(limited), native=True),
        "stream-dispatch-failover": lambda port, admin: bootstrap(
            admin, [listener(port, by_header, [wasm_filter(WASM, dispatch_failover)])],
            [cluster("primary", limited.port), cluster("fallback", fallback.port)]),
        # The primary takes 1 s before its headers: waited for, or left after 200 ms.
        # (A 1 ms cooldown, so that every request meets the slow primary again.)
        "stream-slow-primary": rendered(groups(slow)),
        "stream-slow-primary-first-byte-200ms": rendered(dict(groups(slow), failover={
            "firstByteTimeout": "200ms", "defaultCooldown": "1ms", "maxCooldown": "1ms"})),
        # ... or also asked of the fallback after 200 ms (the hedge's answer comes whole).
        "stream-slow-primary-hedge-200ms": rendered(dict(groups(slow), failover={"hedgeAfter": "200ms"})),
        "stream-native-slow-primary-hedge-200ms": rendered(dict(groups(slow), failover={"hedgeAfter": "200ms"}),
                                                           native=True),
    }


def measure_first_events(workdir: Path, proxy_cpu, samples: int, rounds: int):
    """Time to first event per configuration: medians and p90 over `samples` x `rounds`
    streamed requests, one at a time, configurations interleaved by round."""
    mocks = [Mock("direct", "--chunk-delay-ms", "5"),
             Mock("limited", "--failure-injection-rate", "100", "--failure-types", "rate_limit",
                  "--retry-after", "0"),
             Mock("fallback", "--chunk-delay-ms", "5"),
             Mock("slow", "--chunk-delay-ms", "5", "--latency-ms", "1000")]
    procs = {}
    try:
        for name, builder in stream_configs(*mocks).items():
            procs[name] = Proc(name, builder, workdir, proxy_cpu)
        times = {name: [] for name in procs}
        cpu = {name: 0.0 for name in procs}
        for _ in range(rounds):
            for name, p in procs.items():
                first_event_seconds(p.port)  # warm the connection pools
                # The slow-primary paths take about 1 s a request: fewer of them.
                n = max(3, samples // 8) if "slow" in name and "hedge" not in name else samples
                cpu0 = p.cpu_seconds()
                times[name] += [first_event_seconds(p.port) for _ in range(n)]
                cpu[name] += p.cpu_seconds() - cpu0
        if not any(r["path"] == "/v1/chat/completions" for r in mocks[1].requests()):
            raise SystemExit("bench: the failover runs never met the failing primary")
    finally:
        for p in procs.values():
            p.stop()
        for m in mocks:
            m.stop()
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {"p50_ms": statistics.median(ts) * 1e3, "p90_ms": ts[int(len(ts) * 0.9)] * 1e3,
                     "p99_ms": ts[min(len(ts) - 1, int(len(ts) * 0.99))] * 1e3, "samples": len(ts),
                     "cpu_us": cpu[name] / len(ts) * 1e6}
        print(f"{name:26s} first event p50 {out[name]['p50_ms']:6.2f} ms  p90 {out[name]['p90_ms']:6.2f} ms  "
              f"p99 {out[name]['p99_ms']:6.2f} ms  cpu {out[name]['cpu_us']:6.0f} us/stream", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="length of each throughput run (<= 10)")
    ap.add_argument("--latency-seconds", type=int, default=2, help="length of each 1-connection run (<= 10)")
    ap.add_argument("--only", nargs="*", help="run only these configurations")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md and the chart")
    ap.add_argument("--stream-samples", type=int, default=40,
                    help="streamed requests per configuration and round for time to first event (0: skip)")
    args = ap.parse_args()
    if not (1 <= args.seconds <= 10 and 1 <= args.latency_seconds <= 10):
        ap.error("each run is bounded to 10 s")
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk not found (make bench installs it from Debian)")

    cores = os.cpu_count() or 1
    # Envoy under test on core 0; wrk and the upstream Envoy on the other core(s).
    proxy_cpu, load_cpu = ("0", ",".join(str(c) for c in range(1, cores))) if cores >= 2 else (None, None)
    print(f"machine: {cores} cores ({platform.processor() or platform.machine()}), "
          f"proxy on cpu {proxy_cpu}, wrk and upstream on cpu {load_cpu}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="llm-failover-bench-"))
    bodies = {}
    procs = []
    started = time.monotonic()
    try:
        up = Proc("upstream", upstream_config, workdir, load_cpu)
        procs.append(up)
        up_port = up.port
        configs = proxy_configs(up_port)
        names = [n for n in configs if not args.only or n in args.only]
        proxies = {}
        for name in names:
            builder, size = configs[name]
            proxies[name] = Proc(name, builder, workdir, proxy_cpu)
            procs.append(proxies[name])
            if size not in bodies:
                bodies[size] = workdir / f"body-{size}.json"
                bodies[size].write_bytes(chat_body(size))
        # Check each configuration answers 200 before measuring it.
        for name in names:
            status, headers, body = http("POST", f"http://{LOOPBACK}:{proxies[name].port}/v1/chat/completions",
                                         bodies[configs[name][1]].read_bytes(), {"content-type": "application/json"})
            if status != 200:
                raise SystemExit(f"bench: {name} answered {status}: {body[:200]!r}")
            if name.endswith("failover") and headers.get("x-llm-provider") != "fallback":
                raise SystemExit(f"bench: failover configuration was served by {headers.get('x-llm-provider')}")
        results = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:
                p = proxies[name]
                url = f"http://{LOOPBACK}:{p.port}/v1/chat/completions"
                body = bodies[configs[name][1]]
                cpu0 = p.cpu_seconds()
                t = wrk(url, 32, args.seconds, body, load_cpu)
                cpu_per_req = (p.cpu_seconds() - cpu0) / max(t["requests"], 1)
                lat = wrk(url, 1, args.latency_seconds, body, load_cpu, latency=True)
                for run in (t, lat):
                    if run["non_2xx"] or run["socket_errors"]:
                        raise SystemExit(f"bench: {name} had errors: {run}")
                results[name].append({"rps": t["rps"], "cpu_us": cpu_per_req * 1e6,
                                      "p50_us": lat["p50"] * 1e6, "p99_us": lat["p99"] * 1e6})
                print(f"round {r + 1} {name:14s} {t['rps']:9.0f} rps  cpu {cpu_per_req * 1e6:6.1f} us/req  "
                      f"p50 {lat['p50'] * 1e6:7.1f} us  p99 {lat['p99'] * 1e6:7.1f} us", flush=True)
        summary = {}
        for name in names:
            runs = results[name]
            summary[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            summary[name]["rss_mib"] = proxies[name].rss_kib() / 1024
        for p in procs:
            p.stop()
        procs = []
        first_events = {}
        if args.stream_samples > 0:
            first_events = measure_first_events(workdir, proxy_cpu, args.stream_samples, args.rounds)
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report(summary, first_events, args, cores, elapsed)


def ratios(summary):
    """Each configuration against no-wasm and noop-wasm with the same body size."""
    rows = []
    for name, s in summary.items():
        big = name.endswith("-100k")
        base = summary.get("no-wasm-100k" if big else "no-wasm")
        floor = summary.get("noop-wasm-100k" if big else "noop-wasm")
        rows.append({
            "name": name, **s,
            "vs_nowasm": s["rps"] / base["rps"] if base else None,
            "vs_noop": s["rps"] / floor["rps"] if floor else None,
            "p50_added_us": s["p50_us"] - base["p50_us"] if base else None,
        })
    return rows


def first_event_table(first_events):
    """Time to first event, each against router mode's direct path."""
    if not first_events:
        return "(not measured: --stream-samples 0)"
    direct = first_events.get("stream-router-direct")
    lines = ["| path | first event p50 | p90 | p99 | samples | p50 over router direct | Envoy CPU per stream |",
             "|---|---|---|---|---|---|---|"]
    for name, r in first_events.items():
        over = f"{r['p50_ms'] - direct['p50_ms']:+.2f} ms" if direct else "-"
        p99 = f"{r['p99_ms']:.2f} ms" if "p99_ms" in r else "-"
        cpu = f"{r['cpu_us']:.0f} us" if "cpu_us" in r else "-"
        lines.append(f"| {name} | {r['p50_ms']:.2f} ms | {r['p90_ms']:.2f} ms | {p99} | {r.get('samples', '-')} "
                     f"| {over} | {cpu} |")
    return "\n".join(lines)


def report(summary, first_events, args, cores, elapsed):
    rows = ratios(summary)
    wasm_size = WASM.stat().st_size
    header = ("| configuration | req/s (32 conn) | vs no wasm | vs do-nothing wasm | p50 (1 conn) | p99 (1 conn) "
              "| p50 added vs no wasm | Envoy CPU / req | Envoy RSS |")
    lines = [header, "|" + "---|" * 9]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['name']} | {r['rps']:.0f} | {fmt(r['vs_nowasm'], '.2f')} | {fmt(r['vs_noop'], '.2f')} "
                     f"| {r['p50_us']:.0f} us | {r['p99_us']:.0f} us | {fmt(r['p50_added_us'], '+.0f')} us "
                     f"| {r['cpu_us']:.0f} us | {r['rss_mib']:.1f} MiB |")
    table = "\n".join(lines)
    streams = first_event_table(first_events)
    print()
    print(table)
    print()
    print(streams)
    print(f"\n.wasm: {wasm_size} bytes; {args.rounds} rounds; {elapsed:.0f} s")
    out = {"rows": rows, "wasm_bytes": wasm_size, "rounds": args.rounds, "seconds": args.seconds,
           "latency_seconds": args.latency_seconds, "cores": cores, "elapsed_s": elapsed,
           "first_event": first_events, "stream_samples": args.stream_samples}
    (ROOT / "bench" / "results.json").write_text(json.dumps(out, indent=1))
    if args.no_report:
        return
    chart(rows)
    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (ROOT / "bench" / "BENCHMARKS.head.md").read_text().format(
        table=table, streams=streams, stream_samples=args.stream_samples * args.rounds, cores=cores, cpu=cpu, wasm=wasm_size,
        wasm_verdict="met" if wasm_size <= 200_000 else f"not met: {wasm_size - 200_000:+} bytes (router mode, hedging, stream watching, error classes)", rounds=args.rounds, seconds=args.seconds,
        latency_seconds=args.latency_seconds, elapsed=f"{elapsed:.0f}",
        envoy=subprocess.run([envoy_bin(), "--version"], capture_output=True, text=True).stdout.split("version:")[-1].strip())
    (ROOT / "BENCHMARKS.md").write_text(text)
    print("wrote BENCHMARKS.md and bench/ratios.png")


def chart(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    x = range(len(names))
    w = 0.38
    a = ax.bar([i - w / 2 for i in x], [r["vs_nowasm"] or 0 for r in rows], w, label="vs no wasm")
    b = ax.bar([i + w / 2 for i in x], [r["vs_noop"] or 0 for r in rows], w, label="vs do-nothing wasm")
    for bars in (a, b):
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("throughput ratio (32 connections)")
    ax.set_title("llm-failover: Envoy throughput relative to no filter and to a do-nothing wasm filter")
    ax.legend(loc="lower left")
    ax.set_ylim(0, 1.15)
    fig.tight_layout()
    fig.savefig(ROOT / "bench" / "ratios.png")


if __name__ == "__main__":
    main()
