//! `render --istio`: router mode in an Istio mesh (1.31+, Envoy 1.39+), as Istio
//! resources instead of a bootstrap. The routing is the same as plain Envoy's (the
//! matcher cluster specifier on the filter's filter-state key, `refresh_cluster_on_retry`);
//! what differs is how it reaches Envoy (see docs/istio.md):
//!
//! - the filter on the gateway's listener and on every provider cluster comes from
//!   one `EnvoyFilter`, not a `WasmPlugin`: both instances must share a `vm_id` (their
//!   shared data is the providers' health) and the downstream one needs
//!   `allow_on_headers_stop_iteration`, neither of which a `WasmPlugin` can set. The
//!   module is a local file (istio-agent fetches modules only for `WasmPlugin`s), from
//!   a ConfigMap mounted into the gateway;
//! - Istio has no patch for upstream HTTP filters: a `CLUSTER` `MERGE` sets the
//!   cluster's `HttpProtocolOptions`, and because Istio's merge replaces that map entry
//!   whole, the patch restates what Istio puts there for these clusters (the HTTP/1.1
//!   protocol; the `DestinationRule` names SNI and SAN, so Istio adds no `auto_sni`);
//! - the `VirtualService` gives the routes (names the patches match, retries, no
//!   timeout) and an `HTTP_ROUTE` `MERGE` adds the cluster
//!   specifier and the rest of the retry policy. Istio's merge appends lists, so the
//!   patch carries only lists the route does not have yet.

use crate::ENV_STAND_IN;
use llm_failover_core::config::{Config, Mode, Provider};
use llm_failover_core::names;
use serde_json::{json, Map, Value};

use crate::bootstrap::{self, Filters, Options};
use crate::{clusters, routes};

/// Where the gateway mounts the module (the ConfigMap `llm-failover-wasm`).
pub const WASM_DIR: &str = "/var/lib/llm-failover";
const WASM_FILE: &str = "llm_failover.wasm";
const CONFIGMAP: &str = "llm-failover-wasm";
/// The ConfigMap of the bootstrap override (the metrics' labels).
const BOOTSTRAP_CONFIGMAP: &str = "llm-failover-bootstrap";
/// The health view's listener, on the gateway pod's loopback.
const OPS: &str = "127.0.0.1:15902";
/// The routes' names in the VirtualService (what the route patches match).
const ROUTE: &str = "llm-failover";
const STREAMED_ROUTE: &str = "llm-failover-streamed";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub struct IstioOptions {
    pub namespace: String,
    /// The gateway workload's label (`istio=ingressgateway`).
    pub selector: (String, String),
    /// The gateway's server port (what clients reach).
    pub port: u16,
}

impl Default for IstioOptions {
    fn default() -> Self {
        Self {
            namespace: "istio-system".to_string(),
            selector: ("istio".to_string(), "ingressgateway".to_string()),
            port: 80,
        }
    }
}

/// A provider's Istio cluster, from the plugin configuration's `cluster`:
/// `outbound|<port>|<subset>|<host>`.
struct IstioCluster<'a> {
    port: u16,
    host: &'a str,
}

fn istio_cluster(index: usize, p: &Provider) -> Result<IstioCluster<'_>, String> {
    let expected = match &p.endpoint {
        Some(ep) => format!("outbound|{}||{}", service_port(ep), ep.host),
        None => "outbound|<port>||<host>".to_string(),
    };
    let wrong = || {
        format!(
            "providers[{index}] ({}): cluster {:?} is not an Istio cluster; in Istio it is {expected}{}",
            p.name,
            p.cluster,
            if p.endpoint.is_some() {
                " (the ServiceEntry's cluster for its endpoint; an https endpoint is reached on port 80 and the DestinationRule originates TLS)"
            } else {
                ""
            }
        )
    };
    let parts: Vec<&str> = p.cluster.split('|').collect();
    let [direction, port, _subset, host] = parts.as_slice() else {
        return Err(wrong());
    };
    let port: u16 = port.parse().map_err(|_| wrong())?;
    if *direction != "outbound" || host.is_empty() {
        return Err(wrong());
    }
    if p.endpoint.is_some() && p.cluster != expected {
        return Err(wrong());
    }
    Ok(IstioCluster { port, host })
}

