"""Kubernetes and Istio manifests, checked offline: core kinds with
`kubernetes-validate --strict`, Istio kinds against the committed JSON schemas with
`check-jsonschema`, and every embedded filter or Envoy configuration with
`envoy --mode validate`."""

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from harness import BUFFER_FILTER, ROOT, VENV_BIN, WASM, bootstrap, validate

K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_validate(*files):
    return subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", "--no-warn", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def check_schema(doc):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    return subprocess.run([str(VENV_BIN / "check-jsonschema"), "--schemafile", str(SCHEMAS / f"{doc['kind']}.json"),
                           f.name], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["mock-primary.yaml", "envoy/envoy.yaml", "istio/dispatch/secret.yaml"])
def test_core_kinds_pass_strict_validation(name):
    r = kubernetes_validate(K8S / name)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gateway_env_patch_makes_a_valid_deployment():
    patch = docs(K8S / "istio" / "dispatch" / "gateway-env-patch.yaml")[0]
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "istio-proxy"
    env = container["env"][0]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "openai-secret", "key": "OPENAI_API_KEY"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
                  "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}},
                           "template": {"metadata": {"labels": {"istio": "ingressgateway"}},
                                        "spec": {"containers": [{"image": "istio/proxyv2", **container}]}}}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(deployment, f)
    r = kubernetes_validate(f.name)
    assert r.returncode == 0, r.stdout + r.stderr


ISTIO_DOCS = [d for name in ("dispatch/wasmplugin.yaml", "dispatch/networking.yaml", "router/istio.yaml")
              for d in docs(K8S / "istio" / name) if "istio.io/" in d["apiVersion"]]


@pytest.mark.parametrize("doc", ISTIO_DOCS, ids=[f"{d['kind']}-{d['metadata']['name']}" for d in ISTIO_DOCS])
def test_istio_kinds_match_their_schema(doc):
    r = check_schema(doc)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schemas_refuse_a_misspelled_field():
    doc = json.loads(json.dumps(docs(K8S / "istio" / "dispatch" / "wasmplugin.yaml")[0]))
    doc["spec"]["pluginConfg"] = doc["spec"].pop("pluginConfig")
    assert check_schema(doc).returncode != 0


