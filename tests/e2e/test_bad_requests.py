"""Bad requests, one after another into one Envoy (both modes): each gets a clear
OpenAI-style error or a correct pass-through, nothing is forwarded that must not be,
and Envoy is unharmed afterwards (a normal request still works, no panic, no VM
reload)."""

import gzip
import json
import socket
import subprocess
import time

import pytest
from harness import LOOPBACK, config, provider

BODY = {"model": "client", "messages": [{"role": "user", "content": "What is 2+2?"}]}


def raw(port, request: bytes, pieces: int | None = None, timeout=10) -> bytes:
    """Sends `request` (in `pieces`-byte pieces, if given) and reads the answer."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        if pieces:
            for i in range(0, len(request), pieces):
                s.sendall(request[i:i + pieces])
                time.sleep(0.001)
        else:
            s.sendall(request)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if length and len(rest) >= int(length[0].split(b":")[1]):
                    break
    return out


def post(body: bytes, headers: dict[str, str] | None = None, version="HTTP/1.1") -> bytes:
    h = {"host": "gateway", "content-type": "application/json", "content-length": str(len(body)),
         "connection": "close"}
    h.update(headers or {})
    return (f"POST /v1/chat/completions {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "\r\n").encode() + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def error_code(answer: bytes) -> str | None:
    try:
        return json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


ok = json.dumps(BODY).encode()
# name -> (request bytes, pieces, expected status, OpenAI error code or None, reaches the provider)
CASES = {
    "not JSON": (post(b"hello there"), None, 400, "invalid_json", False),
    "top-level array": (post(b"[1, 2]"), None, 400, "invalid_json", False),
    "model not a string": (post(b'{"model": 5, "messages": []}'), None, 200, None, True),
    # No body to check: it passes, and the provider gives its own OpenAI-style 400.
    "empty body": (post(b""), None, 400, "invalid_json", True),
    "over the limit": (post(b'{"model":"x","pad":"' + b"x" * 20_000 + b'"}'), None, 413, "request_too_large", False),
    "100,000 levels of nesting": (post(b"[" * 100_000 + b"]" * 100_000), None, 413, "request_too_large", False),
    "deep nesting under the limit": (post(b'{"a":' + b"[" * 4000 + b"]" * 4000 + b"}"), None, 400, "invalid_json", False),
    "invalid UTF-8": (post(b'{"model":"x","messages":"\xff\xfe"}'), None, 400, "invalid_json", False),
    "NaN": (post(b'{"model":"x","temperature":NaN}'), None, 400, "invalid_json", False),
    "number beyond an f64": (post(b'{"model":"x","temperature":1e999}'), None, 400, "invalid_json", False),
    "truncated JSON": (post(ok[:-5]), None, 400, "invalid_json", False),
    "gzip-encoded body": (post(gzip.compress(ok), {"content-encoding": "gzip"}), None, 415,
                          "unsupported_content_encoding", False),
    "HTTP/1.0": (post(ok, version="HTTP/1.0"), None, 426, None, False),
    "body trickled in 8-byte pieces": (post(ok), 8, 200, None, True),
    "huge headers": (post(ok, {"x-big": "a" * 100_000}), None, 431, None, False),
    "forged routing and internal headers": (post(ok, {"x-llm-failover-cluster": "nope", "x-llm-failover-streamed": "1",
                                                      "x-envoy-max-retries": "50"}), None, 200, None, True),
}


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_bad_requests_get_clear_answers_and_leave_envoy_unharmed(mocks, envoy, router):
    up = mocks("up")
    fallback = mocks("fallback")
    e = envoy(config([provider("up", openai={"model": "m"})], [provider("fallback", openai={"model": "m"})],
                     ) | {"maxBodyBytes": 10_000}, {"up": up.port, "fallback": fallback.port}, router=router)
    failures = []
    for name, (request, pieces, want_status, want_code, forwarded) in CASES.items():
        before = len(up.chat_requests())
        answer = raw(e.port, request, pieces)
        got = (status_of(answer), error_code(answer) if want_code else None)
        reached = len(up.chat_requests()) > before
        if got != (want_status, want_code) or reached != forwarded:
            failures.append(f"{name}: got {got}, forwarded={reached}: {answer[:300]!r}")
        if forwarded and reached and want_status == 200:
            r = up.chat_requests()[-1]
            headers = dict(r["headers"])
            if json.loads(r["body"])["model"] != "m" or any(k.startswith("x-llm-") for k in headers):
                failures.append(f"{name}: the provider got {r}")
    assert failures == [], "\n".join(failures) + e.log()[-3000:]
    assert fallback.chat_requests() == [], "no bad request may fail over"
    # h2c with prior knowledge: served like HTTP/1.1.
    h2 = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                         "-H", "content-type: application/json", "--data-binary", json.dumps(BODY),
                         f"{e.url}/v1/chat/completions"], capture_output=True, text=True, timeout=30)
    assert h2.stdout == "2 200", h2.stdout + h2.stderr
    # Envoy unharmed.
    status, headers, _ = e.post_chat(BODY, path="/v1/chat/completions")
    assert (status, headers["x-llm-provider"]) == (200, "up")
    assert "panicked" not in e.log()
    assert sum(v for k, v in e.stats().items() if k.endswith(".vm_reload")) == 0
    assert [p["state"] for p in e.health()["providers"]] == ["healthy", "healthy"]
