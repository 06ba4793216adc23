"""The configuration examples (examples/*.json, one per provider kind in
docs/configuration.md): each renders, passes `envoy --mode validate` as it is, and, with
its endpoint pointed at the mock, sends the provider the path, query and headers that
provider needs."""

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import LOOPBACK, RENDER_BIN, ROOT, validate

EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
KEYS = {"OPENAI_API_KEY": "sk-openai", "AZURE_OPENAI_API_KEY": "az-key", "ANTHROPIC_API_KEY": "sk-ant",
        "GEMINI_API_KEY": "gm-key"}

# The example gives no `host`: the provider gets its endpoint's (here the mock's).
ENDPOINT_HOST = object()

# example -> (path with query, header -> value the provider must get, headers it must not get)
EXPECTED = {
    "openai.json": ("/v1/chat/completions?trace=1",
                    {"authorization": "Bearer sk-openai", "host": ENDPOINT_HOST}, []),
    "azure-openai.json": ("/openai/deployments/gpt-4o-mini/chat/completions?trace=1&api-version=2024-10-21",
                          {"api-key": "az-key", "host": ENDPOINT_HOST}, ["authorization"]),
    "anthropic.json": ("/v1/chat/completions?trace=1",
                       {"authorization": "Bearer sk-ant", "host": ENDPOINT_HOST}, []),
    "gemini.json": ("/v1beta/openai/chat/completions?trace=1",
                    {"authorization": "Bearer gm-key", "host": ENDPOINT_HOST}, []),
    "vllm.json": ("/v1/chat/completions?trace=1", {"authorization": "Bearer client-token"}, []),
    "ollama.json": ("/v1/chat/completions?trace=1", {"authorization": "Bearer client-token"}, []),
}


def test_every_example_is_documented_and_checked():
    names = {p.name for p in EXAMPLES}
    assert names == set(EXPECTED)
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for name in names:
        assert f"examples/{name}" in doc, name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_renders_and_validates(example):
    r = subprocess.run([str(RENDER_BIN), "render", "--config", str(example.relative_to(ROOT))],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    path = Path(tempfile.mkdtemp(prefix="llm-failover-example-")) / "envoy.yaml"
    path.write_text(r.stdout)
    v = validate(path, KEYS)
    assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_sends_what_its_provider_needs(mocks, envoy, example):
    plugin = json.loads(example.read_text())
    (provider,) = plugin["groups"][0]["providers"]
    mock = mocks(provider["name"])
    provider["endpoint"] = f"http://{LOOPBACK}:{mock.port}"
    e = envoy(plugin, {}, router=True, env=KEYS)
    status, headers, body = e.post_chat({"model": "client-model", "messages": [{"role": "user", "content": "hi"}]},
                                        {"authorization": "Bearer client-token"},
                                        path="/v1/chat/completions?trace=1")
    assert (status, headers["x-llm-provider"]) == (200, provider["name"]), body
    (r,) = mock.chat_requests()
    path, want, absent = EXPECTED[example.name]
    got = dict(r["headers"])
    assert r["path"] == path
    for name, value in want.items():
        if value is ENDPOINT_HOST:
            assert "host" not in provider
            value = f"{LOOPBACK}:{mock.port}"
        assert got.get(name) == value, (name, got)
    for name in absent:
        assert name not in got, (name, got)
    assert json.loads(r["body"])["model"] == provider["openai"]["model"]