/// The ServiceEntry port of an endpoint: plain HTTP from the gateway (port 80 for an
/// https endpoint, whose TLS the DestinationRule originates).
fn service_port(ep: &llm_failover_core::config::Endpoint) -> u16 {
    if ep.tls {
        80
    } else {
        ep.port
    }
}

/// The Istio resources for a plugin configuration, in apply order, and the patch of
/// the gateway's Deployment (applied with `kubectl patch`, not `apply`).
pub fn render(raw: &str, o: &IstioOptions) -> Result<(Vec<Value>, Value), String> {
    let config = Config::parse(raw.as_bytes(), &|_| Some(ENV_STAND_IN.to_string()))
        .map_err(|e| e.to_string())?;
    if config.failover.mode != Mode::Router {
        return Err(
            "render --istio builds the router-mode wiring; this configuration sets \
             failover.mode \"dispatch\" (k8s/istio/dispatch/ shows that wiring)"
                .to_string(),
        );
    }
    if config.providers.is_empty() {
        return Err("render --istio: the configuration has no providers".to_string());
    }
    let mut clusters: Vec<&Provider> = Vec::new();
    for p in &config.providers {
        if !clusters.iter().any(|c| c.cluster == p.cluster) {
            clusters.push(p);
        }
    }
    for (i, p) in config.providers.iter().enumerate() {
        istio_cluster(i, p)?;
    }
    // The health view on the pod's loopback (`kubectl port-forward`), as render's
    // plain-Envoy wiring has it.
    let options = Options {
        wasm: format!("{WASM_DIR}/{WASM_FILE}"),
        ops: bootstrap::address(OPS, "ops")?,
        ..Options::default()
    };
    let filters = Filters::new(&config, &options, raw);
    let mut docs = vec![gateway(o), virtual_service(&config, o, &clusters)?];
    docs.extend(service_entries(&config, o));
    docs.push(envoy_filter(&config, o, &options, &filters, &clusters));
    docs.push(bootstrap_override(o)?);
    docs.extend(secrets(&config, o));
    Ok((docs, gateway_patch(&config)))
}

fn meta(name: &str, o: &IstioOptions) -> Value {
    json!({"name": name, "namespace": o.namespace})
}

fn selector(o: &IstioOptions) -> Value {
    json!({o.selector.0.clone(): o.selector.1})
}

fn gateway(o: &IstioOptions) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": meta("llm-gateway", o),
        "spec": {
            "selector": selector(o),
            "servers": [{"port": {"number": o.port, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
        },
    })
}

/// The routes clients hit. The destination is only the first provider (what Envoy
/// uses without the filter's word); the route patch makes Envoy pick each attempt's
/// cluster from the filter state the filter sets.
fn virtual_service(
    config: &Config,
    o: &IstioOptions,
    clusters: &[&Provider],
) -> Result<Value, String> {
    let first = istio_cluster(0, clusters[0])?;
    let rendered = routes::routes(config, clusters, "wasm.");
    let mut http = Vec::new();
    for r in &rendered {
        let streamed = r["match"].get("headers").is_some();
        let retry = &r["route"]["retry_policy"];
        let mut rule = json!({
            "name": if streamed { STREAMED_ROUTE } else { ROUTE },
            "route": [{"destination": {"host": first.host, "port": {"number": first.port}}}],
            // No limit on the whole request (an LLM stream may run for minutes); each
            // attempt's wait for its headers is the retries' perTryTimeout.
            "timeout": "0s",
            "retries": {
                "attempts": retry["num_retries"],
                "perTryTimeout": retry["per_try_timeout"].as_str().map(|s| s.to_string()),
                // The status codes come from the route patch (591, the filter's mark):
                // Istio's merge appends lists, so only one of the two may carry them.
                "retryOn": "retriable-status-codes,connect-failure,reset",
                // Istio also adds its previous-hosts predicate (no field of the Istio
                // API this targets takes it off): harmless, since a provider's cluster
                // has one host, and a retry to the same provider takes it again after
                // Istio's host_selection_retry_max_attempts.
            },
        });
        if streamed {
            rule["match"] = json!([{"headers": {names::STREAMED_HEADER: {}}}]);
        }
        http.push(rule);
    }
    Ok(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta("llm-failover", o),
        "spec": {"hosts": ["*"], "gateways": ["llm-gateway"], "http": http},
    }))
}

