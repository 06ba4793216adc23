//! Builds the Envoy bootstrap for a plugin configuration (router mode wiring).

use llm_failover_core::config::{Config, Mode};
use serde_json::{json, Value};

/// The default `.wasm` path, relative to the directory Envoy runs in.
const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/llm_failover.wasm";
/// Where Debian and the official Envoy image keep the system CA bundle.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the ops listener serves the health view.
const HEALTH_PATH: &str = "/llm-failover/health";
/// Below a regular file, so no socket can ever be created there (connect fails with ENOTDIR).
const NO_HEALTHY_HOST_PIPE: &str = "/dev/null/llm-failover-no-healthy-host";

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
    let config = Config::parse(raw.as_bytes(), &|_| Some("set-in-the-vm".to_string()))
        .map_err(|e| e.to_string())?;
    if config.failover.mode != Mode::Router {
        return Err(
            "render builds the router-mode wiring; this configuration sets failover.mode \
             \"dispatch\" (route it with cluster_header as the README shows)"
                .to_string(),
        );
    }
    let mut warnings = Vec::new();
    let mut env_keys: Vec<String> = Vec::new();
    for p in &config.providers {
        if let Some(var) = &p.auth_env {
            if !env_keys.contains(var) {
                env_keys.push(var.clone());
            }
        }
    }
    // One cluster (and one priority group) per distinct cluster name, in provider order.
    let mut clusters: Vec<&llm_failover_core::config::Provider> = Vec::new();
    for p in &config.providers {
        if !clusters.iter().any(|c| c.cluster == p.cluster) {
            clusters.push(p);
        }
    }
    let vm_config = json!({
        "vm_id": llm_failover_core::names::ROOT_ID,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": options.wasm}},
        "environment_variables": {"host_env_keys": env_keys},
    });
    // The upstream filter runs in a VM of its own (same vm_id, so the same shared
    // data): a hedge's call starts its upstream filter from inside the downstream
    // VM's tick, which one VM cannot take (see the filter's hedging.rs).
    let mut upstream_vm_config = vm_config.clone();
    if let Some(obj) = upstream_vm_config.as_object_mut() {
        obj.insert(
            "configuration".to_string(),
            json!({
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": "upstream",
            }),
        );
    }
    let plugin_in = |vm_config: &Value, name: &str, root_id: &str, configuration: &str| {
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
        if root_id == llm_failover_core::names::UPSTREAM_ROOT_ID {
            // The upstream filter holds a failing answer's headers until it has read
            // the error body (and a stream's until its first event): with this, proxy-wasm's
            // Pause is a plain StopIteration and the body callbacks still come (without
            // it, the attempt would hang).
            plugin["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
        }
        plugin
    };
    let plugin = |name: &str, root_id: &str, configuration: &str| {
        plugin_in(&vm_config, name, root_id, configuration)
    };
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            // Providers get no x-envoy-* headers from the gateway (expected timeout,
            // attempt count); clients none of Envoy's timing headers.
            "suppress_envoy_headers": true,
        },
    });
    // The cluster of each attempt is the one the filter names in filter state
    // (`wasm.llm_failover_next`): the downstream filter for the first attempt, the
    // upstream filter of a failing attempt for the next (see ARCHITECTURE.md).
    let mut by_name = serde_json::Map::new();
    for cluster in clusters
        .iter()
        .map(|p| p.cluster.as_str())
        .chain([llm_failover_core::names::EXHAUSTED_CLUSTER])
    {
        by_name.insert(cluster.to_string(), json!({"action": {
            "name": cluster,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
                "cluster": cluster,
            },
        }}));
    }
    let specifier = json!({"extension": {
        "name": "envoy.router.cluster_specifier_plugin.matcher",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
            "cluster_matcher": {"matcher_tree": {
                "input": {
                    "name": "llm_failover_next",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.FilterStateInput",
                        "key": format!("wasm.{}", llm_failover_core::names::NEXT_KEY),
                    },
                },
                "exact_match_map": {"map": by_name},
            },
            // Without the filter's word (the downstream filter missing, or its VM
            // reloading): the first provider, as the groups say.
            "on_no_match": {"action": {
                "name": "first",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
                    "cluster": clusters.first().map(|p| p.cluster.as_str()).unwrap_or(llm_failover_core::names::EXHAUSTED_CLUSTER),
                },
            }}},
        },
    }});
    let mut route = json!({
        "match": {"prefix": "/"},
        // Dispatch mode's routing header means nothing here; a client-sent one is not
        // passed on to a provider.
        // Nor is a hedge's mark (only the filter's own calls carry one).
        "request_headers_to_remove": [config.cluster_header, llm_failover_core::names::HEDGE_HEADER, llm_failover_core::names::PROBE_HEADER],
        "route": {
            // The cluster the filter names for each attempt (see above).
            "inline_cluster_specifier_plugin": specifier,
            // No limit on the whole request: an LLM stream may run for minutes. Each
            // attempt's wait for its first byte is bounded by per_try_timeout.
            "timeout": "0s",
            "retry_policy": {
                // The upstream filter decides which answers go on to the next provider
                // (by status and error body) and marks them with this one status.
                "retry_on": "retriable-status-codes,connect-failure,reset",
                "retriable_status_codes": [llm_failover_core::names::RETRY_STATUS],
                // A ceiling; the filter sets x-envoy-max-retries per request to its plan.
                "num_retries": config.providers.len().saturating_sub(1),
                // firstByteTimeout when set, else attemptTimeout: either way only the wait
                // for response headers (a stream that has started is not cut).
                "per_try_timeout": format!("{}s", ms_to_secs(
                    config.failover.first_byte_timeout_ms.unwrap_or(config.failover.attempt_timeout_ms))),
                "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"},
                "refresh_cluster_on_retry": true,
            },
        },
    });
    if let Some(within) = config.failover.retry_within_ms {
        // A 429 the filter waits out (retryWithin): the router waits the seconds the
        // filter puts in this header before asking the same provider again.
        route["route"]["retry_policy"]["rate_limited_retry_back_off"] = json!({
            "reset_headers": [{"name": llm_failover_core::names::WAIT_HEADER, "format": "SECONDS"}],
            "max_interval": format!("{}s", within.div_ceil(1000)),
        });
    }
    // Streamed requests (the filter sets its streamed header once it has read the
    // body) get a route of their own: a streamed answer sends its headers at once, so
    // a provider silent for streamFirstByteTimeout is abandoned. A non-streamed
    // answer's headers wait for the whole generation: attemptTimeout bounds those.
    let mut routes = Vec::new();
    if config.failover.routes_streams_apart() {
        let failover = &config.failover;
        let mut streamed = route.clone();
        let per_try = [
            failover.first_byte_timeout_ms,
            failover.stream_first_byte_timeout_ms,
        ]
        .into_iter()
        .flatten()
        .fold(failover.attempt_timeout_ms, u64::min);
        if let Some(silence) = failover.stream_silence_ms() {
            // No byte from the provider for this long, before its first event (the
            // upstream filter holds the headers until then) or between events.
            streamed["route"]["retry_policy"]["per_try_idle_timeout"] =
                json!(format!("{}s", ms_to_secs(silence)));
        }
        streamed["match"]["headers"] = json!([{
            "name": llm_failover_core::names::STREAMED_HEADER,
            "present_match": true,
        }]);
        streamed["route"]["retry_policy"]["per_try_timeout"] =
            json!(format!("{}s", ms_to_secs(per_try)));
        routes.push(streamed);
    }
    routes.push(route);
    for r in &mut routes {
        if let Some(list) = r["request_headers_to_remove"].as_array_mut() {
            list.push(json!(llm_failover_core::names::STREAMED_HEADER));
        }
    }
    let access_log = json!([{
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": {
                "http.status": "%RESPONSE_CODE%",
                "provider": "%RESP(X-LLM-PROVIDER)%",
                "tried": "%FILTER_STATE(wasm.llm_failover_tried:PLAIN)%",
                "attempts": "%FILTER_STATE(wasm.llm_failover_attempts:PLAIN)%",
                "failover_reason": "%FILTER_STATE(wasm.llm_failover_reason:PLAIN)%",
                "stream": "%FILTER_STATE(wasm.llm_failover_stream:PLAIN)%",
                "hedge": "%FILTER_STATE(wasm.llm_failover_hedge:PLAIN)%",
                "endpoint": "%UPSTREAM_HOST%",
                "upstream_cluster": "%UPSTREAM_CLUSTER%",
                "path": "%REQ(:PATH)%",
                "duration_ms": "%DURATION%",
            }},
        },
    }]);
    let hcm = |stat_prefix: &str, routes: Value, filters: Vec<Value>, log: Option<&Value>| {
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
    };
    // The view reads the providers the routing filter publishes (same vm_id): no copy.
    let ops_raw = json!({"healthPath": HEALTH_PATH}).to_string();
    let buffer_limit = config.max_body_bytes.max(1 << 20) + 65_536;
    // The downstream filter holds a request's headers until it has read the body
    // (which says whether the answer is streamed, and so the route): with this,
    // proxy-wasm's Pause is a plain StopIteration and the body still comes.
    let mut downstream_plugin = plugin("llm_failover", llm_failover_core::names::ROOT_ID, raw);
    downstream_plugin["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
    let listeners = json!([
        {
            "name": "llm",
            "address": socket(&options.listen),
            // Request bodies are buffered (checked here, replayed on a retry).
            "per_connection_buffer_limit_bytes": buffer_limit,
            "filter_chains": hcm("llm", json!(routes), vec![
                downstream_plugin,
                router.clone(),
            ], Some(&access_log)),
        },
        {
            // The operators' listener: only the health view. Same filter and vm_id, so
            // it reads the same health; ordinary clients cannot reach it.
            "name": "ops",
            "address": socket(&options.ops),
            "filter_chains": hcm("ops", json!([{
                "match": {"prefix": "/"},
                "direct_response": {"status": 404, "body": {"inline_string": "only /llm-failover/health here\n"}},
            }]), vec![
                plugin("llm_failover_ops", llm_failover_core::names::ROOT_ID, &ops_raw),
                router,
            ], None),
        },
    ]);
    let upstream_filters = json!([
        plugin_in(&upstream_vm_config, "llm_failover_upstream", llm_failover_core::names::UPSTREAM_ROOT_ID, raw),
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}},
    ]);
    let mut out_clusters = Vec::new();
    for p in &clusters {
        let Some(ep) = &p.endpoint else {
            warnings.push(format!(
                "provider {} has no endpoint: define cluster {:?} yourself, with the upstream filters \
                 this file gives the other clusters",
                p.name, p.cluster
            ));
            continue;
        };
        let is_ip = ep.host.parse::<std::net::IpAddr>().is_ok();
        let mut c = json!({
            "name": p.cluster,
            "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
            "connect_timeout": "5s",
            "load_assignment": {"cluster_name": p.cluster, "endpoints": [
                {"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": ep.host, "port_value": ep.port}}}}]},
                // Envoy's router does not retry "no healthy upstream" (no host to try, no
                // attempt made). When the provider has no healthy host (DNS gave none,
                // health checks or outlier detection took them all out), this priority-1
                // host takes the attempt instead: a Unix socket path that cannot exist,
                // so the connection fails at once, the upstream filter records the
                // provider unreachable and the retry goes to the next provider.
                {"priority": 1, "lb_endpoints": [{"endpoint": {
                    "address": {"pipe": {"path": NO_HEALTHY_HOST_PIPE}}}}]},
            ]},
            // Every failover is a retry: Envoy's default of 3 concurrent retries per
            // cluster would turn failovers under load into errors.
            "circuit_breakers": {"thresholds": [{"max_retries": 1_000_000}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                // The filter rewrites and records every attempt sent to this cluster.
                "http_filters": upstream_filters,
            }},
        });
        if !is_ip {
            if let Some(obj) = c.as_object_mut() {
                // Envoy's default (AUTO) takes an IPv6 answer first even where the
                // provider is only reachable over IPv4; IPv4 first, IPv6 if that is all.
                obj.insert("dns_lookup_family".to_string(), json!("V4_PREFERRED"));
            }
        }
        if ep.tls {
            if let Some(obj) = c.as_object_mut() {
                obj.insert("transport_socket".to_string(), json!({
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": ep.host,
                        "common_tls_context": {"validation_context": {
                            "trusted_ca": {"filename": CA_BUNDLE},
                            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": ep.host}}],
                        }},
                    },
                }));
            }
        }
        out_clusters.push(c);
    }
    // Where an attempt goes when the request's plan is used up but Envoy's router
    // still has retries (the filter names it): its only host cannot be reached, so
    // no provider is asked more often than the plan says.
    let exhausted = llm_failover_core::names::EXHAUSTED_CLUSTER;
    out_clusters.push(json!({
        "name": exhausted,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": exhausted, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": NO_HEALTHY_HOST_PIPE}}}}]}]},
        "circuit_breakers": {"thresholds": [{"max_retries": 1_000_000}]},
    }));
    let doc = json!({
        "admin": {"address": socket(&options.admin)},
        "stats_config": {"stats_tags": stats_tags()},
        "static_resources": {"listeners": listeners, "clusters": out_clusters},
    });
    Ok((doc, warnings))
}

/// Prometheus labels from the filter's metric names (README: "Metrics").
fn stats_tags() -> Value {
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

/// Milliseconds as Envoy's duration seconds (`"1.5"`).
fn ms_to_secs(ms: u64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(
                standin["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"],
                NO_HEALTHY_HOST_PIPE
            );
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
