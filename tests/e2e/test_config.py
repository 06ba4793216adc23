"""Configurations checked by `envoy --mode validate`, which runs the filter's on_configure."""

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import RENDER_BIN, ROOT, bootstrap, is_llm_failover, llm_hcm, native_build, native_filter, validate

GOOD_PROVIDER = {"name": "a", "cluster": "a"}


def write_config(plugin_value: str, env_keys=()) -> Path:
    """A bootstrap with `plugin_value` as the filter's configuration; under
    LLM_FAILOVER_BUILD=native, in the native module instead of the .wasm."""
    cfg = bootstrap(plugin_value, {"a": 1, "b": 2}, 10000, 9901, env_keys=list(env_keys))
    if native_build():
        hcm = llm_hcm(cfg)
        hcm["http_filters"] = [native_filter("llm_failover", plugin_value, by_path=True) if is_llm_failover(f)
                               else f for f in hcm["http_filters"]]
    path = Path(tempfile.mkdtemp(prefix="llm-failover-validate-")) / "envoy.json"
    path.write_text(json.dumps(cfg))
    return path


def plugin(**top):
    cfg = {"groups": [{"providers": [GOOD_PROVIDER]}]}
    cfg.update(top)
    return json.dumps(cfg)


def providers(*ps):
    return json.dumps({"groups": [{"providers": list(ps)}]})