/// A ServiceEntry per provider endpoint host (reached over plain HTTP from the
/// gateway) and, for an https endpoint, the DestinationRule that originates TLS with
/// the host's name as SNI and as the certificate's expected SAN.
fn service_entries(config: &Config, o: &IstioOptions) -> Vec<Value> {
    let mut hosts: Vec<&llm_failover_core::config::Endpoint> = Vec::new();
    for ep in config.providers.iter().filter_map(|p| p.endpoint.as_ref()) {
        if !hosts
            .iter()
            .any(|h| h.host == ep.host && h.port == ep.port && h.tls == ep.tls)
        {
            hosts.push(ep);
        }
    }
    let mut docs = Vec::new();
    for ep in hosts {
        let name = format!("{}-{}", ep.host.replace('.', "-"), ep.port);
        let mut port =
            json!({"number": service_port(ep), "name": format!("http-{name}"), "protocol": "HTTP"});
        if ep.tls {
            port["targetPort"] = json!(ep.port);
        }
        let is_ip = ep.host.parse::<std::net::IpAddr>().is_ok();
        // Seen from this namespace only: not every sidecar's traffic to the host gets
        // this TLS origination.
        let mut spec = json!({
            "hosts": [ep.host],
            "exportTo": ["."],
            "location": "MESH_EXTERNAL",
            "resolution": if is_ip { "STATIC" } else { "DNS" },
            "ports": [port],
        });
        if is_ip {
            spec["endpoints"] = json!([{"address": ep.host}]);
        }
        docs.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": meta(&name, o),
            "spec": spec,
        }));
        if ep.tls {
            docs.push(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": meta(&name, o),
                "spec": {
                    "host": ep.host,
                    "exportTo": ["."],
                    "trafficPolicy": {"portLevelSettings": [{
                        "port": {"number": 80},
                        "tls": {"mode": "SIMPLE", "sni": ep.host, "subjectAltNames": [ep.host]},
                    }]},
                },
            }));
        }
    }
    docs
}

fn gateway_match() -> Value {
    json!({"context": "GATEWAY", "listener": {"filterChain": {"filter": {
        "name": "envoy.filters.network.http_connection_manager",
        "subFilter": {"name": "envoy.filters.http.router"},
    }}}})
}

