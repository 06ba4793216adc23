"""Per-provider rewrite, credentials, streaming and bad requests, in real Envoy."""

import json
import socket
import time

import pytest
from harness import LOOPBACK, MESSAGES, sdk

SECRET = "sk-injected-secret-4711"




def header_values(request, name):
    return [v for n, v in request["headers"] if n == name]


def test_model_host_path_and_auth_rewrite_without_leaking_the_key(mocks, envoy):
    keyed = mocks("keyed", "--failure-injection-rate", "100", "--retry-after", "60")
    passthrough = mocks("passthrough")
    cfg = {"groups": [
        {"providers": [{"name": "keyed", "cluster": "keyed", "openai": {"model": "gpt-4o"},
                        "host": "api.openai.example", "path": "/v1/chat/completions",
                        "policies": {"auth": {"key": {"env": "OPENAI_API_KEY"}}}}]},
        {"providers": [{"name": "passthrough", "cluster": "passthrough", "openai": {"model": "local-llama"},
                        "host": "llama.internal:8000", "path": "/v1/chat/completions",
                        "policies": {"auth": {"passthrough": {}}}}]},
    ]}
    e = envoy(cfg, {"keyed": keyed.port, "passthrough": passthrough.port}, env={"OPENAI_API_KEY": SECRET})
    body = {"model": "whatever", "messages": MESSAGES, "temperature": 0.5}
    status, h, resp = e.post_chat(body, {"authorization": "Bearer client-token", "x-api-key": "client-x"},
                                  path="/openai/chat?api-version=7")
    assert status == 200 and h["x-llm-provider"] == "passthrough"

    (k,) = keyed.chat_requests()
    assert k["path"] == "/v1/chat/completions?api-version=7"
    assert header_values(k, "host") == ["api.openai.example"]
    assert header_values(k, "authorization") == [f"Bearer {SECRET}"]
    assert header_values(k, "x-api-key") == []
    assert json.loads(k["body"]) == {"model": "gpt-4o", "messages": MESSAGES, "temperature": 0.5}

    (p,) = passthrough.chat_requests()
    assert p["path"] == "/v1/chat/completions?api-version=7"
    assert header_values(p, "host") == ["llama.internal:8000"]
    assert header_values(p, "authorization") == ["Bearer client-token"]
    assert header_values(p, "x-api-key") == ["client-x"]
    assert json.loads(p["body"])["model"] == "local-llama"
    # The injected key reaches only its own provider: not the passthrough one, not
    # the client, not the log.
    assert SECRET not in json.dumps(p)
    assert SECRET not in resp.decode() and SECRET not in json.dumps(h)
    assert SECRET not in e.log()
    assert SECRET not in e.access_log.read_text()


def test_custom_key_header_and_prefix(mocks, envoy):
    az = mocks("azure", "--api-key", SECRET, "--api-key-header", "api-key")
    cfg = {"groups": [{"providers": [{"name": "azure", "cluster": "azure", "path": "/v1/chat/completions",
                                      "policies": {"auth": {"key": {"env": "AZURE_KEY", "header": "api-key"}}}}]}]}
    e = envoy(cfg, {"azure": az.port}, env={"AZURE_KEY": SECRET})
    raw = sdk(e).chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.status_code == 200
    (r,) = az.chat_requests()
    assert header_values(r, "api-key") == [SECRET]
    assert header_values(r, "authorization") == []


def _stream_config(fail_primary: bool):
    return {"groups": [
        {"providers": [{"name": "primary", "cluster": "primary", "path": "/v1/chat/completions",
                        "openai": {"model": "m-primary"}}]},
        {"providers": [{"name": "fallback", "cluster": "fallback", "path": "/v1/chat/completions",
                        "openai": {"model": "m-fallback"}}]}]}


def test_streaming_streams_on_the_normal_path(mocks, envoy):
    primary = mocks("primary", "--chunk-delay-ms", "150")
    fallback = mocks("fallback")
    e = envoy(_stream_config(False), {"primary": primary.port, "fallback": fallback.port})
    started = time.monotonic()
    arrivals, text = [], ""
    stream = sdk(e).chat.completions.create(model="x", messages=MESSAGES, stream=True)
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "Hello from primary! 2+2 is 4."
    # 8 events 150 ms apart: the first must arrive long before the last.
    assert len(arrivals) >= 8
    assert arrivals[-1] - arrivals[0] >= 0.8, arrivals