@pytest.mark.parametrize("env", [{"OPENAI_API_KEY": "sk-validate"}])
@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-openai.yaml", "envoy-native.yaml"])
def test_shipped_configs_validate(name, env):
    r = validate(ROOT / "envoy" / name, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"configuration '{ROOT / 'envoy' / name}' OK" in r.stdout + r.stderr


def test_shipped_config_without_its_key_is_refused_with_the_field_named():
    r = validate(ROOT / "envoy" / "envoy.yaml", {})
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "groups[1].providers[0].policies.auth.key.env: environment variable OPENAI_API_KEY is not set" in out


def test_good_config_validates():
    r = validate(write_config(plugin(failover={"defaultCooldown": "1.5s", "maxCooldown": "2m"})))
    assert r.returncode == 0, r.stdout + r.stderr


BAD = [
    ("not json at all", "invalid llm-failover configuration: not valid JSON"),
    (json.dumps({"groups": []}), "groups: at least one priority group is required"),
    (json.dumps({"groups": [{"providers": []}]}), "groups[0].providers: a group needs at least one provider"),
    (plugin(colour="blue"), "colour: unknown field `colour`"),
    (providers({"name": "a", "cluster": "a", "wieght": 2}), "groups[0].providers[0].wieght: unknown field"),
    (providers(GOOD_PROVIDER, {"name": "a", "cluster": "b"}),
     'groups[0].providers[1].name: duplicate provider name "a"'),
    (plugin(failover={"defaultCooldown": "sixty seconds"}), "failover.defaultCooldown: bad duration"),
    (plugin(failover={"maxCooldown": "10"}), "failover.maxCooldown: bad duration"),
    (providers({"name": "a", "cluster": "a", "weight": 0}), "groups[0].providers[0].weight: 0 is out of range"),
    (providers({"name": "a", "cluster": "a", "policies": {"auth": {"secretRef": {"name": "s"}}}}),
     "groups[0].providers[0].policies.auth: unknown auth kind `secretRef`"),
    (providers({"name": "a", "cluster": "a", "policies": {"auth": {"key": {"env": "NOPE"}}}}),
     "groups[0].providers[0].policies.auth.key.env: environment variable NOPE is not set"),
    (plugin(failover={"onStatus": [200]}), "failover.onStatus[0]: 200 is not an HTTP error status"),
    (plugin(clusterHeader="x y"), "clusterHeader"),
    ("", "the plugin configuration is empty"),
]


def _provider(**p):
    return {"name": "a", "cluster": "a", **p}


def _top(**t):
    return json.dumps({"groups": [{"providers": [_provider()]}], **t})


def _failover(**f):
    return _top(failover=f)


def _providers(*ps):
    return json.dumps({"groups": [{"providers": list(ps)}]})


# More bad configurations, each with the field its message must start with.
BAD_FIELDS = [
    (json.dumps({"groups": {}}), "groups"),
    (json.dumps({"groups": [{"providers": [1]}]}), "groups[0].providers[0]"),
    (json.dumps({"groups": [{"providers": [{"cluster": "a"}]}]}), "groups[0].providers[0]"),
    (_providers(_provider(name="  ")), "groups[0].providers[0].name"),
    (_providers(_provider(name="a b")), "groups[0].providers[0].name"),
    (json.dumps({"groups": [{"providers": [{"name": "a"}]}]}), "groups[0].providers[0]"),
    (_providers(_provider(cluster="")), "groups[0].providers[0].cluster"),
    (_providers(_provider(openai={"model": ""})), "groups[0].providers[0].openai.model"),
    (_providers(_provider(openai={"model": "m", "temperature": 1})), "groups[0].providers[0].openai.temperature"),
    (_providers(_provider(host="a/b")), "groups[0].providers[0].host"),
    (_providers(_provider(path="v1")), "groups[0].providers[0].path"),
    (_providers(_provider(path="/v1?x=1")), "groups[0].providers[0].path"),
    (_providers(_provider(query={"v": 1})), "groups[0].providers[0].query.v"),
    (_providers(_provider(query=["api-version"])), "groups[0].providers[0].query"),
    (_providers(_provider(endpoint="ftp://x")), "groups[0].providers[0].endpoint"),
    (_providers(_provider(endpoint="https://api.openai.com/v1")), "groups[0].providers[0].endpoint"),
    (_providers(_provider(weight=2000000)), "groups[0].providers[0].weight"),
    (_providers(_provider(weight=1.5)), "groups[0].providers[0].weight"),
    (_providers(_provider(weight=1e999)), "not valid JSON"),
    (_providers(_provider(policies={"auth": {"passthrough": {}, "key": {"env": "K"}}})), "groups[0].providers[0].policies.auth"),
    (_providers(_provider(policies={"auth": {"key": {"env": "OPENAI_API_KEY", "header": "x y"}}})), "groups[0].providers[0].policies.auth.key.header"),
    (_providers(_provider(policies={"auth": {"key": {"env": ""}}})), "groups[0].providers[0].policies.auth.key.env"),
    (_failover(retries=9), "failover.retries"),
    (_failover(onStatus=429), "failover.onStatus"),
    (_failover(onStatus=[600]), "failover.onStatus[0]"),
    (_failover(defaultCooldown="10m", maxCooldown="1m"), "failover.defaultCooldown"),
    (_failover(maxCooldown="0s"), "failover.maxCooldown"),
    (_failover(consecutiveFailures=0), "failover.consecutiveFailures"),
    (_failover(mode="retry"), "failover.mode"),
    (_failover(withinRequest="yes"), "failover.withinRequest"),
    (_failover(probeTimeout="200h"), "failover.probeTimeout"),
    (_failover(attemptTimeout="-1s"), "failover.attemptTimeout"),
    (_top(maxBodyBytes=0), "maxBodyBytes"),
    (_top(healthPath="health"), "healthPath"),
    (json.dumps({"healthPath": "/h", "failover": {}}), "failover"),
    (json.dumps({"groups": [{"providers": [_provider(name=f"p{i}", cluster=f"c{i}") for i in range(65)]}]}), "groups[0].providers"),
    (json.dumps({"groups": [{"providers": [_provider()], "weight": 1}]}), "groups[0].weight"),
]
BAD += [(value, f"{field}: " if field != "not valid JSON" else field) for value, field in BAD_FIELDS]


@pytest.mark.parametrize("value,message", BAD, ids=[m.split(":")[0][:40] for _, m in BAD])
def test_bad_config_is_refused_with_one_line_naming_the_field(value, message):
    r = validate(write_config(value))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    lines = [l for l in out.splitlines() if "invalid llm-failover configuration" in l]
    assert len(lines) >= 1, out[-2000:]
    # One VM configures during validation; each reports one line, all the same.
    assert len({re.sub(r"^\[.*?\]\s*", "", l.split("wasm log", 1)[-1]) for l in lines}) == 1
    assert message in lines[0], lines[0]
    assert "panicked" not in out


# render checks everything but whether a key variable is set (it is, where Envoy runs).
RENDER_BAD = [(v, m) for v, m in BAD if v and "is not set" not in m]


@pytest.mark.parametrize("value,message", RENDER_BAD, ids=[m.split(":")[0][:40] for _, m in RENDER_BAD])
def test_render_refuses_each_bad_config_with_the_filters_message(value, message, tmp_path):
    path = tmp_path / "plugin.json"
    path.write_text(value)
    r = subprocess.run([str(RENDER_BIN), "render", "--config", str(path)], capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-x"})
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("llm-failover: invalid llm-failover configuration: ") and message in line, line


def test_the_bad_config_matrix_is_large():
    assert len(BAD) >= 50