/// The patches: the filter on the listener and on every provider cluster, the
/// routes' cluster specifier and retries, the used-up plan's cluster, and the
/// listener settings router mode relies on.
fn envoy_filter(
    config: &Config,
    o: &IstioOptions,
    options: &Options,
    filters: &Filters,
    clusters: &[&Provider],
) -> Value {
    let mut patches = vec![
        json!({
            "applyTo": "HTTP_FILTER",
            "match": gateway_match(),
            "patch": {"operation": "INSERT_BEFORE", "value": filters.downstream},
        }),
        json!({
            // Providers get none of the router's x-envoy-* headers (expected timeout), as
            // with render's own router. (The attempt count is the vhost's: the gateway
            // patch turns it off through the proxy's config.)
            "applyTo": "HTTP_FILTER",
            "match": gateway_match(),
            "patch": {"operation": "MERGE", "value": {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": true,
                },
            }},
        }),
        json!({
            // A stream the gateway ends reaches the client at once; the JSON access
            // log with the filter's fields (added beside Istio's own).
            "applyTo": "NETWORK_FILTER",
            "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {
                "name": "envoy.filters.network.http_connection_manager"}}}},
            "patch": {"operation": "MERGE", "value": {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "delayed_close_timeout": "0s",
                    "access_log": routes::access_log("wasm."),
                },
            }},
        }),
        json!({
            // Request bodies are buffered (checked here, replayed on a retry).
            "applyTo": "LISTENER",
            "match": {"context": "GATEWAY"},
            "patch": {"operation": "MERGE", "value": {
                "per_connection_buffer_limit_bytes": config.max_body_bytes.max(1 << 20) + 65_536,
            }},
        }),
    ];
    patches.push(json!({
        "applyTo": "LISTENER",
        "match": {"context": "GATEWAY"},
        "patch": {"operation": "ADD", "value": bootstrap::ops_listener(options, filters)},
    }));
    let upstream_filters = json!([
        filters.upstream,
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}},
    ]);
    for p in clusters {
        let mut value = json!({"typed_extension_protocol_options": {HTTP_PROTOCOL_OPTIONS: {
            "@type": format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
            // Restated: Istio's merge replaces this map entry whole, and Istio puts
            // HTTP/1.1 here for these HTTP ports (and nothing else: the
            // DestinationRule names SNI and SAN itself).
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": upstream_filters,
        }}});
        if p.endpoint
            .as_ref()
            .is_some_and(|ep| ep.host.parse::<std::net::IpAddr>().is_err())
        {
            // Appended to Istio's endpoints (lists are appended): the stand-in for no
            // healthy host, as render gives every cluster (clusters.rs).
            value["load_assignment"] = json!({"endpoints": [
                {"priority": 1, "lb_endpoints": [{"endpoint": {"address": clusters::no_healthy_host(true)}}]},
            ]});
        }
        patches.push(json!({
            "applyTo": "CLUSTER",
            "match": {"context": "GATEWAY", "cluster": {"name": p.cluster}},
            "patch": {"operation": "MERGE", "value": value},
        }));
    }
    let exhausted = clusters::exhausted();
    patches.push(json!({
        "applyTo": "CLUSTER",
        "match": {"context": "GATEWAY"},
        "patch": {"operation": "ADD", "value": exhausted},
    }));
    for r in routes::routes(config, clusters, "wasm.") {
        let streamed = r["match"].get("headers").is_some();
        let retry = &r["route"]["retry_policy"];
        let mut retry_patch = Map::new();
        for key in [
            "retriable_status_codes",
            "retry_back_off",
            "refresh_cluster_on_retry",
            "rate_limited_retry_back_off",
            "per_try_idle_timeout",
        ] {
            if let Some(v) = retry.get(key) {
                retry_patch.insert(key.to_string(), v.clone());
            }
        }
        patches.push(json!({
            "applyTo": "HTTP_ROUTE",
            "match": {"context": "GATEWAY", "routeConfiguration": {"vhost": {"route": {
                "name": if streamed { STREAMED_ROUTE } else { ROUTE }}}}},
            "patch": {"operation": "MERGE", "value": {
                "request_headers_to_remove": r["request_headers_to_remove"],
                "response_headers_to_remove": r["response_headers_to_remove"],
                "route": {
                    "inline_cluster_specifier_plugin": r["route"]["inline_cluster_specifier_plugin"],
                    "retry_policy": retry_patch,
                },
            }},
        }));
    }
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": meta("llm-failover", o),
        "spec": {"workloadSelector": {"labels": selector(o)}, "configPatches": patches},
    })
}

/// Istio's custom bootstrap (mounted into the gateway, `ISTIO_BOOTSTRAP_OVERRIDE`):
/// the tags that turn the filter's metric names into Prometheus labels, as render's
/// bootstrap has them.
fn bootstrap_override(o: &IstioOptions) -> Result<Value, String> {
    let custom = json!({"stats_config": {"stats_tags": bootstrap::stats_tags()}});
    let text = serde_json::to_string_pretty(&custom).map_err(|e| e.to_string())?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(BOOTSTRAP_CONFIGMAP, o),
        "data": {"custom_bootstrap.json": text + "\n"},
    }))
}

/// A Secret per API-key variable (placeholders: create them from the real keys).
fn secrets(config: &Config, o: &IstioOptions) -> Vec<Value> {
    bootstrap::key_vars(config)
        .into_iter()
        .map(|var| {
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta(&secret_name(var), o),
                "type": "Opaque",
                "stringData": {var: "replace-me"},
            })
        })
        .collect()
}