def test_wasmplugin_config_is_accepted_by_the_filter():
    plugin = docs(K8S / "istio" / "dispatch" / "wasmplugin.yaml")[0]["spec"]["pluginConfig"]
    clusters = {p["cluster"]: 1 for g in plugin["groups"] for p in g["providers"]}
    cfg = bootstrap(plugin, clusters, 10000, 9901, env_keys=["OPENAI_API_KEY"])
    path = Path(tempfile.mkdtemp()) / "envoy.json"
    path.write_text(json.dumps(cfg))
    r = validate(path, {"OPENAI_API_KEY": "sk-validate"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_wasmplugin_clusters_follow_istio_naming():
    plugin = docs(K8S / "istio" / "dispatch" / "wasmplugin.yaml")[0]["spec"]["pluginConfig"]
    net = {d["kind"]: d for d in docs(K8S / "istio" / "dispatch" / "networking.yaml")}
    entry = net["ServiceEntry"]["spec"]
    expected = {f"outbound|{entry['ports'][0]['number']}||{entry['hosts'][0]}"}
    service = next(d for d in docs(K8S / "mock-primary.yaml") if d["kind"] == "Service")
    expected.add(f"outbound|{service['spec']['ports'][0]['port']}||"
                 f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local")
    assert {p["cluster"] for g in plugin["groups"] for p in g["providers"]} == expected
    # The EnvoyFilter patches the very route the VirtualService names.
    route = net["VirtualService"]["spec"]["http"][0]["name"]
    patch = net["EnvoyFilter"]["spec"]["configPatches"][0]
    assert patch["match"]["routeConfiguration"]["vhost"]["route"]["name"] == route
    assert patch["patch"]["value"]["route"]["cluster_header"] == plugin["clusterHeader"]


def test_istio_gateway_gets_the_dispatch_wiring_the_tests_run():
    """The EnvoyFilter gives Istio's gateway what dispatch mode needs and the e2e tests
    run with (harness.bootstrap): the buffer filter first, the routing header kept
    from providers."""
    net = {d["kind"]: d for d in docs(K8S / "istio" / "dispatch" / "networking.yaml")}
    route_patch, filter_patch = net["EnvoyFilter"]["spec"]["configPatches"]
    assert route_patch["patch"]["value"]["request_headers_to_remove"] == ["x-llm-failover-cluster", "x-llm-failover-streamed"]
    assert filter_patch["applyTo"] == "HTTP_FILTER" and filter_patch["patch"]["operation"] == "INSERT_FIRST"
    assert filter_patch["patch"]["value"] == BUFFER_FILTER
    plugin = docs(K8S / "istio" / "dispatch" / "wasmplugin.yaml")[0]["spec"]["pluginConfig"]
    assert plugin["failover"]["mode"] == "dispatch"


def test_plain_envoy_configmap_validates():
    cm = next(d for d in docs(K8S / "envoy" / "envoy.yaml") if d["kind"] == "ConfigMap")
    text = cm["data"]["envoy.yaml"].replace("/etc/envoy/llm_failover.wasm", str(WASM))
    path = Path(tempfile.mkdtemp()) / "envoy.yaml"
    path.write_text(text)
    r = validate(path, {"OPENAI_API_KEY": "sk-validate"})
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name,base,target", [
    ("Dockerfile", "FROM scratch", "./plugin.wasm"),
    ("Dockerfile.envoy", "FROM envoyproxy/envoy:v1.40.0", "/etc/envoy/llm_failover.wasm"),
])
def test_dockerfiles_copy_the_built_filter(name, base, target):
    lines = [l for l in (K8S / name).read_text().splitlines() if l and not l.startswith("#")]
    assert lines[0] == base
    src, dst = lines[1].split()[1:]
    assert (ROOT / src).resolve() == WASM.resolve() and dst == target


ROUTER = K8S / "istio" / "router"


@pytest.mark.parametrize("name", ["istio.yaml", "gateway-patch.yaml"])
def test_the_router_wirings_core_kinds_validate(name):
    """k8s/istio/router/ is `render --istio`'s output (the drift check,
    scripts/render_shipped.py --check, keeps it so); its Secret and ConfigMap pass
    strict validation, and the gateway patch makes a valid Deployment."""
    if name == "istio.yaml":
        core = [d for d in docs(ROUTER / name) if d["apiVersion"] == "v1"]
        assert {d["kind"] for d in core} == {"Secret", "ConfigMap"}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(core, f)
        r = kubernetes_validate(f.name)
    else:
        patch = docs(ROUTER / name)[0]
        template = patch["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert container["name"] == "istio-proxy"
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
                      "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}},
                               "template": {"metadata": {"labels": {"istio": "ingressgateway"},
                                                         "annotations": template["metadata"]["annotations"]},
                                            "spec": {"containers": [{"image": "istio/proxyv2", **container}],
                                                     "volumes": template["spec"]["volumes"]}}}}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(deployment, f)
        r = kubernetes_validate(f.name)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_router_wiring_merged_as_istio_merges_it_validates():
    """The shipped router wiring, made into a gateway's configuration as istiod would
    (istio_sim.py: its output's shape, its merge rule), passes `envoy --mode validate`:
    the filter on the listener and on both provider clusters, the specifier on both
    routes, the TLS origination to the https provider."""
    import istio_sim
    services = [d for d in docs(K8S / "mock-primary.yaml") if d["kind"] == "Service"]
    cfg = istio_sim.istio_envoy_config((ROUTER / "istio.yaml").read_text(), 10000, 9901, 9902, WASM, services,
                                       gateway_patch=(ROUTER / "gateway-patch.yaml").read_text())
    vhost = next(istio_sim._hcms(cfg))["route_config"]["virtual_hosts"][0]
    assert vhost["include_request_attempt_count"] is False, "the gateway patch turns the attempt count off"
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    openai = clusters["outbound|80||api.openai.com"]
    assert openai["transport_socket"]["typed_config"]["sni"] == "api.openai.com"
    options = openai["typed_extension_protocol_options"][istio_sim.PROTOCOL_OPTIONS]
    assert [f["name"] for f in options["http_filters"]] == ["envoy.filters.http.wasm", "envoy.filters.http.upstream_codec"]
    assert "upstream_http_protocol_options" not in options, "Istio adds no auto_sni when the DR names the SNI"
    routes = istio_sim._hcms(cfg).__next__()["route_config"]["virtual_hosts"][0]["routes"]
    for r in routes:
        assert "cluster" not in r["route"] and "inline_cluster_specifier_plugin" in r["route"]
        assert r["route"]["retry_policy"]["retriable_status_codes"] == [591]
    path = Path(tempfile.mkdtemp()) / "envoy.json"
    path.write_text(json.dumps(cfg))
    r = validate(path, {"OPENAI_API_KEY": "sk-validate"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_simulated_merge_is_istios_rule():
    """istio_sim.merge as Istio's pkg/proto/merge behaves: a map entry replaced whole,
    lists appended, an Any replaced whole, a oneof's other member cleared; and what that
    means for a provider cluster whose DestinationRule leaves SNI to Istio (auto_sni in
    the very entry the patch replaces: lost, which is why render names the SNI)."""
    import istio_sim
    key = istio_sim.PROTOCOL_OPTIONS
    cluster = {"typed_extension_protocol_options": {key: {"@type": "t", "upstream_http_protocol_options": {"auto_sni": True}}},
               "load_assignment": {"endpoints": [{"lb_endpoints": ["a"]}]}, "circuit_breakers": {"thresholds": [{"max_retries": 1}]}}
    istio_sim.merge(cluster, {"typed_extension_protocol_options": {key: {"@type": "t", "http_filters": ["f"]}},
                              "load_assignment": {"endpoints": [{"priority": 1}]}})
    assert cluster["typed_extension_protocol_options"][key] == {"@type": "t", "http_filters": ["f"]}
    assert cluster["load_assignment"]["endpoints"] == [{"lb_endpoints": ["a"]}, {"priority": 1}]
    route = {"route": {"cluster": "c", "timeout": "5s", "retry_policy": {"retriable_status_codes": [503], "num_retries": 2}}}
    istio_sim.merge(route, {"route": {"inline_cluster_specifier_plugin": {"extension": {}},
                                      "retry_policy": {"retriable_status_codes": [591], "num_retries": 1}}})
    assert "cluster" not in route["route"] and route["route"]["timeout"] == "5s"
    assert route["route"]["retry_policy"] == {"retriable_status_codes": [503, 591], "num_retries": 1}
    typed = {"x": {"@type": "a", "keep": 1}}
    istio_sim.merge(typed, {"x": {"@type": "a", "new": 2}})
    assert typed["x"] == {"@type": "a", "new": 2}
    # A DestinationRule without `sni`: Istio's auto_sni, then the patch's entry in its place.
    resources = istio_sim.docs((ROUTER / "istio.yaml").read_text())
    for d in resources:
        if d["kind"] == "DestinationRule":
            del d["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["sni"]
    (before,) = [c for c in istio_sim.se_clusters(istio_sim.of_kind(resources, "ServiceEntry"),
                                                   istio_sim.of_kind(resources, "DestinationRule"))
                 if c["name"] == "outbound|80||api.openai.com"]
    assert before["typed_extension_protocol_options"][key]["upstream_http_protocol_options"]["auto_sni"] is True
    (patch,) = [p for p in istio_sim.of_kind(resources, "EnvoyFilter")[0]["spec"]["configPatches"]
                if p["applyTo"] == "CLUSTER" and p["match"].get("cluster", {}).get("name") == before["name"]]
    istio_sim.merge(before, patch["patch"]["value"])
    assert "upstream_http_protocol_options" not in before["typed_extension_protocol_options"][key]
