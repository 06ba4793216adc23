"""`make soak`: does llm-failover ever lose a request? A bounded soak with faults.

Envoy (`--concurrency 2`, the filter in router mode, dispatch mode, and router mode with
`hedgeAfter: 400ms` ("hedge", the slow fault six times as likely)) in front of two
providers served by this script on loopback:
  primary   flaps at random between healthy and one fault at a time: 429 with
            Retry-After, with a reset header only, or bare; 503; a reset connection; an
            answer slower than the attempt timeout; and the error classes with their
            providers' bodies: OpenAI's insufficient_quota 429, Anthropic's 529
            overloaded_error, a context_length_exceeded 400 (not in dispatch mode). Every few seconds it also closes its
            listener for a short window (connections refused) and drops its keep-alive
            connections.
  fallback  always healthy.
Clients (64 threads by default, keep-alive, bounded in count and time) send 2 KB chat
bodies, each with its own id (header and body). Every provider checks that a request
carries its own model and key and nobody else's, and records the ids it executed.

Counts: answered 200, lost (anything else, or an answer for another request), executed
by two providers (apart from slow attempts Envoy abandoned, and hedged requests, which
go to both by design), provider got another's model
or key, VM reloads, Envoy's memory, the breaker state at the end and how long the primary
takes to get traffic back once it heals. Writes SOAK.md (and tests/soak/results.json) unless --no-report.
Exit status 1 when any count that must be 0 is not."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import random
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import LOOPBACK, Envoy, free_port, wait_until  # noqa: E402

KEYS = {"primary": "sk-soak-primary", "fallback": "sk-soak-fallback"}
MODELS = {"primary": "primary-model", "fallback": "fallback-model"}
ATTEMPT_TIMEOUT_S = 2.0
SLOW_S = 3.0  # slower than the attempt timeout: Envoy abandons the attempt
HEDGE_AFTER_MS = 400
# The primary's regimes, switched at random every 0.3-1.5 s: healthy (half the time), or
# one kind of fault, which then meets 80% of its requests (the rest get a 200).
# The error classes (quota, overloaded, context length) come with their providers'
# documented bodies.
FAULTS = [("429-retry-after", 3), ("429-reset-header", 2), ("429-bare", 2), ("503", 3), ("reset", 2), ("slow", 1),
          ("429-quota", 1), ("529-overloaded", 2), ("400-context", 2)]
# Hedge mode meets the slow primary more often (what hedges are for).
HEDGE_FAULTS = [(f, 6 if f == "slow" else w) for f, w in FAULTS]
# Dispatch mode judges its routed attempt by status alone: a context-length 400 goes
# back to the client there (docs/configuration.md), so it is not in that mix.
DISPATCH_FAULTS = [(f, w) for f, w in FAULTS if f != "400-context"]
ERROR_BODIES = {
    "429-quota": {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                            "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}},
    "529-overloaded": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    "400-context": {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                         "messages resulted in 9013 tokens.", "type": "invalid_request_error",
                              "param": "messages", "code": "context_length_exceeded"}},
}


class Provider:
    """One provider on a loopback port (asyncio, HTTP/1.1 keep-alive, chunked bodies)."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, flapping: bool, seed: int):
        self.name, self.loop, self.flapping = name, loop, flapping
        self.rng = random.Random(seed)
        self.port = free_port()
        self.executed: dict[str, str] = {}  # id -> "ok" | "slow"
        self.received: dict[str, int] = {}  # id -> requests with it (never more than 1)
        self.outcomes: dict[str, int] = {}
        self.violations: list[str] = []
        # Open connections, and the id whose answer each last wrote (until the next
        # request on it shows Envoy read that answer).
        self.writers: dict[asyncio.StreamWriter, str | None] = {}
        self.server = None
        self.healed = False
        self.regime = "ok"

    async def start(self):
        self.server = await asyncio.start_server(self.serve, LOOPBACK, self.port, backlog=512)

    async def close_window(self, seconds: float):
        """Refuses connections for `seconds` and drops every open connection."""
        self.server.close()
        for w, rid in list(self.writers.items()):
            if rid is not None and self.executed.get(rid) == "ok":
                # Its answer may not have reached Envoy: then sending it on was right.
                self.executed[rid] = "dropped"
            w.transport.abort()
        await self.server.wait_closed()
        await asyncio.sleep(seconds)
        await self.start()

    async def read_request(self, reader):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = b""
        return lines[0], headers, body

    def check(self, headers, body) -> str:
        """The request's id; records what is not this provider's."""
        try:
            doc = json.loads(body)
        except ValueError:
            self.violations.append(f"{self.name}: body is not JSON")
            return "?"
        rid = headers.get("x-soak-id", "?")
        if doc.get("user") != f"soak-{rid}":
            self.violations.append(f"{self.name}: id {rid} header and body disagree")
        if doc.get("model") != MODELS[self.name]:
            self.violations.append(f"{self.name}: id {rid} got model {doc.get('model')!r}")
        mine = f"Bearer {KEYS[self.name]}" if self.name == "primary" else KEYS[self.name]
        got = headers.get("authorization") if self.name == "primary" else headers.get("api-key")
        if got != mine:
            self.violations.append(f"{self.name}: id {rid} without its own key")
        others = [k for k in KEYS.values() if k != KEYS[self.name]]
        if any(o in v for o in others for v in headers.values()):
            self.violations.append(f"{self.name}: id {rid} carried another provider's key")
        return rid

    async def serve(self, reader, writer):
        self.writers[writer] = None
        try:
            while True:
                try:
                    _, headers, body = await self.read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                self.writers[writer] = None
                if writer.transport.is_closing():
                    return  # dropped by a window while the request sat in the buffer
                rid = self.check(headers, body)
                self.received[rid] = self.received.get(rid, 0) + 1
                outcome = "ok"
                if self.flapping and not self.healed and self.regime != "ok" and self.rng.random() < 0.8:
                    outcome = self.regime
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if outcome == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if outcome == "slow":
                    await asyncio.sleep(SLOW_S)
                status, extra = {
                    "ok": (200, []), "slow": (200, []),
                    "429-retry-after": (429, [("retry-after", str(self.rng.choice([0, 1])))]),
                    "429-reset-header": (429, [("x-ratelimit-reset-requests", "300ms"),
                                               ("x-ratelimit-remaining-requests", "0")]),
                    "429-bare": (429, []), "503": (503, []),
                    "429-quota": (429, []), "529-overloaded": (529, []), "400-context": (400, []),
                }[outcome]
                if status == 200:
                    self.executed[rid] = outcome
                    payload = json.dumps({"id": f"chatcmpl-{rid}", "object": "chat.completion", "model": MODELS[self.name],
                                          "choices": [{"index": 0, "message": {"role": "assistant", "content": self.name},
                                                       "finish_reason": "stop"}]}).encode()
                else:
                    payload = json.dumps(ERROR_BODIES.get(outcome) or
                                         {"error": {"message": outcome, "type": "requests", "code": outcome}}).encode()
                head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra)
                writer.write(head.encode() + b"\r\n" + payload)
                if status == 200:
                    self.writers[writer] = rid
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self.writers.pop(writer, None)
            writer.close()


