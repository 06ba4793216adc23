//! Builds the Envoy bootstrap for a plugin configuration (router mode wiring).

use llm_failover_core::config::{Config, Mode, Provider};
use llm_failover_core::names;

use crate::ENV_STAND_IN;
use crate::{clusters, routes};
use serde_json::{json, Value};

/// The default `.wasm` path, relative to the directory Envoy runs in.
const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/llm_failover.wasm";
/// The default native module path (`--native`), relative to the directory Envoy runs in.
const DEFAULT_MODULE: &str = "target/release-native/libllm_failover_native.so";
/// Where the ops listener serves the health view.
const HEALTH_PATH: &str = "/llm-failover/health";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

pub struct Options {
    pub listen: Address,
    pub admin: Address,
    pub ops: Address,
    pub wasm: String,
    /// The native module instead of the `.wasm` (Envoy 1.40's dynamic modules).
    pub native: bool,
    pub module: String,
}

impl Default for Options {
    fn default() -> Self {
        let at = |port| Address {
            host: "127.0.0.1".to_string(),
            port,
        };
        Self {
            listen: at(10000),
            admin: at(9901),
            ops: at(9902),
            wasm: DEFAULT_WASM.to_string(),
            native: false,
            module: DEFAULT_MODULE.to_string(),
        }
    }
}

/// Parses `HOST:PORT` for the option `flag`.
pub fn address(text: &str, flag: &str) -> Result<Address, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{flag} {text:?}: expected HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{flag} {text:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{flag} {text:?}: no host"));
    }
    Ok(Address {
        host: host.to_string(),
        port,
    })
}

fn socket(a: &Address) -> Value {
    json!({"socket_address": {"address": a.host, "port_value": a.port}})
}

/// The rendered bootstrap and warnings for the user.
pub fn render(raw: &str, options: &Options) -> Result<(Value, Vec<String>), String> {
    // The key's value is the VM's business: render only needs the variable's name.
    let config = Config::parse(raw.as_bytes(), &|_| Some(ENV_STAND_IN.to_string()))
        .map_err(|e| e.to_string())?;
    if config.failover.mode != Mode::Router {
        return Err(
            "render builds the router-mode wiring; this configuration sets failover.mode \
             \"dispatch\" (route it with cluster_header as the README shows)"
                .to_string(),
        );
    }
    // One cluster (and one priority group) per distinct cluster name, in provider order.
    let mut clusters: Vec<&Provider> = Vec::new();
    for p in &config.providers {
        if !clusters.iter().any(|c| c.cluster == p.cluster) {
            clusters.push(p);
        }
    }
    let filters = Filters::new(&config, options, raw);
    // Filter state keys: proxy-wasm prefixes the filter's own with `wasm.`.
    let prefix = if options.native { "" } else { "wasm." };
    let routes = routes::routes(&config, &clusters, prefix);
    let listeners = listeners(&config, options, &filters, routes, prefix);
    let upstream_filters = json!([
        filters.upstream,
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}},
    ]);
    let mut warnings = Vec::new();
    let clusters = clusters::clusters(&clusters, &upstream_filters, &mut warnings);
    let mut doc = json!({
        "admin": {"address": socket(&options.admin)},
        "stats_config": {"stats_tags": stats_tags()},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    if options.native {
        // The module's stats are `dynamicmodulescustom.<name>`; with this guard Envoy
        // registers that namespace as a custom one, so Prometheus shows the wasm
        // build's names (`llm_failover_requests`, not
        // `envoy_dynamicmodulescustom_llm_failover_requests`). Measured on 1.40.
        doc["layered_runtime"] = json!({"layers": [{
            "name": "llm_failover",
            "static_layer": {
                "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix": true,
            },
        }]});
    }
    Ok((doc, warnings))
}

/// The three filter instances: on the clients' listener, on the operators' listener
/// (the health view) and on each provider cluster.
pub(crate) struct Filters {
    pub(crate) downstream: Value,
    ops: Value,
    pub(crate) upstream: Value,
}

impl Filters {
    pub(crate) fn new(config: &Config, options: &Options, raw: &str) -> Self {
        // The view reads the providers the routing filter publishes: no copy.
        let ops_raw = json!({"healthPath": HEALTH_PATH}).to_string();
        if options.native {
            return Filters {
                downstream: native(options, names::ROOT_ID, raw),
                ops: native(options, names::ROOT_ID, &ops_raw),
                upstream: native(options, names::UPSTREAM_ROOT_ID, raw),
            };
        }
        let vms = Vms::new(config, options);
        // The downstream filter holds a request's headers until it has read the body
        // (which says whether the answer is streamed, and so the route): with this,
        // proxy-wasm's Pause is a plain StopIteration and the body still comes.
        let mut downstream = plugin(&vms.downstream, "llm_failover", names::ROOT_ID, raw);
        downstream["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
        Filters {
            downstream,
            ops: plugin(
                &vms.downstream,
                "llm_failover_ops",
                names::ROOT_ID,
                &ops_raw,
            ),
            upstream: plugin(
                &vms.upstream,
                "llm_failover_upstream",
                names::UPSTREAM_ROOT_ID,
                raw,
            ),
        }
    }
}

/// The native module as the filter `filter_name` (`llm_failover` or
/// `llm_failover_upstream`, as the wasm filter's root ids).
fn native(options: &Options, filter_name: &str, configuration: &str) -> Value {
    json!({
        "name": format!("{filter_name}_native"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "name": "llm_failover_native",
                "module": {"local": {"filename": options.module}},
            },
            "filter_name": filter_name,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": configuration,
            },
        },
    })
}