fn secret_name(var: &str) -> String {
    format!("llm-failover-{}", var.to_lowercase().replace('_', "-"))
}

/// Where the gateway reads Istio's custom bootstrap (pilot-agent's
/// `ISTIO_BOOTSTRAP_OVERRIDE`; the `bootstrapOverride` annotation is the sidecar
/// injector's and does nothing on a gateway).
const BOOTSTRAP_DIR: &str = "/etc/istio/custom-bootstrap";

/// A strategic-merge patch for the gateway's Deployment: the keys in the proxy's
/// environment, the module mounted from its ConfigMap, the custom bootstrap (the
/// metrics' labels), the filter's metrics in the proxy's stats (Istio keeps only its
/// own by default), and no `x-envoy-attempt-count` to providers.
fn gateway_patch(config: &Config) -> Value {
    let mut env: Vec<Value> = bootstrap::key_vars(config)
        .into_iter()
        .map(|var| {
            json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name(var), "key": var}}})
        })
        .collect();
    env.push(json!({"name": "ISTIO_BOOTSTRAP_OVERRIDE", "value": format!("{BOOTSTRAP_DIR}/custom_bootstrap.json")}));
    json!({"spec": {"template": {
        "metadata": {"annotations": {
            "proxy.istio.io/config": "proxyStatsMatcher:\n  inclusionPrefixes: [\"wasmcustom\"]\nproxyHeaders:\n  attemptCount:\n    disabled: true\n",
        }},
        "spec": {
            "containers": [{
                "name": "istio-proxy",
                "env": env,
                "volumeMounts": [
                    {"name": CONFIGMAP, "mountPath": WASM_DIR, "readOnly": true},
                    {"name": BOOTSTRAP_CONFIGMAP, "mountPath": BOOTSTRAP_DIR, "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": CONFIGMAP, "configMap": {"name": CONFIGMAP}},
                {"name": BOOTSTRAP_CONFIGMAP, "configMap": {"name": BOOTSTRAP_CONFIGMAP}},
            ],
        },
    }}})
}

/// Documents as one YAML stream, `---` before each.
pub fn to_yaml(docs: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"groups":[
        {"providers":[{"name":"a","cluster":"outbound|8000||mock.llm.svc.cluster.local"}]},
        {"providers":[{"name":"b","cluster":"outbound|80||api.openai.com","endpoint":"https://api.openai.com",
                       "policies":{"auth":{"key":{"env":"OPENAI_API_KEY"}}}}]}],
        "failover":{"firstTokenTimeout":"3s"}}"#;

    fn kinds(docs: &[Value]) -> Vec<&str> {
        docs.iter().filter_map(|d| d["kind"].as_str()).collect()
    }

    fn patches<'a>(docs: &'a [Value], apply_to: &str) -> Vec<&'a Value> {
        let ef = docs.iter().find(|d| d["kind"] == "EnvoyFilter").unwrap();
        ef["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["applyTo"] == apply_to)
            .collect()
    }

    #[test]
    fn the_resources_cover_routes_providers_filters_and_keys() {
        let (docs, patch) = render(CONFIG, &IstioOptions::default()).unwrap();
        assert_eq!(
            kinds(&docs),
            [
                "Gateway",
                "VirtualService",
                "ServiceEntry",
                "DestinationRule",
                "EnvoyFilter",
                "ConfigMap",
                "Secret"
            ]
        );
        // TLS to the https provider: originated by the DestinationRule, with the name
        // as SNI and SAN, so Istio adds no auto_sni the cluster patch would drop.
        let dr = &docs[3]["spec"]["trafficPolicy"]["portLevelSettings"][0];
        assert_eq!(dr["port"]["number"], 80);
        assert_eq!(
            dr["tls"],
            json!({"mode": "SIMPLE", "sni": "api.openai.com", "subjectAltNames": ["api.openai.com"]})
        );
        assert_eq!(docs[2]["spec"]["ports"][0]["targetPort"], 443);
        let env = &patch["spec"]["template"]["spec"]["containers"][0]["env"][0];
        assert_eq!(
            env["valueFrom"]["secretKeyRef"]["name"],
            "llm-failover-openai-api-key"
        );
    }

    #[test]
    fn every_provider_cluster_gets_the_upstream_filter_with_its_protocol_restated() {
        let (docs, _) = render(CONFIG, &IstioOptions::default()).unwrap();
        let clusters = patches(&docs, "CLUSTER");
        let merged: Vec<_> = clusters
            .iter()
            .filter(|p| p["patch"]["operation"] == "MERGE")
            .collect();
        assert_eq!(merged.len(), 2);
        for p in &merged {
            let options =
                &p["patch"]["value"]["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS];
            assert_eq!(
                options["explicit_http_config"],
                json!({"http_protocol_options": {}})
            );
            assert_eq!(
                options["http_filters"][0]["typed_config"]["config"]["root_id"],
                "llm_failover_upstream"
            );
            assert_eq!(
                options["http_filters"][1]["name"],
                "envoy.filters.http.upstream_codec"
            );
        }
        assert_eq!(
            merged[1]["match"]["cluster"]["name"],
            "outbound|80||api.openai.com"
        );
        // Only a DNS ServiceEntry's endpoints are in the cluster to append the stand-in to.
        assert!(merged[0]["patch"]["value"].get("load_assignment").is_none());
        assert_eq!(
            merged[1]["patch"]["value"]["load_assignment"]["endpoints"][0]["priority"],
            1
        );
        let added: Vec<_> = clusters
            .iter()
            .filter(|p| p["patch"]["operation"] == "ADD")
            .collect();
        assert_eq!(added[0]["patch"]["value"]["name"], names::EXHAUSTED_CLUSTER);
    }

    #[test]
    fn the_routes_get_the_specifier_and_the_lists_only_once() {
        let (docs, _) = render(CONFIG, &IstioOptions::default()).unwrap();
        let vs = &docs[1]["spec"]["http"];
        assert_eq!(vs[0]["name"], STREAMED_ROUTE);
        assert_eq!(vs[1]["name"], ROUTE);
        assert_eq!(
            vs[0]["retries"]["retryOn"],
            "retriable-status-codes,connect-failure,reset"
        );
        let routes = patches(&docs, "HTTP_ROUTE");
        assert_eq!(routes.len(), 2);
        let streamed = &routes[0]["patch"]["value"]["route"];
        assert!(
            streamed["inline_cluster_specifier_plugin"]["extension"]["typed_config"]["@type"]
                .as_str()
                .unwrap()
                .ends_with("MatcherClusterSpecifier")
        );
        assert_eq!(
            streamed["retry_policy"]["retriable_status_codes"],
            json!([names::RETRY_STATUS])
        );
        assert_eq!(streamed["retry_policy"]["per_try_idle_timeout"], "3s");
        assert_eq!(streamed["retry_policy"]["refresh_cluster_on_retry"], true);
        // What the VirtualService carries is not in the patch (a list would be doubled).
        assert!(streamed["retry_policy"].get("num_retries").is_none());
    }

    #[test]
    fn a_cluster_that_is_not_istios_is_named_with_what_it_should_be() {
        let bad = r#"{"groups":[{"providers":[{"name":"b","cluster":"openai","endpoint":"https://api.openai.com"}]}]}"#;
        let err = render(bad, &IstioOptions::default()).unwrap_err();
        assert!(
            err.contains("providers[0] (b): cluster \"openai\""),
            "{err}"
        );
        assert!(err.contains("outbound|80||api.openai.com"), "{err}");
        let other_port = r#"{"groups":[{"providers":[{"name":"b","cluster":"outbound|443||api.openai.com","endpoint":"https://api.openai.com"}]}]}"#;
        assert!(render(other_port, &IstioOptions::default()).is_err());
        let dispatch = r#"{"groups":[{"providers":[{"name":"a","cluster":"outbound|80||a"}]}],"failover":{"mode":"dispatch"}}"#;
        assert!(render(dispatch, &IstioOptions::default())
            .unwrap_err()
            .contains("dispatch"));
    }
}
