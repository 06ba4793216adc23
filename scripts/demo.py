"""The local demo (`make demo`): the reference lab's failover, replayed on loopback
with real Envoy, the built filter and two mock providers.

  group 1: mock-ratelimit-provider, always answers 429 (Retry-After: 5)
  group 2: openai-fallback, an OpenAI-style mock that wants the injected key

It sends the lab's three requests, shows the access log, heals the primary, waits
out its cooldown and shows traffic back on it; then breaks the primary again and
streams an answer through the failover, event by event. From the lab's requests
until the primary is back, a background client sends a small request every 125 ms,
and at the end scripts/timeline.py draws those seconds from the access log as a
picture (timeline.png in the demo's directory). Then it stops everything it started.

`--native` (`make demo BUILD=native`): the same with the native module (Envoy 1.40's
dynamic modules) in place of the .wasm, from `llm-failover render --native`."""

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import timeline

ROOT = Path(__file__).resolve().parents[1]
ENVOY = ROOT / ".venv" / "bin" / "envoy"
MOCK = ROOT / "target" / "release" / "llm-mock"
NATIVE = "--native" in sys.argv[1:]
CONFIG = ROOT / "envoy" / ("envoy-native.yaml" if NATIVE else "envoy.yaml")
GATEWAY = "http://127.0.0.1:10000/openai"
ADMIN = "http://127.0.0.1:9901"
HEALTH = "http://127.0.0.1:9902/llm-failover/health"
PORTS = {"Envoy listener": 10000, "Envoy admin": 9901, "Envoy ops listener": 9902, "primary mock": 8000,
         "fallback mock": 8001, "second Envoy (step 7)": 10010, "its admin": 9911, "its ops listener": 9912,
         "third Envoy (step 7)": 10020, "its admin ": 9921, "its ops listener ": 9922}
RENDER = ROOT / "target" / "release" / "llm-failover"
SLOW_S = 10  # the primary's answer time in step 7
DEMO_KEY = "sk-demo-fallback-key"
RETRY_AFTER = 5  # the lab uses 60; 5 keeps the demo short
CHUNK_DELAY_MS = 150  # the fallback streams its events this far apart
BACKGROUND_EVERY_S = 0.125  # the background client's pace: 4 requests in each of the timeline's bars
TIMELINE_BIN_S = 0.5  # the timeline's bars: wide enough that steady traffic looks steady
RECOVERY_TAIL_S = 1.5  # it goes on this long after the primary is back, so the picture shows traffic return
# Hard limits on the background client whatever happens to the demo: the demo needs
# about 7 s of it (Retry-After plus the tail).
BACKGROUND_MAX_REQUESTS = 200
BACKGROUND_MAX_S = 25.0
PRIMARY = "mock-ratelimit-provider"

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


def say(text=""):
    print(text, flush=True)