/// The VM configurations of the two filters.
struct Vms {
    downstream: Value,
    /// The upstream filter runs in a VM of its own (same vm_id, so the same shared
    /// data): a hedge's call starts its upstream filter from inside the downstream
    /// VM's tick, which one VM cannot take (see the core's contexts/hedging.rs).
    upstream: Value,
}

impl Vms {
    fn new(config: &Config, options: &Options) -> Self {
        let env_keys = key_vars(config);
        let downstream = json!({
            "vm_id": names::ROOT_ID,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": options.wasm}},
            "environment_variables": {"host_env_keys": env_keys},
        });
        let mut upstream = downstream.clone();
        if let Some(obj) = upstream.as_object_mut() {
            obj.insert(
                "configuration".to_string(),
                json!({
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": "upstream",
                }),
            );
        }
        Vms {
            downstream,
            upstream,
        }
    }
}

/// The environment variables the providers' keys come from, and the per-request
/// control secret's, each once, in order.
pub(crate) fn key_vars(config: &Config) -> Vec<&str> {
    let mut vars: Vec<&str> = Vec::new();
    for var in config
        .providers
        .iter()
        .filter_map(|p| p.auth_env.as_deref())
        .chain(config.control.as_ref().map(|c| c.secret_env.as_str()))
    {
        if !vars.contains(&var) {
            vars.push(var);
        }
    }
    vars
}

/// The wasm filter `name` with root `root_id` in `vm_config`.
fn plugin(vm_config: &Value, name: &str, root_id: &str, configuration: &str) -> Value {
    let mut plugin = json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": root_id,
                // A VM that panics is reloaded instead of failing every later request,
                // after 10 ms (Envoy's default 1 s fails every request meanwhile),
                // backing off to 1 s if it keeps failing. (A 1 ms base crashed Envoy
                // 1.40 with SIGFPE at the reload, measured.)
                "failure_policy": "FAIL_RELOAD",
                "reload_config": {"backoff": {"base_interval": "0.01s", "max_interval": "1s"}},
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        },
    });
    if root_id == names::UPSTREAM_ROOT_ID {
        // The upstream filter holds a failing answer's headers until it has read
        // the error body (and a stream's until its first event): with this, proxy-wasm's
        // Pause is a plain StopIteration and the body callbacks still come (without
        // it, the attempt would hang).
        plugin["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
    }
    plugin
}

/// The router, as both listeners use it.
fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            // Providers get no x-envoy-* headers from the gateway (expected timeout,
            // attempt count); clients none of Envoy's timing headers.
            "suppress_envoy_headers": true,
        },
    })
}

/// The listeners: the clients' (the filter, the routes, the access log) and the
/// operators' (the health view only).
fn listeners(
    config: &Config,
    options: &Options,
    filters: &Filters,
    routes: Vec<Value>,
    prefix: &str,
) -> Value {
    let buffer_limit = config.max_body_bytes.max(1 << 20) + 65_536;
    json!([
        {
            "name": "llm",
            "address": socket(&options.listen),
            // Request bodies are buffered (checked here, replayed on a retry).
            "per_connection_buffer_limit_bytes": buffer_limit,
            "filter_chains": hcm("llm", json!(routes), vec![
                filters.downstream.clone(),
                router(),
            ], Some(&routes::access_log(prefix))),
        },
        ops_listener(options, filters),
    ])
}

