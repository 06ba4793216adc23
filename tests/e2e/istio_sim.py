"""The Istio wiring (`llm-failover render --istio`) in a plain Envoy, without a mesh.

Two stand-ins, each for a part of Istio that can only be run in a real mesh:
- `gateway_bootstrap`: what istiod makes of the Gateway, VirtualService and
  ServiceEntry/DestinationRule for an ingress gateway, shaped like its output (cluster
  `outbound|<port>||<host>` with Istio's protocol options, circuit breakers and
  endpoints; the route named after the VirtualService rule, with the retry policy
  istiod converts from `retries`; the gateway's HTTP filters);
- `apply_envoy_filter`: Istio's EnvoyFilter patching with Istio's merge rule
  (`pkg/proto/merge`): lists are appended, a map entry is replaced whole, an `Any` is
  replaced whole (except a filter's `typed_config` under an HTTP_FILTER or
  NETWORK_FILTER MERGE, which Istio unpacks and merges), scalars are replaced, and
  setting one field of a oneof clears the others.

What only a mesh can confirm is listed in docs/istio.md."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAX = 4294967295

# Proto map fields met in these patches and Istio's output (merged entry by entry, each
# entry replaced whole).
MAP_FIELDS = {"typed_extension_protocol_options", "typed_per_filter_config", "filter_metadata",
              "typed_filter_metadata", "map"}
# Oneofs met here: setting one member clears the others.
ONEOFS = [{"cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin",
           "inline_cluster_specifier_plugin"}]


def merge(dst: dict, src: dict) -> dict:
    """Istio's MERGE of `src` into `dst` (in place; also returned)."""
    for key, value in src.items():
        if key in MAP_FIELDS and isinstance(value, dict):
            entries = dst.setdefault(key, {})
            for name, entry in value.items():
                entries[name] = copy.deepcopy(entry)
        elif isinstance(value, list):
            dst[key] = list(dst.get(key, [])) + copy.deepcopy(value)
        elif (isinstance(value, dict) and "@type" not in value
              and isinstance(dst.get(key), dict) and "@type" not in dst[key]):
            merge(dst[key], value)
        elif value is False or (type(value) is int and value == 0):
            # proto3: a zero scalar is not set, so Istio's merge (src.Range) skips it.
            continue
        else:
            for group in ONEOFS:
                if key in group:
                    for other in group - {key}:
                        dst.pop(other, None)
            dst[key] = copy.deepcopy(value)
    return dst


def merge_typed(dst: dict, src: dict):
    """A filter's typed_config under HTTP_FILTER/NETWORK_FILTER MERGE: unpacked and
    merged when the types agree, else replaced."""
    if dst.get("@type") == src.get("@type"):
        merge(dst, {k: v for k, v in src.items() if k != "@type"})
    else:
        dst.clear()
        dst.update(copy.deepcopy(src))


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def of_kind(resources: list[dict], kind: str) -> list[dict]:
    return [d for d in resources if d["kind"] == kind]


def retry_policy(retries: dict | None) -> dict | None:
    """istiod's conversion of a VirtualService `retries` (`route/retry/retry.go`)."""
    policy = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
              "num_retries": 2, "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                                           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
              "host_selection_retry_max_attempts": "5"}
    if retries is None:
        return policy
    if retries.get("attempts", 2) <= 0:
        return None
    policy["num_retries"] = retries["attempts"]
    if "retryOn" in retries:
        names, codes = [], []
        for part in retries["retryOn"].split(","):
            part = part.strip()
            (codes if part.isdigit() else names).append(int(part) if part.isdigit() else part)
        if codes and "retriable-status-codes" not in names:
            names.append("retriable-status-codes")
        policy["retry_on"] = ",".join(names)
        if codes:
            policy["retriable_status_codes"] = codes
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = retries["perTryTimeout"]
    if retries.get("retryIgnorePreviousHosts") is False:
        del policy["retry_host_predicate"]
    return policy