def plugin(mode: str, primary_port: int, fallback_port: int) -> dict:
    return {"groups": [
        {"providers": [{"name": "primary", "cluster": "primary", "path": "/v1/chat/completions",
                        "endpoint": f"http://{LOOPBACK}:{primary_port}", "openai": {"model": MODELS["primary"]},
                        "contextWindow": 8192,
                        "policies": {"auth": {"key": {"env": "SOAK_PRIMARY_KEY"}}}}]},
        {"providers": [{"name": "fallback", "cluster": "fallback", "path": "/v1/chat/completions",
                        "endpoint": f"http://{LOOPBACK}:{fallback_port}", "openai": {"model": MODELS["fallback"]},
                        "contextWindow": 128000,
                        "policies": {"auth": {"key": {"env": "SOAK_FALLBACK_KEY", "header": "api-key"}}}}]}],
        "failover": {"mode": "dispatch" if mode == "dispatch" else "router", "defaultCooldown": "100ms",
                     "maxCooldown": "1s", "probeTimeout": "2s", "attemptTimeout": f"{int(ATTEMPT_TIMEOUT_S * 1000)}ms",
                     # "hedge": router mode, and a request without an answer after 400 ms
                     # (a slow primary, or a busy one) is also sent to the fallback.
                     **({"hedgeAfter": f"{HEDGE_AFTER_MS}ms"} if mode in ("hedge", "native-hedge") else {})}}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def providers_process(pipe, seed: int, tempo: float, faults: list):
    """The providers, in a process of their own (the clients' threads would otherwise
    starve them of the GIL and look like slow providers). Commands on `pipe`: "heal",
    "stop", "report"."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    primary = Provider("primary", loop, flapping=True, seed=seed)
    fallback = Provider("fallback", loop, flapping=False, seed=seed + 1)
    for p in (primary, fallback):
        asyncio.run_coroutine_threadsafe(p.start(), loop).result(10)
    stop = threading.Event()

    def windows():
        rng = random.Random(seed + 2)
        while not stop.wait(rng.uniform(2, 6) * tempo):
            asyncio.run_coroutine_threadsafe(primary.close_window(rng.uniform(0.2, 0.8) * tempo), loop).result(10)

    def regimes():
        rng = random.Random(seed + 3)
        # A fault first, so even a short run meets one: the mix's most likely (hedge
        # mode's slow primary).
        first = max(faults, key=lambda f: f[1])[0]
        healthy = False
        while True:
            primary.regime = first if first else "ok" if healthy else \
                rng.choices([f for f, _ in faults], [w for _, w in faults])[0]
            first = None
            if stop.wait(rng.uniform(0.3, 1.5) * tempo):
                return
            healthy = rng.random() < 0.5

    pipe.send((primary.port, fallback.port))
    while True:
        command = pipe.recv()
        if command == "start":
            threading.Thread(target=windows, daemon=True).start()
            threading.Thread(target=regimes, daemon=True).start()
        elif command == "heal":
            stop.set()
            primary.healed = True
        elif command == "report":
            pipe.send({name: {"executed": p.executed, "violations": p.violations, "outcomes": p.outcomes,
                              "repeated": sorted(rid for rid, n in p.received.items() if n > 1 and rid != "heal")}
                       for name, p in (("primary", primary), ("fallback", fallback))})
            return


def run_mode(mode: str, requests: int, clients: int, max_seconds: float, seed: int, tempo: float,
             pace: float = 0.0) -> dict:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=providers_process, args=(child, seed, tempo, {"hedge": HEDGE_FAULTS, "native-hedge": HEDGE_FAULTS, "dispatch": DISPATCH_FAULTS}.get(mode, FAULTS)),
                                   daemon=True)
    proc.start()
    primary_port, fallback_port = parent.recv()
    env = {"SOAK_PRIMARY_KEY": KEYS["primary"], "SOAK_FALLBACK_KEY": KEYS["fallback"]}
    clusters = {"primary": primary_port, "fallback": fallback_port}
    # "native", "native-hedge": router mode with the native module (Envoy 1.40 dynamic
    # modules), the second with hedging.
    envoy = Envoy(plugin(mode, primary_port, fallback_port), clusters, env=env, router=(mode != "dispatch"),
                  route_timeout="30s", native=mode.startswith("native"))
    counts = {"sent": 0, "ok": 0, "lost": 0, "by_primary": 0, "by_fallback": 0}
    lost_examples: list[str] = []
    lock = threading.Lock()
    pad = "x" * 1900
    deadline = time.monotonic() + max_seconds
    next_id = iter(range(requests))

    def client(_):
        conn = None
        for rid in next_id:
            if time.monotonic() > deadline:
                return
            if pace:
                time.sleep(pace)  # think time of a client, spreads a short run over the faults
            body = json.dumps({"model": "client-model", "user": f"soak-{rid}",
                               "messages": [{"role": "user", "content": pad}]})
            result = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(LOOPBACK, envoy.port, timeout=30)
                conn.request("POST", "/v1/chat/completions", body,
                             {"content-type": "application/json", "x-soak-id": str(rid),
                              "authorization": "Bearer client-token"})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    result = f"{rid}: {r.status} from {r.getheader('x-llm-provider')}: {data[:120]!r}"
                elif json.loads(data).get("id") != f"chatcmpl-{rid}":
                    result = f"{rid}: answer of another request: {data[:120]!r}"
                provider = r.getheader("x-llm-provider")
            except (OSError, http.client.HTTPException, ValueError) as e:
                result, provider = f"{rid}: {type(e).__name__}: {e}", None
                conn = None
            with lock:
                counts["sent"] += 1
                if result is None:
                    counts["ok"] += 1
                    counts["by_" + provider] += 1
                else:
                    counts["lost"] += 1
                    if len(lost_examples) < 10:
                        lost_examples.append(result)

    try:
        # Warm up, then take Envoy's memory as the baseline.
        with ThreadPoolExecutor(clients) as pool:
            start = time.monotonic()
            rss_start = None
            parent.send("start")
            futures = [pool.submit(client, i) for i in range(clients)]
            while not all(f.done() for f in futures):
                time.sleep(0.5)
                if rss_start is None and counts["sent"] >= min(2000, requests // 10):
                    rss_start = rss_kib(envoy.proc.pid)
            for f in futures:
                f.result()
            elapsed = time.monotonic() - start
        rss_end = rss_kib(envoy.proc.pid)
        breaker_at_end = {p["name"]: p["state"] for p in envoy.health()["providers"]}
        # The primary heals: how long until it has traffic again.
        parent.send("heal")
        healed_at = time.monotonic()

        def primary_back():
            conn = http.client.HTTPConnection(LOOPBACK, envoy.port, timeout=10)
            body = json.dumps({"model": "m", "user": "soak-heal", "messages": []})
            conn.request("POST", "/v1/chat/completions", body,
                         {"content-type": "application/json", "x-soak-id": "heal"})  # not counted
            r = conn.getresponse()
            r.read()
            conn.close()
            return r.status == 200 and r.getheader("x-llm-provider") == "primary"

        wait_until(primary_back, 10, "the primary to get traffic back", interval=0.05)
        recovery_s = time.monotonic() - healed_at
        log = envoy.log()
        access = envoy.access_log.read_text() if envoy.access_log.exists() else ""
        stats = envoy.stats()
        parent.send("report")
        seen = parent.recv()
    finally:
        envoy.stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    primary, fallback = seen["primary"], seen["fallback"]
    # How the primary's 200s went, for the requests the fallback executed too.
    also_served = [how for rid, how in primary["executed"].items()
                   if rid in fallback["executed"] and not rid.startswith("heal")]
    both = [rid for rid, how in primary["executed"].items()
            if how == "ok" and rid in fallback["executed"] and not rid.startswith("heal")]
    # A hedged request is sent to both providers by design (its access log says so).
    hedged = set()
    for line in access.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("hedge") and entry.get("soak_id"):
            hedged.add(entry["soak_id"])
    twice = sorted(rid for rid in both if rid not in hedged)
    abandoned, dropped = also_served.count("slow"), also_served.count("dropped")
    configured = log.count("llm-failover: configured")
    twice_log = [l for l in access.splitlines() if any(f'"soak_id":"{t}"' in l for t in twice[:3])]
    return {
        "mode": mode, "clients": clients, "requests": counts["sent"], "seconds": round(elapsed, 1),
        "answered_200": counts["ok"], "lost": counts["lost"], "lost_examples": lost_examples,
        "served_by_primary": counts["by_primary"], "served_by_fallback": counts["by_fallback"],
        "executed_twice": len(twice), "executed_twice_examples": twice[:10], "executed_twice_log": twice_log,
        "abandoned_slow_attempts_also_served": abandoned,
        "hedged_requests": len(hedged), "hedged_also_served": len(both) - len(twice),
        "dropped_answers_also_served": dropped,
        # One provider asked twice for one request (the router never retries a provider;
        # a hedge never goes to one the router reached).
        "same_provider_twice": len(primary["repeated"]) + len(fallback["repeated"]),
        "same_provider_twice_examples": (primary["repeated"] + fallback["repeated"])[:10],
        "wrong_model_or_key": len(primary["violations"]) + len(fallback["violations"]),
        "violation_examples": (primary["violations"] + fallback["violations"])[:10],
        "primary_outcomes": primary["outcomes"],
        # FAIL_RELOAD's counters, per plugin (`wasm.<plugin>.vm_reload`).
        "vm_reloads": sum(v for k, v in stats.items() if k.startswith("wasm.") and k.endswith(".vm_reload")),
        "configured_lines": configured,
        # A wasm panic prints "panicked at"; the native module's hooks catch theirs and log it.
        "panics": log.count("panicked at") + log.count("a panic in"),
        "envoy_rss_mib_start": round((rss_start or rss_end) / 1024, 1), "envoy_rss_mib_end": round(rss_end / 1024, 1),
        "breaker_at_end": breaker_at_end, "recovery_s": round(recovery_s, 2),
        "upstream_cx_connect_fail_primary": stats.get("cluster.primary.upstream_cx_connect_fail", 0),
        "primary_cluster_stats": {k.split(".", 2)[2]: v for k, v in stats.items()
                                  if k.startswith("cluster.primary.upstream_rq_") or k.startswith("cluster.primary.upstream_cx_destroy")
                                  or k.startswith("cluster.primary.retry")},
    }


MUST_BE_ZERO = ("lost", "executed_twice", "same_provider_twice", "wrong_model_or_key", "vm_reloads", "panics")


def report(results: list[dict], path: Path):
    rows = [
        ("requests (64+ clients, 2 KB bodies)", "requests"), ("seconds", "seconds"),
        ("answered 200", "answered_200"), ("lost", "lost"),
        ("served by the primary / the fallback", None),
        ("executed by two providers", "executed_twice"),
        ("sent to one provider twice", "same_provider_twice"),
        ("slow attempts abandoned by Envoy and served again (allowed)", "abandoned_slow_attempts_also_served"),
        ("requests hedged (hedge mode)", "hedged_requests"),
        ("hedged requests executed by both providers (allowed: what a hedge costs)", "hedged_also_served"),
        ("answers lost with a dropped connection and served again (allowed)", "dropped_answers_also_served"),
        ("a provider got another's model or key", "wrong_model_or_key"),
        ("VM reloads (FAIL_RELOAD)", "vm_reloads"), ("panics in the log", "panics"),
        ("Envoy RSS after warm-up / at the end (MiB)", None),
        ("primary's refused connections (Envoy's connect failures)", "upstream_cx_connect_fail_primary"),
        ("breaker at the end", None), ("primary back after it healed (s)", "recovery_s"),
    ]
    lines = ["| | " + " | ".join(r["mode"] + " mode" for r in results) + " |", "|---|" + "---|" * len(results)]
    for label, key in rows:
        cells = []
        for r in results:
            if key:
                cells.append(str(r.get(key, "-")))
            elif label.startswith("served"):
                cells.append(f"{r['served_by_primary']} / {r['served_by_fallback']}")
            elif label.startswith("Envoy RSS"):
                cells.append(f"{r['envoy_rss_mib_start']} / {r['envoy_rss_mib_end']}")
            else:
                cells.append(", ".join(f"{k} {v}" for k, v in r["breaker_at_end"].items()))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    outcomes = "\n".join(f"- {r['mode']} mode: " + ", ".join(f"{k} {v}" for k, v in sorted(r["primary_outcomes"].items()))
                         for r in results)
    text = f"""# Soak with faults