/// The operators' listener: only the health view. Same filter and vm_id, so it reads
/// the same health; ordinary clients cannot reach it.
pub(crate) fn ops_listener(options: &Options, filters: &Filters) -> Value {
    json!({
        "name": "ops",
        "address": socket(&options.ops),
        "filter_chains": hcm("ops", json!([{
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "only /llm-failover/health here\n"}},
        }]), vec![
            filters.ops.clone(),
            router(),
        ], None),
    })
}

/// One HTTP connection manager's filter chain.
fn hcm(stat_prefix: &str, routes: Value, filters: Vec<Value>, log: Option<&Value>) -> Value {
    let mut h = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}]},
        "http_filters": filters,
        // A stream the gateway ends (a provider's broken or stalled stream) reaches
        // the client at once: Envoy's default waits up to 1 s for the client to
        // close first (measured: the SDK raised 1.0 s later).
        "delayed_close_timeout": "0s",
    });
    if let (Some(log), Some(obj)) = (log, h.as_object_mut()) {
        obj.insert("access_log".to_string(), log.clone());
    }
    json!([{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": h,
    }]}])
}

/// Prometheus labels from the filter's metric names (README: "Metrics").
pub(crate) fn stats_tags() -> Value {
    json!([
        {"tag_name": "provider", "regex": r"^wasmcustom\.llm_failover\.(?:requests|cooldowns|health|errors)(\.provider\.([^.]+))"},
        {"tag_name": "class", "regex": r"^wasmcustom\.llm_failover\.errors\.provider\.[^.]+(\.class\.([^.]+))$"},
        {"tag_name": "status_class", "regex": r"^wasmcustom\.llm_failover\.requests\.provider\.[^.]+(\.status\.([^.]+))$"},
        {"tag_name": "from", "regex": r"^wasmcustom\.llm_failover\.(?:failovers|hedges)(\.from\.([^.]+))"},
        {"tag_name": "to", "regex": r"^wasmcustom\.llm_failover\.(?:failovers|hedges)\.from\.[^.]+(\.to\.([^.]+))"},
        {"tag_name": "winner", "regex": r"^wasmcustom\.llm_failover\.hedges\.from\.[^.]+\.to\.[^.]+(\.winner\.([^.]+))$"},
        {"tag_name": "reason", "regex": r"^wasmcustom\.llm_failover\.(?:failovers\.from\.[^.]+\.to\.[^.]+|cooldowns\.provider\.[^.]+)(\.reason\.([^.]+))$"},
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::NO_HEALTHY_HOST_PIPE;

    const CONFIG: &str = r#"{"groups":[
        {"providers":[{"name":"a","cluster":"ca","endpoint":"http://127.0.0.1:8000"}]},
        {"providers":[{"name":"b","cluster":"cb","endpoint":"https://api.openai.com",
                       "policies":{"auth":{"key":{"env":"OPENAI_API_KEY"}}}}]}],
        "failover":{"onStatus":[429,503],"attemptTimeout":"2.5s"}}"#;

    #[test]
    fn clusters_come_from_endpoints_with_tls_for_https() {
        let (doc, warnings) = render(CONFIG, &Options::default()).unwrap();
        assert!(warnings.is_empty());
        let clusters = &doc["static_resources"]["clusters"];
        assert_eq!(clusters[0]["name"], "ca");
        assert_eq!(clusters[0]["type"], "STATIC");
        assert!(clusters[0].get("transport_socket").is_none());
        assert_eq!(clusters[1]["type"], "STRICT_DNS");
        assert_eq!(
            clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["port_value"],
            443
        );
        assert_eq!(
            clusters[1]["transport_socket"]["typed_config"]["sni"],
            "api.openai.com"
        );
        assert_eq!(clusters[1]["dns_lookup_family"], "V4_PREFERRED");
        assert!(clusters[0].get("dns_lookup_family").is_none());
    }

    #[test]
    fn every_cluster_has_a_stand_in_for_no_healthy_host() {
        let (doc, _) = render(CONFIG, &Options::default()).unwrap();
        let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
        let (exhausted, providers) = clusters.split_last().unwrap();
        assert_eq!(exhausted["name"], "llm_failover_exhausted");
        assert_eq!(
            exhausted["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["pipe"]["path"],
            NO_HEALTHY_HOST_PIPE
        );
        for c in providers {
            let standin = &c["load_assignment"]["endpoints"][1];
            assert_eq!(standin["priority"], 1);
            let address = &standin["lb_endpoints"][0]["endpoint"]["address"];
            if c["type"] == "STRICT_DNS" {
                // Envoy drops a pipe endpoint from a DNS cluster.
                assert_eq!(address["socket_address"]["port_value"], 0);
            } else {
                assert_eq!(address["pipe"]["path"], NO_HEALTHY_HOST_PIPE);
            }
        }
    }

    #[test]
    fn the_retry_policy_follows_the_failover_settings() {
        let (doc, _) = render(CONFIG, &Options::default()).unwrap();
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let retry = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"];
        // The upstream filter judges onStatus and the error classes; the router only
        // retries what it marked.
        assert_eq!(retry["retriable_status_codes"], json!([591]));
        assert_eq!(retry["per_try_timeout"], "2.500s");
        assert_eq!(retry["refresh_cluster_on_retry"], true);
        let env =
            &hcm["http_filters"][0]["typed_config"]["config"]["vm_config"]["environment_variables"];
        assert_eq!(env["host_env_keys"], json!(["OPENAI_API_KEY"]));
        let upstream = &doc["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0];
        assert_eq!(
            upstream["typed_config"]["config"]["allow_on_headers_stop_iteration"],
            true
        );
        assert_eq!(
            hcm["http_filters"][0]["typed_config"]["config"]["allow_on_headers_stop_iteration"],
            true
        );
        // Streamed requests first, on a route of their own: streamFirstByteTimeout
        // (20 s by default) when shorter than the per-try timeout.
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes[0]["match"]["headers"][0]["name"],
            "x-llm-failover-streamed"
        );
        assert_eq!(
            routes[0]["route"]["retry_policy"]["per_try_timeout"],
            "2.500s"
        );
        assert_eq!(routes[1]["match"], json!({"prefix": "/"}));
        for r in [&routes[0], &routes[1]] {
            let removed = r["request_headers_to_remove"].as_array().unwrap();
            assert!(removed.contains(&json!("x-llm-failover-streamed")));
        }
        assert_eq!(hcm["delayed_close_timeout"], "0s");
    }

    #[test]
    fn streamed_requests_get_their_own_timeouts() {
        let cfg = r#"{"groups":[{"providers":[{"name":"a","cluster":"c","endpoint":"http://127.0.0.1:1"}]}],
                      "failover":{"firstTokenTimeout":"3s"}}"#;
        let (doc, _) = render(cfg, &Options::default()).unwrap();
        let routes = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        let streamed = &routes[0]["route"]["retry_policy"];
        assert_eq!(streamed["per_try_timeout"], "20s");
        assert_eq!(streamed["per_try_idle_timeout"], "3s");
        let plain = &routes[1]["route"]["retry_policy"];
        assert_eq!(plain["per_try_timeout"], "120s");
        assert_eq!(plain["per_try_idle_timeout"], Value::Null);
        let off = r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],
                      "failover":{"streamFirstByteTimeout":"0s"}}"#;
        let (doc, _) = render(off, &Options::default()).unwrap();
        let routes = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes.as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_configuration_the_filter_refuses_is_refused_with_its_message() {
        let bad = r#"{"groups":[{"providers":[{"name":"a","cluster":"c","weight":0}]}]}"#;
        let err = render(bad, &Options::default()).unwrap_err();
        assert_eq!(
            err,
            "invalid llm-failover configuration: groups[0].providers[0].weight: 0 is out of range; a weight is an integer from 1 to 1000000"
        );
    }

    #[test]
    fn a_provider_without_endpoint_is_warned_about() {
        let cfg = r#"{"groups":[{"providers":[{"name":"a","cluster":"mine"}]}]}"#;
        let (doc, warnings) = render(cfg, &Options::default()).unwrap();
        let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1, "only the exhausted stand-in");
        assert!(
            warnings[0].contains("define cluster \"mine\""),
            "{warnings:?}"
        );
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(
            address("127.0.0.1:10000", "--listen").unwrap(),
            Address {
                host: "127.0.0.1".into(),
                port: 10000
            }
        );
        assert!(address("10000", "--listen").is_err());
        assert!(address("127.0.0.1:x", "--listen").is_err());
    }
}
