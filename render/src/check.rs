//! `llm-failover check`: a plugin configuration against an Envoy bootstrap written by
//! hand. Envoy's own validation cannot see that a provider's `cluster` names no
//! cluster (the filter only names it at run time, where a typo looks like a provider
//! that cannot be reached), so this does.

use llm_failover_core::config::{Config, Mode};
use serde_json::Value;

/// Problems found, one line each; empty when the two fit together.
pub fn check(plugin_raw: &str, bootstrap: &Value) -> Result<Vec<String>, String> {
    let config = Config::parse(plugin_raw.as_bytes(), &|_| Some("set".to_string()))
        .map_err(|e| e.to_string())?;
    let clusters: Vec<&Value> = bootstrap
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let names: Vec<&str> = clusters
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let mut problems = Vec::new();
    for p in &config.providers {
        let Some(cluster) = clusters
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(p.cluster.as_str()))
        else {
            let close = names
                .iter()
                .find(|n| similar(n, &p.cluster))
                .map(|n| format!(" (did you mean {n:?}?)"))
                .unwrap_or_default();
            problems.push(format!(
                "provider {}: cluster {:?} is not among the bootstrap's static clusters{close}; \
                 at run time every request to it would fail as unreachable",
                p.name, p.cluster
            ));
            continue;
        };
        if config.failover.mode != Mode::Router {
            continue;
        }
        match upstream_filter(cluster) {
            None => problems.push(format!(
                "provider {}: cluster {:?} does not run the filter as an upstream HTTP filter \
                 (router mode rewrites and records attempts there; see `llm-failover render`)",
                p.name, p.cluster
            )),
            Some(f) if !holds_headers(f) => problems.push(format!(
                "provider {}: the upstream filter on cluster {:?} lacks \
                 allow_on_headers_stop_iteration: true (without it an attempt with a failing \
                 answer hangs while the filter waits for the error body)",
                p.name, p.cluster
            )),
            Some(_) => {}
        }
    }
    if config.failover.mode == Mode::Router {
        let mut downstream = Vec::new();
        if let Some(listeners) = bootstrap.pointer("/static_resources/listeners") {
            plugins_with_root_id(
                listeners,
                llm_failover_core::names::ROOT_ID,
                &mut downstream,
            );
        }
        // The routing instances (the ops listener's view-only one holds nothing).
        let routing = |f: &&&Value| {
            f.pointer("/configuration/value")
                .and_then(Value::as_str)
                .and_then(|raw| Config::parse(raw.as_bytes(), &|_| Some("set".to_string())).ok())
                .is_some_and(|c| !c.providers.is_empty())
        };
        if downstream.iter().filter(routing).any(|f| !holds_headers(f)) {
            problems.push(
                "the downstream filter (root_id llm_failover) lacks \
                 allow_on_headers_stop_iteration: true (without it a request with a body hangs \
                 while the filter waits for the body)"
                    .to_string(),
            );
        }
    }
    Ok(problems)
}

/// The filter's `config` (PluginConfig) as an upstream HTTP filter of `cluster`.
fn upstream_filter(cluster: &Value) -> Option<&Value> {
    cluster
        .pointer("/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/http_filters")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|f| f.pointer("/typed_config/config"))
        .find(|c| {
            c.get("root_id").and_then(Value::as_str) == Some(llm_failover_core::names::UPSTREAM_ROOT_ID)
        })
}

/// Whether a wasm PluginConfig lets the filter hold headers and still get the body.
fn holds_headers(plugin: &Value) -> bool {
    plugin.get("allow_on_headers_stop_iteration") == Some(&Value::Bool(true))
}

/// Every wasm PluginConfig with this `root_id` below `value`.
fn plugins_with_root_id<'a>(value: &'a Value, root_id: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if map.get("root_id").and_then(Value::as_str) == Some(root_id) {
                out.push(value);
            }
            for v in map.values() {
                plugins_with_root_id(v, root_id, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                plugins_with_root_id(v, root_id, out);
            }
        }
        _ => {}
    }
}

/// One character different, two neighbours swapped, or one character more or less.
fn similar(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    match long.len() - short.len() {
        0 => {
            let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            match diff[..] {
                [_] => true,
                [i, j] => j == i + 1 && a[i] == b[j] && a[j] == b[i],
                _ => false,
            }
        }
        1 => (0..long.len()).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLUGIN: &str = r#"{"groups":[{"providers":[
        {"name":"a","cluster":"openai"},{"name":"b","cluster":"azure"}]}],
        "failover":{"mode":"dispatch"}}"#;

    #[test]
    fn a_misspelled_cluster_is_named_with_the_close_one() {
        let boot =
            json!({"static_resources": {"clusters": [{"name": "opneai"}, {"name": "azur"}]}});
        let problems = check(PLUGIN, &boot).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("did you mean \"opneai\"?"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("provider b: cluster \"azure\""),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("did you mean \"azur\"?"),
            "{problems:?}"
        );
    }

    #[test]
    fn router_mode_wants_the_upstream_filter_on_each_cluster() {
        let plugin = PLUGIN.replace("dispatch", "router");
        let boot =
            json!({"static_resources": {"clusters": [{"name": "openai"}, {"name": "azure"}]}});
        assert_eq!(check(&plugin, &boot).unwrap().len(), 2);
        let rendered = crate::bootstrap::render(
            r#"{"groups":[{"providers":[{"name":"a","cluster":"c","endpoint":"http://127.0.0.1:1"}]}]}"#,
            &crate::bootstrap::Options::default(),
        )
        .unwrap()
        .0;
        let plugin = r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]}"#;
        assert_eq!(check(plugin, &rendered).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn router_mode_wants_both_filters_to_hold_headers() {
        let plugin = r#"{"groups":[{"providers":[{"name":"a","cluster":"c","endpoint":"http://127.0.0.1:1"}]}]}"#;
        let (mut boot, _) =
            crate::bootstrap::render(plugin, &crate::bootstrap::Options::default()).unwrap();
        let text = boot.to_string().replace(
            r#""allow_on_headers_stop_iteration":true"#,
            r#""allow_on_headers_stop_iteration":false"#,
        );
        boot = serde_json::from_str(&text).unwrap();
        let problems = check(plugin, &boot).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0]
            .contains("upstream filter on cluster \"c\" lacks allow_on_headers_stop_iteration"));
        assert!(problems[1].contains("the downstream filter (root_id llm_failover) lacks"));
    }
}