Made by `make soak` (`tests/soak/soak.py`). Envoy 1.40 with `--concurrency 2` and the
built filter, in front of two loopback providers run by the soak itself. The primary
flaps at random: every 0.3-1.5 s it is healthy (half the time) or takes up one fault,
which then meets 80% of its requests: 429 with `Retry-After` (0 or 1), 429 with only a
reset header, bare 429, 503, a reset connection, an answer slower than `attemptTimeout`
= {ATTEMPT_TIMEOUT_S} s, OpenAI's `insufficient_quota` 429, Anthropic's 529 `overloaded_error`,
and a `context_length_exceeded` 400 that only the fallback's larger `contextWindow` takes
(router and hedge mode: dispatch mode judges its first attempt by status alone). Every 2-6 s it also closes its listener for 0.2-0.8 s and drops its
keep-alive connections. The fallback is healthy. Every request carries its own id; each provider checks that it got
its own model and key, and records the ids it executed. *Hedge mode* is router mode with
`hedgeAfter: {HEDGE_AFTER_MS}ms`, and the slow fault six times as likely. *Native mode* is
router mode with the native module (`render --native`) in place of the `.wasm`.

{chr(10).join(lines)}

What the primary answered:
{outcomes}

*Lost*: any answer other than 200, a connection error, or the answer of another request.
*Executed by two providers*: an id the primary answered 200 and the fallback executed
too, apart from the primary's slow answers that came after Envoy had given up on them
(those requests were rightly sent on; the primary's late work is wasted, not doubled for
the client), and apart from answers written on a connection the primary then dropped
before Envoy read them (Envoy saw a reset, not an answer). In dispatch mode the routed
attempt waits for the route timeout (30 s here), not `attemptTimeout`, so the primary's
slow answers are served, not abandoned. A hedged request (its access log has `hedge`)
goes to both providers by design: counted apart, as what hedging costs. *VM reloads*: Envoy's `wasm.<plugin>.vm_reload` counters.
"""
    path.write_text(text)
    (ROOT / "tests" / "soak" / "results.json").write_text(json.dumps(results, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=450_000, help="per mode")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=240, help="per mode; the run stops there")
    ap.add_argument("--modes", nargs="+", default=["router", "dispatch", "hedge", "native", "native-hedge"],
                    choices=["router", "dispatch", "hedge", "native", "native-hedge"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pace", type=float, default=0.0, help="seconds each client waits between requests")
    ap.add_argument("--tempo", type=float, default=1.0,
                    help="scales the fault timings (regimes, refused windows); < 1 for short runs")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rewrite SOAK.md from tests/soak/results.json")
    args = ap.parse_args()
    if not (1 <= args.max_seconds <= 600):
        ap.error("each mode is bounded to 600 s")
    if args.report_only:
        report(json.loads((ROOT / "tests" / "soak" / "results.json").read_text()), ROOT / "SOAK.md")
        return 0
    results = []
    for mode in args.modes:
        r = run_mode(mode, args.requests, args.clients, args.max_seconds, args.seed, args.tempo, args.pace)
        print(json.dumps(r), flush=True)
        results.append(r)
    if not args.no_report:
        report(results, ROOT / "SOAK.md")
    bad = [(r["mode"], k, r[k]) for r in results for k in MUST_BE_ZERO if r[k]]
    short = [(r["mode"], r["requests"]) for r in results if r["requests"] < args.requests]
    if bad or short:
        print(f"soak FAILED: {bad} {'; stopped early: ' + str(short) if short else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