def se_clusters(ses: list[dict], drs: list[dict]) -> list[dict]:
    """The outbound clusters istiod makes for ServiceEntries (one per host and port)."""
    out = []
    for se in ses:
        spec = se["spec"]
        for host in spec["hosts"]:
            dr = next((d["spec"] for d in drs if d["spec"]["host"] == host), None)
            for port in spec["ports"]:
                name = f"outbound|{port['number']}||{host}"
                target = port.get("targetPort", port["number"])
                addresses = [e["address"] for e in spec.get("endpoints", [])] or [host]
                options = {"@type": f"type.googleapis.com/{PROTOCOL_OPTIONS}",
                           "explicit_http_config": {"http_protocol_options": {}}}
                cluster = {
                    "name": name,
                    "type": "STRICT_DNS" if spec.get("resolution") == "DNS" else "STATIC",
                    "connect_timeout": "10s",
                    "lb_policy": "LEAST_REQUEST",
                    "circuit_breakers": {"thresholds": [{"max_connections": MAX, "max_pending_requests": MAX,
                                                         "max_requests": MAX, "max_retries": MAX,
                                                         "track_remaining": True}]},
                    "common_lb_config": {},
                    "load_assignment": {"cluster_name": name, "endpoints": [{"locality": {}, "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": a, "port_value": target}}},
                         "load_balancing_weight": 1} for a in addresses], "load_balancing_weight": 1}]},
                    "typed_extension_protocol_options": {PROTOCOL_OPTIONS: options},
                    "metadata": {"filter_metadata": {"istio": {"services": [{"host": host, "name": host,
                                                                               "namespace": se["metadata"]["namespace"]}],
                                                                "external": True}}},
                }
                if spec.get("resolution") == "DNS":
                    cluster["dns_lookup_family"] = "V4_ONLY"
                    cluster["respect_dns_ttl"] = True
                tls = next((s.get("tls") for s in (dr or {}).get("trafficPolicy", {}).get("portLevelSettings", [])
                            if s["port"]["number"] == port["number"]), None)
                if tls and tls.get("mode") == "SIMPLE":
                    if not tls.get("sni"):
                        options["upstream_http_protocol_options"] = {"auto_sni": True, "auto_san_validation": True}
                    cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": tls.get("sni", ""),
                        "common_tls_context": {"validation_context": {
                            "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": s}}
                                                              for s in tls.get("subjectAltNames", [])]}}}}
                out.append(cluster)
    return out


def service_clusters(services: list[dict]) -> list[dict]:
    """The outbound clusters istiod makes for Kubernetes Services (endpoints over EDS in
    a mesh; here the Service's DNS name, which `--mode validate` does not resolve)."""
    out = []
    for svc in services:
        host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
        for port in svc["spec"]["ports"]:
            name = f"outbound|{port['port']}||{host}"
            out.append({"name": name, "type": "STRICT_DNS", "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
                        "circuit_breakers": {"thresholds": [{"max_connections": MAX, "max_pending_requests": MAX,
                                                             "max_requests": MAX, "max_retries": MAX,
                                                             "track_remaining": True}]},
                        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                            "address": {"socket_address": {"address": host, "port_value": port["port"]}}}}]}]},
                        "typed_extension_protocol_options": {PROTOCOL_OPTIONS: {
                            "@type": f"type.googleapis.com/{PROTOCOL_OPTIONS}",
                            "explicit_http_config": {"http_protocol_options": {}}}}})
    return out


def vs_routes(vs: dict) -> list[dict]:
    """The routes istiod makes for a VirtualService's http rules, named after them."""
    routes = []
    for rule in vs["spec"]["http"]:
        dest = rule["route"][0]["destination"]
        match: dict = {"prefix": "/", "case_sensitive": True}
        for m in rule.get("match", []):
            for name, how in m.get("headers", {}).items():
                match.setdefault("headers", []).append(
                    {"name": name, "present_match": True} if not how else {"name": name, "string_match": how})
        action = {"cluster": f"outbound|{dest['port']['number']}||{dest['host']}",
                  "timeout": rule.get("timeout", "0s"),
                  "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}
        policy = retry_policy(rule.get("retries"))
        if policy:
            action["retry_policy"] = policy
        routes.append({"name": rule.get("name", ""), "match": match, "route": action,
                       "metadata": {"filter_metadata": {"istio": {"config": f"/apis/networking.istio.io/v1/namespaces/{vs['metadata']['namespace']}/virtual-service/{vs['metadata']['name']}"}}},
                       "decorator": {"operation": f"{dest['host']}:{dest['port']['number']}/*"}})
    return routes


def gateway_bootstrap(resources: list[dict], listen_port: int, admin_port: int,
                      services: list[dict] = (), proxy_config: dict | None = None) -> dict:
    """An ingress gateway's Envoy configuration as istiod would give it, static;
    `proxy_config`: the Deployment's `proxy.istio.io/config` (its `proxyHeaders`)."""
    attempt_count = not (proxy_config or {}).get("proxyHeaders", {}).get("attemptCount", {}).get("disabled", False)
    (vs,) = of_kind(resources, "VirtualService")
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "outbound_0.0.0.0_8080",
        "route_config": {"name": "http.8080", "validate_clusters": False, "virtual_hosts": [
            {"name": "*:80", "domains": ["*"], "routes": vs_routes(vs), "include_request_attempt_count": attempt_count}]},
        "http_filters": [
            {"name": "envoy.filters.http.grpc_stats", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                "emit_filter_state": True, "stats_for_all_methods": False}},
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.cors", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "use_remote_address": True,
        "normalize_path": True,
    }
    listener = {"name": "0.0.0.0_8080",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                # Low, so that a test fails if the patch that raises it is lost.
                "per_connection_buffer_limit_bytes": 32768,
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": [listener],
                                 "clusters": se_clusters(of_kind(resources, "ServiceEntry"),
                                                         of_kind(resources, "DestinationRule"))
                                 + service_clusters(list(services))}}


