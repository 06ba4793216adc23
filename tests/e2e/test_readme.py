"""A new user's gateway, built from the README alone: its `gateway.json` block, rendered
and run as "Run your own gateway" says, with each provider's endpoint pointed at a mock
that checks what that provider must get (keys, path, query)."""

import http.client
import json
import re
import subprocess

import openai
from harness import LOOPBACK, RENDER_BIN, ROOT, wait_until

MARK = "<!-- gateway.json:"
KEYS = {"OPENAI_API_KEY": "sk-openai", "AZURE_OPENAI_API_KEY": "az-key"}


def readme_gateway() -> dict:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARK):]
    block = re.search(r"```json\n(.*?)\n```", after, re.S)
    return json.loads(block.group(1))


def readme_commands() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index(MARK):text.index("**3. Use it**")]


def post(conn, body, path="/v1/chat/completions?api-version=client&trace=1"):
    conn.request("POST", path, json.dumps(body),
                 {"content-type": "application/json", "authorization": "Bearer client-token"})
    r = conn.getresponse()
    return r.status, r.getheader("x-llm-provider"), r.read()


def test_the_readme_gateway_runs_as_documented(mocks, envoy):
    # The commands the README gives are the ones this test relies on.
    commands = readme_commands()
    for piece in ("llm-failover render --config gateway.json > envoy.yaml", "--mode validate",
                  "--concurrency 2 --disable-hot-restart"):
        assert piece in commands, piece
    plugin = readme_gateway()
    names = [p["name"] for g in plugin["groups"] for p in g["providers"]]
    assert names == ["openai", "azure", "local-vllm", "last-resort"]
    primary = mocks("openai", "--failure-injection-rate", "100", "--retry-after", "60", "--api-key", "sk-openai")
    azure = mocks("azure", "--api-key", "az-key", "--api-key-header", "api-key", "--chunk-delay-ms", "50")
    vllm = mocks("local-vllm")
    last = mocks("last-resort")
    by_name = {"openai": primary, "azure": azure, "local-vllm": vllm, "last-resort": last}
    for g in plugin["groups"]:
        for p in g["providers"]:
            p["endpoint"] = f"http://{LOOPBACK}:{by_name[p['name']].port}"
    e = envoy(plugin, {}, router=True, env=KEYS)

    conn = http.client.HTTPConnection(LOOPBACK, e.port, timeout=30)
    chat = {"model": "client-model", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    # The primary's 429 puts it into cooldown; this request already gets group 2's answer.
    status, provider, _ = post(conn, chat)
    assert status == 200 and provider in ("azure", "local-vllm")
    # One connection, so one worker's weighted rotation: exactly 3:1.
    served = [post(conn, chat)[:2] for _ in range(40)]
    assert served.count((200, "azure")) == 30 and served.count((200, "local-vllm")) == 10, served

    assert len(primary.chat_requests()) == 1
    (p,) = primary.chat_requests()
    assert dict(p["headers"])["authorization"] == "Bearer sk-openai"
    for r in azure.chat_requests():
        h = dict(r["headers"])
        assert r["path"] == "/openai/deployments/gpt-4o-mini/chat/completions?trace=1&api-version=2024-10-21"
        assert h["api-key"] == "az-key" and "authorization" not in h
        assert h["host"] == "my-resource.openai.azure.com"
        assert json.loads(r["body"])["model"] == "client-model"  # no override for azure
    for r in vllm.chat_requests():
        h = dict(r["headers"])
        # Azure's api-version never reaches another provider; the client's own does.
        assert r["path"] == "/v1/chat/completions?api-version=client&trace=1"
        assert h["authorization"] == "Bearer client-token" and "api-key" not in h
        assert json.loads(r["body"])["model"] == "meta-llama/Llama-3.1-8B-Instruct"

    # Streaming through the gateway, with the OpenAI SDK.
    client = openai.OpenAI(base_url=f"{e.url}/v1", api_key="client-token", max_retries=0, timeout=30)
    deltas = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model="client-model", messages=chat["messages"], stream=True)
              if c.choices]
    assert "".join(deltas).strip()

    # Group 2 fails too: the last resort answers.
    for m in (azure, vllm):
        m.configure(failure_injection_rate=100, failure_types=["service_unavailable"])
    status, provider, _ = post(conn, chat)
    assert (status, provider) == (200, "last-resort")

    # The health view and the metrics show it.
    view = {name: p["state"] for name, p in e.providers().items()}
    assert view == {"openai": "cooling", "azure": "cooling", "local-vllm": "cooling", "last-resort": "healthy"}
    wait_until(lambda: 'llm_failover_health{provider="openai"} 1' in e.prometheus(), 10, "the health gauge")
    assert 'llm_failover_requests{provider="last-resort",status_class="2xx"} 1' in e.prometheus()


def test_the_readme_check_example_is_what_check_prints(tmp_path):
    """The README's misspelled-cluster example: `check` finds it before Envoy runs."""
    plugin = readme_gateway()
    (tmp_path / "gateway.json").write_text(json.dumps(plugin))
    r = subprocess.run([str(RENDER_BIN), "render", "--config", str(tmp_path / "gateway.json")],
                       capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    (tmp_path / "my-envoy.yaml").write_text(r.stdout.replace("name: openai\n", "name: opneai\n"))
    c = subprocess.run([str(RENDER_BIN), "check", "--config", str(tmp_path / "gateway.json"),
                        "--envoy", str(tmp_path / "my-envoy.yaml")], capture_output=True, text=True, timeout=30)
    assert c.returncode == 1
    line = c.stderr.strip()
    assert line in (ROOT / "README.md").read_text(), line
