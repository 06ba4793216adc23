"""Configurations checked by `envoy --mode validate`, which runs the filter's on_configure."""

import json
import re
import tempfile
from pathlib import Path

import pytest
from harness import ROOT, bootstrap, validate

GOOD_PROVIDER = {"name": "a", "cluster": "a"}


def write_config(plugin_value: str, env_keys=()) -> Path:
    cfg = bootstrap(plugin_value, {"a": 1, "b": 2}, 10000, 9901, env_keys=list(env_keys))
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
@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-openai.yaml"])
def test_shipped_configs_validate(name, env):
    r = validate(ROOT / "envoy" / name, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"configuration 'envoy/{name}' OK" in r.stdout + r.stderr or "OK" in r.stdout + r.stderr


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