def _hcms(cfg: dict):
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f["name"] == HCM:
                    yield f["typed_config"]


def apply_envoy_filter(cfg: dict, envoy_filter: dict) -> dict:
    """Applies an EnvoyFilter's GATEWAY patches to `cfg` (in place), in order."""
    for p in envoy_filter["spec"]["configPatches"]:
        apply_to, match, op, value = p["applyTo"], p.get("match", {}), p["patch"]["operation"], p["patch"]["value"]
        assert match.get("context") == "GATEWAY", p
        sub = match.get("listener", {}).get("filterChain", {}).get("filter", {}).get("subFilter", {}).get("name")
        if apply_to == "HTTP_FILTER":
            for h in list(_hcms(cfg)):
                filters = h["http_filters"]
                at = next((i for i, f in enumerate(filters) if f["name"] == sub), None)
                if at is None:
                    continue
                if op == "INSERT_BEFORE":
                    filters.insert(at, copy.deepcopy(value))
                elif op == "MERGE":
                    merge_typed(filters[at]["typed_config"], value["typed_config"])
                else:
                    raise ValueError(f"HTTP_FILTER {op}")
        elif apply_to == "NETWORK_FILTER" and op == "MERGE":
            for h in list(_hcms(cfg)):
                merge_typed(h, value["typed_config"])
        elif apply_to == "LISTENER" and op == "MERGE":
            for listener in cfg["static_resources"]["listeners"]:
                merge(listener, value)
        elif apply_to == "LISTENER" and op == "ADD":
            cfg["static_resources"]["listeners"].append(copy.deepcopy(value))
        elif apply_to == "CLUSTER" and op == "MERGE":
            name = match["cluster"]["name"]
            found = [c for c in cfg["static_resources"]["clusters"] if c["name"] == name]
            assert found, f"the patch names cluster {name}, which Istio does not make here"
            for c in found:
                merge(c, value)
        elif apply_to == "CLUSTER" and op == "ADD":
            cfg["static_resources"]["clusters"].append(copy.deepcopy(value))
        elif apply_to == "VIRTUAL_HOST" and op == "MERGE":
            name = match["routeConfiguration"]["vhost"]["name"]
            hits = [v for h in _hcms(cfg) for v in h.get("route_config", {}).get("virtual_hosts", [])
                    if v["name"] == name]
            assert hits, f"the patch names virtual host {name}, which the Gateway does not make"
            for vhost in hits:
                merge(vhost, value)
        elif apply_to == "HTTP_ROUTE" and op == "MERGE":
            name = match["routeConfiguration"]["vhost"]["route"]["name"]
            hits = 0
            for h in _hcms(cfg):
                for vhost in h.get("route_config", {}).get("virtual_hosts", []):
                    for route in vhost["routes"]:
                        if route.get("name") == name:
                            merge(route, value)
                            hits += 1
            assert hits, f"the patch names route {name}, which the VirtualService does not make"
        else:
            raise ValueError(f"{apply_to} {op} is not simulated")
    return cfg


def proxy_config(gateway_patch: str | None) -> dict:
    """The `proxy.istio.io/config` annotation of `render --istio --gateway-patch`."""
    if not gateway_patch:
        return {}
    patch = yaml.safe_load(gateway_patch)
    return yaml.safe_load(patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])


def istio_envoy_config(rendered: str, listen_port: int, admin_port: int, ops_port: int, wasm: Path,
                       services: list[dict] = (), patched: bool = True, gateway_patch: str | None = None) -> dict:
    """The Envoy configuration of a gateway running `render --istio`'s resources (and
    in-mesh `services`, Kubernetes Service manifests): the module from `wasm` (the
    ConfigMap mount), the health view on `ops_port`. `patched=False`: without the
    EnvoyFilter and the gateway patch, the gateway as Istio alone makes it (the
    benchmark's baseline)."""
    resources = docs(rendered)
    cfg = gateway_bootstrap(resources, listen_port, admin_port, services,
                            proxy_config(gateway_patch) if patched else None)
    for ef in of_kind(resources, "EnvoyFilter") if patched else []:
        apply_envoy_filter(cfg, ef)
    for cm in of_kind(resources, "ConfigMap") if patched else []:
        if "custom_bootstrap.json" in cm.get("data", {}):
            # pilot-agent hands the mounted custom bootstrap to Envoy (--config-yaml):
            # merged into the one it generates.
            assert gateway_patch is None or "ISTIO_BOOTSTRAP_OVERRIDE" in gateway_patch, \
                "the gateway patch does not point pilot-agent at the custom bootstrap"
            merge(cfg, json.loads(cm["data"]["custom_bootstrap.json"]))
    text = json.dumps(cfg)
    text = text.replace('"/var/lib/llm-failover/llm_failover.wasm"', json.dumps(str(wasm)))
    cfg = json.loads(text)
    for listener in cfg["static_resources"]["listeners"]:
        if listener["name"] == "ops":
            listener["address"]["socket_address"]["port_value"] = ops_port
    return cfg
