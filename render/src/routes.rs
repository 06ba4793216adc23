//! The route of the clients' listener: the cluster the filter names for each
//! attempt, the retry policy, the route of streamed requests, and the access log.

use llm_failover_core::config::{Config, Provider};
use llm_failover_core::names;
use serde_json::{json, Value};

/// The cluster specifier: the cluster the filter names in filter state.
fn specifier(clusters: &[&Provider], prefix: &str) -> Value {
    // The cluster of each attempt is the one the filter names in filter state
    // (`wasm.llm_failover_next`): the downstream filter for the first attempt, the
    // upstream filter of a failing attempt for the next (see ARCHITECTURE.md).
    let mut by_name = serde_json::Map::new();
    for cluster in clusters
        .iter()
        .map(|p| p.cluster.as_str())
        .chain([names::EXHAUSTED_CLUSTER])
    {
        by_name.insert(cluster.to_string(), json!({"action": {
        "name": cluster,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
            "cluster": cluster,
        },
    }}));
    }
    json!({"extension": {
        "name": "envoy.router.cluster_specifier_plugin.matcher",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
            "cluster_matcher": {"matcher_tree": {
                "input": {
                    "name": "llm_failover_next",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.FilterStateInput",
                        "key": format!("{prefix}{}", names::NEXT_KEY),
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
                    "cluster": clusters.first().map(|p| p.cluster.as_str()).unwrap_or(names::EXHAUSTED_CLUSTER),
                },
            }}},
        },
    }})
}

/// The routes: streamed requests' first when the configuration sets them apart.
pub fn routes(config: &Config, clusters: &[&Provider], prefix: &str) -> Vec<Value> {
    let mut route = json!({
        "match": {"prefix": "/"},
        // Dispatch mode's routing header means nothing here; a client-sent one is not
        // passed on to a provider.
        // Nor is a hedge's mark (only the filter's own calls carry one).
        "request_headers_to_remove": [config.cluster_header, names::HEDGE_HEADER, names::PROBE_HEADER],
        // A provider's own tried header: removed by the router before the filter sees the
        // answer (and sets its own after a failover), at no cost to the filter.
        "response_headers_to_remove": [names::TRIED_HEADER],
        "route": {
            // The cluster the filter names for each attempt (see above).
            "inline_cluster_specifier_plugin": specifier(clusters, prefix),
            // No limit on the whole request: an LLM stream may run for minutes. Each
            // attempt's wait for its first byte is bounded by per_try_timeout.
            "timeout": "0s",
            "retry_policy": {
                // The upstream filter decides which answers go on to the next provider
                // (by status and error body) and marks them with this one status.
                "retry_on": "retriable-status-codes,connect-failure,reset",
                "retriable_status_codes": [names::RETRY_STATUS],
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
            "reset_headers": [{"name": names::WAIT_HEADER, "format": "SECONDS"}],
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
            "name": names::STREAMED_HEADER,
            "present_match": true,
        }]);
        streamed["route"]["retry_policy"]["per_try_timeout"] =
            json!(format!("{}s", ms_to_secs(per_try)));
        routes.push(streamed);
    }
    routes.push(route);
    for r in &mut routes {
        if let Some(list) = r["request_headers_to_remove"].as_array_mut() {
            list.push(json!(names::STREAMED_HEADER));
        }
    }
    routes
}

/// The access log of the clients' listener (README: "Access log").
pub fn access_log(prefix: &str) -> Value {
    json!([{
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": {
                // The reference lab's own command selects its request lines by this
                // (`jq 'select(.scope == "request") | ...'`, README "Access log").
                "scope": "request",
                // When Envoy took the request, seconds since the epoch with milliseconds
                // (the demo's timeline is drawn from it).
                "start_time": "%START_TIME(%s.%3f)%",
                "http.status": "%RESPONSE_CODE%",
                "provider": "%RESP(X-LLM-PROVIDER)%",
                "tried": format!("%FILTER_STATE({prefix}llm_failover_tried:PLAIN)%"),
                "attempts": format!("%FILTER_STATE({prefix}llm_failover_attempts:PLAIN)%"),
                "failover_reason": format!("%FILTER_STATE({prefix}llm_failover_reason:PLAIN)%"),
                "stream": format!("%FILTER_STATE({prefix}llm_failover_stream:PLAIN)%"),
                "hedge": format!("%FILTER_STATE({prefix}llm_failover_hedge:PLAIN)%"),
                // What became of the request's control headers (README "Per-request control").
                "control": format!("%FILTER_STATE({prefix}llm_failover_control:PLAIN)%"),
                "endpoint": "%UPSTREAM_HOST%",
                "upstream_cluster": "%UPSTREAM_CLUSTER%",
                "path": "%REQ(:PATH)%",
                "duration_ms": "%DURATION%",
            }},
        },
    }])
}

/// Milliseconds as Envoy's duration seconds (`"1.5"`).
fn ms_to_secs(ms: u64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
    }
}