def test_streaming_failover_still_gives_a_valid_sse_stream(mocks, envoy):
    primary = mocks("primary", "--failure-injection-rate", "100", "--retry-after", "60")
    fallback = mocks("fallback", "--chunk-delay-ms", "20")
    e = envoy(_stream_config(True), {"primary": primary.port, "fallback": fallback.port})
    raw = sdk(e).chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
    assert raw.status_code == 200
    assert raw.headers["x-llm-provider"] == "fallback"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fallback! 2+2 is 4."
    assert all(c.model == "m-fallback" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def _override_env(mocks, envoy, router=True, **top):
    up = mocks("up")
    cfg = {"groups": [{"providers": [{"name": "up", "cluster": "up", "openai": {"model": "m"},
                                      "path": "/v1/chat/completions"}]}]}
    cfg.update(top)
    return up, envoy(cfg, {"up": up.port}, router=router)


@pytest.mark.parametrize("body,needle", [
    (b"this is not json", "not valid JSON"),
    (b'{"model": "x", "messages": [', "not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b'{"a":1}{"b":2}', "not valid JSON"),
])
def test_non_json_body_gets_400_and_is_not_sent(mocks, envoy, body, needle):
    up, e = _override_env(mocks, envoy)
    status, h, resp = e.post_chat(body)
    assert status == 400
    assert h["content-type"] == "application/json"
    err = json.loads(resp)["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error" and err["code"] == "invalid_json"
    assert up.chat_requests() == []
    # The VM survived: the next good request works.
    assert e.post_chat({"model": "", "messages": MESSAGES})[0] == 200


def test_oversize_body_gets_413_with_content_length(mocks, envoy):
    up, e = _override_env(mocks, envoy, maxBodyBytes=10_000)
    big = json.dumps({"model": "", "messages": [{"role": "user", "content": "x" * 20_000}]}).encode()
    status, _, resp = e.post_chat(big)
    assert status == 413
    assert json.loads(resp)["error"]["code"] == "request_too_large"
    assert up.chat_requests() == []


@pytest.mark.parametrize("router", [True, False], ids=["router", "dispatch"])
def test_oversize_chunked_body_gets_413(mocks, envoy, router):
    up, e = _override_env(mocks, envoy, router=router, maxBodyBytes=10_000)
    with socket.create_connection((LOOPBACK, e.port), timeout=10) as s:
        s.sendall(b"POST /openai HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        chunk = b'{"model":"","pad":"' + b"x" * 4000
        for _ in range(5):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            chunk = b"x" * 4000
        if not router:
            # Dispatch mode's wiring buffers the whole request before the filter sees
            # it (harness.BUFFER_FILTER): the 413 comes once the body is complete.
            s.sendall(b'2\r\n"}\r\n0\r\n\r\n')
        response = b""
        while b"\r\n\r\n" not in response:
            data = s.recv(65536)
            if not data:
                break
            response += data
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert up.chat_requests() == []


def test_no_model_override_passes_any_body_through(mocks, envoy):
    up = mocks("up")
    cfg = {"groups": [{"providers": [{"name": "up", "cluster": "up"}]}]}
    e = envoy(cfg, {"up": up.port})
    status, h, _ = e.post_chat(b"plain text body", path="/anything")
    assert (status, h["x-llm-provider"]) == (404, "up")
    (r,) = up.requests()
    assert r["body"] == "plain text body"
    assert header_values(r, "content-length") == ["15"]


def test_get_request_without_body_is_routed(mocks, envoy):
    from harness import http

    up = mocks("up")
    # A model override but no path override: GET /v1/models keeps its path.
    cfg = {"groups": [{"providers": [{"name": "up", "cluster": "up", "openai": {"model": "m"}}]}]}
    e = envoy(cfg, {"up": up.port})
    status, h, body = http("GET", e.url + "/v1/models")
    assert (status, h["x-llm-provider"]) == (200, "up")
    assert json.loads(body)["object"] == "list"
