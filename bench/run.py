"""`make bench`: llm-failover against Envoy without it, in one run.

Configurations (each its own Envoy, `--concurrency 1`, pinned to one core):
  no-wasm        plain Envoy routing to the upstream
  noop-wasm      a wasm filter that does nothing (bench/noop): the floor of any wasm filter
  no-wasm-100k, noop-wasm-100k   the same two with the 100 KB body
  floor-routing  the host calls passthrough needs, with no logic (bench/noop "routing")
  floor-rewrite, floor-rewrite-100k   the host calls override-2k/-100k need, no logic
  passthrough    llm-failover, one group, one passthrough provider, no model override
  override-2k    llm-failover, two groups, model override, 2 KB body
  override-100k  the same with a 100 KB body
  failover       the primary answers 429 (Retry-After: 0), each request fails over within itself

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import LOOPBACK, WASM, envoy_bin, free_port, http, stop_process, wait_until  # noqa: E402

NOOP_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "noop_filter.wasm"
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


def provider(name, cluster_name, path, model=None):
    p = {"name": name, "cluster": cluster_name, "path": path}
    if model:
        p["openai"] = {"model": model}
    return p


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

    def make(routes, filters):
        return lambda port, admin: bootstrap(admin, [listener(port, routes, filters)], clusters)

    return {
        "no-wasm": (make(direct, []), 2048),
        "noop-wasm": (make(direct, [wasm_filter(NOOP_WASM, None)]), 2048),
        "no-wasm-100k": (make(direct, []), 100 * 1024),
        "noop-wasm-100k": (make(direct, [wasm_filter(NOOP_WASM, None)]), 100 * 1024),
        "floor-routing": (make(by_header, [wasm_filter(NOOP_WASM, "routing")]), 2048),
        "floor-rewrite": (make(by_header, [wasm_filter(NOOP_WASM, "rewrite")]), 2048),
        "floor-rewrite-100k": (make(by_header, [wasm_filter(NOOP_WASM, "rewrite")]), 100 * 1024),
        "passthrough": (make(by_header, [wasm_filter(WASM, one)]), 2048),
        "override-2k": (make(by_header, [wasm_filter(WASM, two_groups)]), 2048),
        "override-100k": (make(by_header, [wasm_filter(WASM, two_groups)]), 100 * 1024),
        "failover": (make(by_header, [wasm_filter(WASM, failing)]), 2048),
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
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="length of each throughput run (<= 10)")
    ap.add_argument("--latency-seconds", type=int, default=2, help="length of each 1-connection run (<= 10)")
    ap.add_argument("--only", nargs="*", help="run only these configurations")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md and the chart")
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
            if name == "failover" and headers.get("x-llm-provider") != "fallback":
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
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report(summary, args, cores, elapsed)


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


def report(summary, args, cores, elapsed):
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
    print()
    print(table)
    print(f"\n.wasm: {wasm_size} bytes; {args.rounds} rounds; {elapsed:.0f} s")
    out = {"rows": rows, "wasm_bytes": wasm_size, "rounds": args.rounds, "seconds": args.seconds,
           "latency_seconds": args.latency_seconds, "cores": cores, "elapsed_s": elapsed}
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
        table=table, cores=cores, cpu=cpu, wasm=wasm_size, rounds=args.rounds, seconds=args.seconds,
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