def port_busy(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def post(url, body, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_for(check, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out waiting for {what}")


class Gateway:
    """Requests through the main Envoy, counted: the access log gets one line for each,
    and the timeline waits until it has them all (Envoy writes it every 200 ms)."""

    def __init__(self):
        self._lock = threading.Lock()  # the background client counts from its thread
        self._sent = 0

    def count(self):
        with self._lock:
            self._sent += 1

    @property
    def sent(self):
        with self._lock:
            return self._sent

    def post(self, body, timeout=30):
        self.count()
        return post(GATEWAY, body, timeout)


GATEWAY_REQUESTS = Gateway()


class Background(threading.Thread):
    """A client sending a small request every BACKGROUND_EVERY_S until stop(), so that
    the timeline has steady traffic to show moving to the fallback and back. It prints
    nothing (the demo's lines are its foreground requests'); it keeps what it got for
    step 5 and the summary. It stops by itself after BACKGROUND_MAX_REQUESTS requests or
    BACKGROUND_MAX_S seconds."""

    def __init__(self):
        super().__init__(name="demo-background", daemon=True)
        self._halt = threading.Event()  # not _stop: Thread has a method of that name
        self._lock = threading.Lock()
        self._answers = []  # (time.monotonic() when sent, status or None, provider or the error)
        self.stopped_at = None  # time.time() when it stopped: the timeline's end

    def run(self):
        began = time.monotonic()
        n = 0
        # The first request waits one interval too: by then the lab's three requests are
        # in the access log, as its first three lines (step 4 shows those).
        while n < BACKGROUND_MAX_REQUESTS and not self._halt.wait(
                max(0.0, began + (n + 1) * BACKGROUND_EVERY_S - time.monotonic())):
            if time.monotonic() - began >= BACKGROUND_MAX_S:
                break
            n += 1
            sent = time.monotonic()
            try:
                status, headers, _ = GATEWAY_REQUESTS.post(
                    {"model": "", "messages": [{"role": "user", "content": "ping"}]}, timeout=5)
                answer = (sent, status, headers.get("x-llm-provider", "?"))
            except (OSError, http.client.HTTPException) as e:
                answer = (sent, None, f"{type(e).__name__}: {e}")
            with self._lock:
                self._answers.append(answer)
        self.stopped_at = time.time()

    def answers(self):
        with self._lock:
            return list(self._answers)

    def first_200_from(self, provider):
        """When (time.monotonic()) the first request the provider answered with 200 was
        sent, or None."""
        return next((sent for sent, status, who in self.answers() if status == 200 and who == provider), None)

    def stop(self):
        self._halt.set()
        self.join(10)


def request(n):
    status, headers, body = GATEWAY_REQUESTS.post(
        {"model": "", "messages": [{"role": "user", "content": "What is 2+2?"}]})
    provider = headers.get("x-llm-provider", "?")
    colour = GREEN if status == 200 else RED
    try:
        parsed = json.loads(body)
        detail = parsed["choices"][0]["message"]["content"] if status == 200 else parsed["error"]["message"]
        model = parsed.get("model", "")
    except (ValueError, KeyError, IndexError):
        detail, model = body[:80].decode(errors="replace"), ""
    say(f"  Request {n}: {colour}HTTP {status}{RESET} from {BOLD}{provider}{RESET}"
        f"{f' (model {model})' if model else ''}: {detail}")
    return status, provider


def stream(n):
    """A streamed request (as the OpenAI SDK sends it with stream=True); prints each
    event as it arrives, with the time since the request was sent."""
    body = json.dumps({"model": "", "stream": True,
                       "messages": [{"role": "user", "content": "What is 2+2?"}]})
    conn = http.client.HTTPConnection("127.0.0.1", 10000, timeout=30)
    GATEWAY_REQUESTS.count()
    start = time.monotonic()
    conn.request("POST", "/openai", body, {"content-type": "application/json"})
    r = conn.getresponse()
    provider = r.getheader("x-llm-provider", "?")
    say(f"  Request {n} (streamed): HTTP {r.status} from {BOLD}{provider}{RESET}")
    times = []
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        at = (time.monotonic() - start) * 1000
        data = line[len("data: "):]
        if data == "[DONE]":
            say(f"    {at:6.0f} ms  [DONE]")
            break
        times.append(at)
        delta = json.loads(data)["choices"][0]["delta"].get("content", "")
        say(f"    {at:6.0f} ms  event {len(times)}: {delta!r}")
    conn.close()
    return r.status, provider, times


def main():
    for what in (ENVOY, MOCK):
        if not what.exists():
            raise SystemExit(f"demo: {what} is missing; run `make demo` (it builds and installs first)")
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("demo: matplotlib is missing (the timeline at the end is drawn with it); run `make demo`,"
                         " which installs it into .venv (scripts/setup.sh)")
    busy = [f"{name} ({port})" for name, port in PORTS.items() if port_busy(port)]
    if busy:
        raise SystemExit(f"demo: these loopback ports are in use: {', '.join(busy)}; stop what uses them")

    workdir = Path(tempfile.mkdtemp(prefix="llm-failover-demo-"))
    procs = []
    background = Background()

    def start(args, log, env=None):
        p = subprocess.Popen(args, stdout=open(workdir / log, "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        procs.append(p)
        return p

    def stop_all(*_):
        if background.is_alive():
            background.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
        version = version.split("version:")[-1].strip().split("/")
        version = version[1] if len(version) > 2 else "(version unknown)"
        say(f"{BOLD}llm-failover demo{RESET}: Envoy {version} with the filter, two mock providers, all on 127.0.0.1")
        say("Step 1  start the providers")
        start([str(MOCK), "--name", "mock-gpt-4o", "--model", "mock-gpt-4o", "--port", "8000",
               "--failure-injection-rate", "100", "--failure-types", "rate_limit",
               "--retry-after", str(RETRY_AFTER)], "primary.log")
        start([str(MOCK), "--name", "openai", "--model", "gpt-4o-mini", "--port", "8001",
               "--api-key", DEMO_KEY, "--chunk-delay-ms", str(CHUNK_DELAY_MS)], "fallback.log")
        for port in (8000, 8001):
            wait_for(lambda: get(f"http://127.0.0.1:{port}/mock/healthz")[0] == 200, 10, f"mock on {port}")
        say(f"  primary  mock-gpt-4o on :8000, answers every request with 429 and Retry-After: {RETRY_AFTER}")
        say("  fallback openai-style mock on :8001, accepts only the key the gateway injects")

        build = "the native module" if NATIVE else "the .wasm"
        say(f"Step 2  start Envoy with envoy/{CONFIG.name} ({build}, --concurrency 2)")
        env = dict(os.environ, OPENAI_API_KEY=DEMO_KEY)
        # Envoy's own log to envoy.log; its stdout, the JSON access log only, to access.log
        # (so the reference lab's jq line reads it as it is).
        envoy = start([str(ENVOY), "-c", str(CONFIG), "--concurrency", "2", "--disable-hot-restart",
                       "-l", "warning", "--component-log-level", "wasm:info,dynamic_modules:info",
                       "--log-path", str(workdir / "envoy.log"),
                       "--file-flush-interval-msec", "200"], "access.log", env)
        wait_for(lambda: envoy.poll() is None and get(f"{ADMIN}/ready")[1].strip() == b"LIVE", 20, "Envoy")
        say("  Envoy is ready on http://127.0.0.1:10000")

        say(f"Step 3  the lab's three requests to {GATEWAY}")
        failed_at = time.monotonic()
        results = [request(n) for n in (1, 2, 3)]
        background.start()
        say(f"  {DIM}Request 1 met the primary's 429 and was sent on to the fallback inside the same request;"
            f" in the reference lab it fails.{RESET}")
        say(f"  {DIM}Requests 2 and 3 skipped the primary: it is cooling down for {RETRY_AFTER}s (Retry-After).{RESET}")
        say(f"  {DIM}From now until the primary is back, a background client sends a request every"
            f" {BACKGROUND_EVERY_S * 1000:.0f} ms (quietly: the timeline at the end shows them).{RESET}")

        say("Step 4  what Envoy logged: the filter's decisions and the access log (JSON lines)")
        access = workdir / "access.log"
        wait_for(lambda: sum(l.startswith("{") for l in access.read_text().splitlines()) >= 3, 10, "access log")
        # Envoy writes its own log on a timer of its own (--file-flush-interval-msec), so
        # the access log's lines are no sign the filter's are there.
        wait_for(lambda: "llm-failover: provider" in (workdir / "envoy.log").read_text(), 5, "the filter's log lines")
        for line in (workdir / "envoy.log").read_text().splitlines():
            if "llm-failover: provider" in line or "llm-failover: failing over" in line:
                say(f"  filter:     {line.split('llm-failover: ', 1)[-1]}")
        # The lab's three only: the background client's requests follow them.
        for line in access.read_text().splitlines()[:3]:
            e = json.loads(line)
            why = (f"tried {e['tried']}, failed over on {e['failover_reason']}" if e.get("tried")
                   else f"endpoint {e['endpoint']}")
            say(f"  access log: status {e['http.status']}  provider {e['provider']}  endpoint {e['endpoint']}"
                f"  {DIM}({why}){RESET}")
        say(f"  {DIM}The reference lab's own command works on it:{RESET}")
        say(f"  {DIM}jq 'select(.scope == \"request\") | {{status: .\"http.status\", endpoint: .endpoint}}' {access}{RESET}")

        say("Step 5  heal the primary and wait out its cooldown")
        post("http://127.0.0.1:8000/mock/config", {"failure_injection_rate": 0})
        # The background client's requests are the ones that find the primary back.
        back_at = wait_for(lambda: background.first_200_from(PRIMARY), RETRY_AFTER + 10,
                           "the primary to take traffic back")
        say(f"  the primary took traffic back {back_at - failed_at:.1f}s after it failed (its Retry-After was"
            f" {RETRY_AFTER}s); the first request after the cooldown probed it, and it answered")
        status, provider = request(4)
        time.sleep(max(0.0, back_at + RECOVERY_TAIL_S - time.monotonic()))
        background.stop()
        answers = background.answers()
        by = {}
        for _, code, who in answers:
            if code == 200:
                by[who] = by.get(who, 0) + 1
        failed = [(code, who) for _, code, who in answers if code != 200]
        quiet = bool(answers) and not failed
        say(f"  {DIM}The background client sent {len(answers)} requests, {len(answers) - len(failed)} answered 200"
            f" ({', '.join(f'{n} by {who}' for who, n in by.items())}).{RESET}")
        if failed:
            say(f"  {RED}{len(failed)} background requests were not answered 200: {failed[:3]}{RESET}")

        say("Step 6  the primary rate-limits again; a streamed answer through the failover")
        post("http://127.0.0.1:8000/mock/config", {"failure_injection_rate": 100})
        s_status, s_provider, times = stream(5)
        streamed = (s_status == 200 and s_provider == "openai-fallback" and len(times) >= 3
                    and times[-1] - times[0] >= CHUNK_DELAY_MS * (len(times) - 2))
        if times:
            say(f"  {DIM}The first event came {times[0]:.0f} ms after the request, the primary's 429 included; the"
                f" fallback's events then arrived one by one, {CHUNK_DELAY_MS} ms apart, as it sent them"
                f" (Envoy's own retry streams the winner).{RESET}")

        say(f"Step 7  the primary gets slow ({SLOW_S} s per answer); firstByteTimeout or hedgeAfter moves on")
        post("http://127.0.0.1:8000/mock/config", {"failure_injection_rate": 0, "latency_ms": SLOW_S * 1000})

        def variant(name: str, field: str, value: str, port: int):
            """Another Envoy from render of the same configuration plus `field`, and one
            request through it: whether the fallback answered it fast."""
            plugin = json.loads((ROOT / "envoy" / "llm-failover.json").read_text())
            plugin.setdefault("failover", {})[field] = value
            (workdir / f"{name}.json").write_text(json.dumps(plugin))
            rendered = subprocess.run([str(RENDER), "render", "--config", str(workdir / f"{name}.json"),
                                       "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port - 99}",
                                       "--ops", f"127.0.0.1:{port - 98}", *(["--native"] if NATIVE else [])],
                                      capture_output=True, text=True, cwd=ROOT, check=True)
            (workdir / f"{name}.yaml").write_text(rendered.stdout)
            say(f"  an Envoy from `llm-failover render` of the same configuration plus"
                f' "{field}": "{value}", on :{port}')
            proc = start([str(ENVOY), "-c", str(workdir / f"{name}.yaml"), "--concurrency", "2",
                          "--disable-hot-restart", "-l", "warning"], f"envoy-{name}.log", env)
            try:
                wait_for(lambda: proc.poll() is None
                         and get(f"http://127.0.0.1:{port - 99}/ready")[1].strip() == b"LIVE", 20, f"the {name} Envoy")
                asked = time.monotonic()
                s_status, s_headers, _ = post(f"http://127.0.0.1:{port}/openai",
                                              {"model": "", "messages": [{"role": "user", "content": "What is 2+2?"}]})
                took = time.monotonic() - asked
                provider = s_headers.get("x-llm-provider")
                ok = s_status == 200 and provider == "openai-fallback" and took < 3
                say(f"  {GREEN if ok else RED}HTTP {s_status}{RESET} from {BOLD}{provider}{RESET}"
                    f" after {took:.1f} s, instead of waiting {SLOW_S} s for the primary")
                return ok
            finally:
                proc.terminate()
                proc.wait(10)

        fast = variant("slow", "firstByteTimeout", "1s", 10010)
        say(f"  {DIM}The primary was abandoned after 1 s and counts one failure (reason timeout).{RESET}")
        hedged = variant("hedge", "hedgeAfter", "500ms", 10020)
        say(f"  {DIM}With hedgeAfter the fallback was asked too after 0.5 s; its answer won and the primary's"
            f" attempt was cancelled (its connection closed). A hedge makes two providers work on one"
            f" request: set it near your providers' p95 time to first byte.{RESET}")
        fast = fast and hedged
        post("http://127.0.0.1:8000/mock/config", {"latency_ms": 0})

        say("Step 8  the primary's error body decides what happens (error classes)")
        content_filter = {"error": {"message": "The response was filtered due to the prompt triggering Azure"
                                               " OpenAI's content management policy.", "type": None,
                                    "param": "prompt", "code": "content_filter", "status": 400}}
        quota = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                           "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
        post("http://127.0.0.1:8000/mock/config", {"failure_injection_rate": 100, "failure_status": 400,
                                                   "failure_body": json.dumps(content_filter)})

        def primary_state():
            view = json.loads(get(HEALTH)[1] or b"{}")
            return next((p["state"] for p in view.get("providers", []) if p["name"] == "mock-ratelimit-provider"),
                        None)

        # Step 6's 429 asked for 5 s: the next request after that probes the primary.
        wait_for(lambda: primary_state() in ("healthy", "half_open"), RETRY_AFTER + 5, "the primary's cooldown")
        c_status, c_headers, c_body = post(GATEWAY, {"model": "", "messages": [{"role": "user", "content": "hi"}]})
        code = json.loads(c_body or b"{}").get("error", {}).get("code")
        say(f"  Request 6: HTTP {c_status} from {c_headers.get('x-llm-provider')}: {code}")
        say(f"  {DIM}A content-policy rejection is the request's fault: it goes back unchanged, no failover,"
            f" no cooldown.{RESET}")
        post("http://127.0.0.1:8000/mock/config", {"failure_status": 429, "failure_body": json.dumps(quota)})
        q_status, q_headers, _ = post(GATEWAY, {"model": "", "messages": [{"role": "user", "content": "hi"}]})
        say(f"  Request 7: HTTP {q_status} from {q_headers.get('x-llm-provider')}")
        wait_for(lambda: "out of quota or credit" in (workdir / "envoy.log").read_text(), 5, "the quota line")
        line = next(l for l in (workdir / "envoy.log").read_text().splitlines() if "out of quota or credit" in l)
        say(f"  filter:     {line.split('llm-failover: ', 1)[-1]}")
        say(f"  {DIM}A spent quota does not heal in a minute: the primary is left alone for maxCooldown, and one"
            f" line says so.{RESET}")
        classes = (c_status, code, q_status, q_headers.get("x-llm-provider")) == \
            (400, "content_filter", 200, "openai-fallback")

        say("Step 9  what an operator sees")
        say(f"  metrics  {ADMIN}/stats/prometheus")
        gauge_value = {"healthy": 0, "cooling": 1, "half_open": 2, "probing": 3}

        def gauges_agree():
            # The gauges are refreshed once a second: show them once they match the view.
            view = get(HEALTH)[1]
            text = get(f"{ADMIN}/stats/prometheus")[1].decode()
            agree = all(f'llm_failover_health{{provider="{p["name"]}"}} {gauge_value[p["state"]]}' in text
                        for p in json.loads(view)["providers"])
            return (view, text.encode()) if agree else None

        view, prom = wait_for(gauges_agree, 5, "the health gauges to match the health view")
        for line in prom.decode().splitlines():
            if line.startswith(("llm_failover_requests", "llm_failover_failovers", "llm_failover_cooldowns",
                                "llm_failover_errors", "llm_failover_health")):
                say(f"    {line}")
        say(f"  health   {HEALTH}")
        for p in json.loads(view)["providers"]:
            last = f", last failure {p['last_failure']} ({p['last_reason']})" if p["last_failure"] else ""
            say(f"    {p['name']}: {p['state']}{last}")

        say("Step 10  the timeline of steps 3 to 5, drawn from the access log (scripts/timeline.py)")
        drawn = draw_timeline(workdir, background.stopped_at)

        ok = ([r[0] for r in results] == [200, 200, 200] and (status, provider) == (200, "mock-ratelimit-provider")
              and streamed and fast and classes and quiet and drawn)
        say()
        say(f"{GREEN if ok else RED}{'Failover and recovery worked' if ok else 'Something went wrong'}{RESET}:"
            " no client saw a provider's failure (the one 400 was the request's own fault), and traffic"
            " returned to the primary by itself.")
        return 0 if ok else 1
    finally:
        stop_all()
        say(f"{DIM}stopped Envoy and the mocks; logs were in {workdir}{RESET}")


def draw_timeline(workdir, until):
    """Draws workdir/timeline.png from the access log's requests that started in the
    whole TIMELINE_BIN_S bins from the first request to `until` (epoch seconds: when the
    background client stopped; the later steps send a request now and then, which would
    only stretch the picture, and a last bin cut short would look like traffic falling
    off). Says where it is and what it shows; returns whether it shows a failover and
    the primary back."""
    access = workdir / "access.log"
    want = GATEWAY_REQUESTS.sent
    wait_for(lambda: sum(l.startswith("{") for l in access.read_text().splitlines()) >= want, 10,
             f"the access log's {want} request lines")
    try:
        entries, left_out = timeline.read_log(access)
        t0 = min((e.t for e in entries), default=until)  # none: series() says so
        end = t0 + (until - t0) // TIMELINE_BIN_S * TIMELINE_BIN_S
        s = timeline.series([e for e in entries if e.t < end], bin_s=TIMELINE_BIN_S)
    except timeline.TimelineError as e:
        say(f"  {RED}timeline: {e}{RESET}")
        return False
    if left_out:
        say(f"  {DIM}left out {len(left_out)} access log lines that are not request lines: {left_out[:10]}{RESET}")
    path = timeline.draw(s, workdir / "timeline.png",
                         title=f"llm-failover demo: the primary answers 429 (Retry-After: {RETRY_AFTER} s);"
                               " traffic fails over, then comes back by itself")
    say(f"  {BOLD}{path}{RESET}")
    say(f"  {DIM}{timeline.summary(s)}{RESET}")
    return bool(s.failovers) and any(c.provider == PRIMARY for c in s.cooldowns if c.end is not None)


if __name__ == "__main__":
    sys.exit(main())
