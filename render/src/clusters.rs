//! The provider clusters render builds from their endpoints, each with the
//! upstream filters, and the cluster of a used-up plan.

use llm_failover_core::config::Provider;
use llm_failover_core::names;
use serde_json::{json, Value};

/// Where Debian and the official Envoy image keep the system CA bundle.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Below a regular file, so no socket can ever be created there (connect fails with ENOTDIR).
pub(crate) const NO_HEALTHY_HOST_PIPE: &str = "/dev/null/llm-failover-no-healthy-host";

/// A cluster per provider endpoint (a provider without one gets a warning), then the
/// exhausted cluster.
pub fn clusters(
    clusters: &[&Provider],
    upstream_filters: &Value,
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let mut out_clusters = Vec::new();
    for p in clusters {
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
                // host takes the attempt instead: its connection fails at once, the
                // upstream filter records the provider unreachable and the retry goes to
                // the next provider.
                {"priority": 1, "lb_endpoints": [{"endpoint": {"address": no_healthy_host(!is_ip)}}]},
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
    out_clusters.push(exhausted());
    out_clusters
}

/// The address of the no-healthy-host stand-in: a Unix socket path that cannot exist;
/// in a DNS cluster, whose endpoints Envoy resolves (a pipe endpoint there is dropped,
/// measured on 1.40: it never appears in `/clusters`), port 0 on loopback, which
/// nothing can listen on, so the connection is refused at once.
pub fn no_healthy_host(dns: bool) -> Value {
    if dns {
        json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}})
    } else {
        json!({"pipe": {"path": NO_HEALTHY_HOST_PIPE}})
    }
}

/// Where an attempt goes when the request's plan is used up but Envoy's router still
/// has retries (the filter names it): its only host cannot be reached, so no provider
/// is asked more often than the plan says.
pub fn exhausted() -> Value {
    let exhausted = names::EXHAUSTED_CLUSTER;
    json!({
        "name": exhausted,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": exhausted, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": NO_HEALTHY_HOST_PIPE}}}}]}]},
        "circuit_breakers": {"thresholds": [{"max_retries": 1_000_000}]},
    })
}
