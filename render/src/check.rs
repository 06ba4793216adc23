//! `llm-failover check`: a plugin configuration against an Envoy bootstrap written by
//! hand. Envoy's own validation cannot see that a provider's `cluster` names no
//! cluster (the filter only names it at run time, where a typo looks like a provider
//! that cannot be reached), so this does. It knows both builds: the `.wasm`
//! (`envoy.filters.http.wasm`, found by `root_id`) and the native module (Envoy's
//! dynamic modules, found by `filter_name`).

use crate::ENV_STAND_IN;
use llm_failover_core::config::{Config, Mode};
use llm_failover_core::names;
use serde_json::Value;

/// The runtime guard that gives the native module's metrics the wasm build's names.
const STRIP_PREFIX_GUARD: &str =
    "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";

/// Problems found, one line each; empty when the two fit together.
pub fn check(plugin_raw: &str, bootstrap: &Value) -> Result<Vec<String>, String> {
    let config = Config::parse(plugin_raw.as_bytes(), &|_| Some(ENV_STAND_IN.to_string()))
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
            Some(Instance::Wasm(f)) if !holds_headers(f) => problems.push(format!(
                "provider {}: the upstream filter on cluster {:?} lacks \
                 allow_on_headers_stop_iteration: true (without it an attempt with a failing \
                 answer hangs while the filter waits for the error body)",
                p.name, p.cluster
            )),
            Some(_) => {}
        }
    }
    if config.failover.mode == Mode::Router && uses_native(bootstrap) {
        native_problems(bootstrap, &mut problems);
    }
    if config.failover.mode == Mode::Router {
        let mut downstream = Vec::new();
        if let Some(listeners) = bootstrap.pointer("/static_resources/listeners") {
            plugins_with_root_id(listeners, names::ROOT_ID, &mut downstream);
        }
        // The routing instances (the ops listener's view-only one holds nothing).
        let routing = |f: &&&Value| {
            f.pointer("/configuration/value")
                .and_then(Value::as_str)
                .and_then(|raw| {
                    Config::parse(raw.as_bytes(), &|_| Some(ENV_STAND_IN.to_string())).ok()
                })
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

/// The filter as one build or the other: the wasm filter's `config` (PluginConfig),
/// or the native filter's `typed_config`.
enum Instance<'a> {
    Wasm(&'a Value),
    Native,
}

/// The filter as an upstream HTTP filter of `cluster`, either build.
fn upstream_filter(cluster: &Value) -> Option<Instance<'_>> {
    cluster
        .pointer("/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/http_filters")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|f| f.get("typed_config"))
        .find_map(|t| {
            if is_native(t, names::UPSTREAM_ROOT_ID) {
                return Some(Instance::Native);
            }
            let plugin = t.get("config")?;
            (plugin.get("root_id").and_then(Value::as_str) == Some(names::UPSTREAM_ROOT_ID))
                .then_some(Instance::Wasm(plugin))
        })
}

/// Whether `typed_config` is the native module's filter `filter_name`.
fn is_native(typed_config: &Value, filter_name: &str) -> bool {
    typed_config.get("dynamic_module_config").is_some()
        && typed_config.get("filter_name").and_then(Value::as_str) == Some(filter_name)
}

/// Whether the bootstrap's listeners run the native module's downstream filter.
fn uses_native(bootstrap: &Value) -> bool {
    let mut found = false;
    if let Some(listeners) = bootstrap.pointer("/static_resources/listeners") {
        visit(listeners, &mut |v| found |= is_native(v, names::ROOT_ID));
    }
    found
}

/// What the native wiring needs beyond the wasm one's: the routes reading its
/// filter-state key (no `wasm.` prefix), and the
/// runtime guard that gives its metrics their names.
fn native_problems(bootstrap: &Value, problems: &mut Vec<String>) {
    let mut keys = Vec::new();
    if let Some(listeners) = bootstrap.pointer("/static_resources/listeners") {
        visit(listeners, &mut |v| {
            if let Some(key) = v.get("key").and_then(Value::as_str) {
                if key.ends_with(names::NEXT_KEY) {
                    keys.push(key.to_string());
                }
            }
        });
    }
    // One line per key, however many routes read it.
    keys.sort();
    keys.dedup();
    for key in keys.iter().filter(|k| k.as_str() != names::NEXT_KEY) {
        problems.push(format!(
            "a route reads filter state {key:?}, but the native module sets {:?} (the \
             `wasm.` prefix is proxy-wasm's): every request would go to the first provider",
            names::NEXT_KEY
        ));
    }
    let guard = bootstrap
        .pointer("/layered_runtime/layers")
        .and_then(Value::as_array)
        .is_some_and(|layers| {
            layers.iter().any(|l| {
                l.pointer("/static_layer")
                    .and_then(|s| s.get(STRIP_PREFIX_GUARD))
                    == Some(&Value::Bool(true))
            })
        });
    if !guard {
        problems.push(format!(
            "no static runtime layer sets {STRIP_PREFIX_GUARD}: true, so the native module's \
             metrics are named envoy_dynamicmodulescustom_llm_failover_* instead of \
             llm_failover_* (dashboards and alerts will not find them)"
        ));
    }
}

/// Calls `f` on every object below `value`.
fn visit<'a>(value: &'a Value, f: &mut impl FnMut(&'a Value)) {
    match value {
        Value::Object(map) => {
            f(value);
            for v in map.values() {
                visit(v, f);
            }
        }
        Value::Array(items) => {
            for v in items {
                visit(v, f);
            }
        }
        _ => {}
    }
}

/// Whether a wasm PluginConfig lets the filter hold headers and still get the body.
fn holds_headers(plugin: &Value) -> bool {
    plugin.get("allow_on_headers_stop_iteration") == Some(&Value::Bool(true))
}

/// Every wasm PluginConfig with this `root_id` below `value`.
fn plugins_with_root_id<'a>(value: &'a Value, root_id: &str, out: &mut Vec<&'a Value>) {
    visit(value, &mut |v| {
        if v.get("root_id").and_then(Value::as_str) == Some(root_id) {
            out.push(v);
        }
    });
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

    /// render --native's bootstrap of a one-provider configuration, and that plugin.
    fn native(failover: &str) -> (String, Value) {
        let plugin = format!(
            r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"c","endpoint":"http://127.0.0.1:1"}}]}}],
                "failover":{failover}}}"#
        );
        let options = crate::bootstrap::Options {
            native: true,
            ..Default::default()
        };
        let (boot, _) = crate::bootstrap::render(&plugin, &options).unwrap();
        (plugin, boot)
    }

    #[test]
    fn the_native_wiring_render_writes_passes() {
        let (plugin, boot) = native("{}");
        assert_eq!(check(&plugin, &boot).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_native_wiring_without_the_upstream_filter_is_named() {
        let (plugin, boot) = native("{}");
        let text = boot.to_string().replace(names::UPSTREAM_ROOT_ID, "other");
        let problems = check(&plugin, &serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("does not run the filter as an upstream HTTP filter"));
    }

    #[test]
    fn a_native_wiring_gets_what_the_module_needs_checked() {
        let (_, boot) = native("{}");
        // The wasm build's filter-state key on a native route, and no runtime guard.
        let text = boot
            .to_string()
            .replace(
                &format!(r#""key":"{}""#, names::NEXT_KEY),
                &format!(r#""key":"wasm.{}""#, names::NEXT_KEY),
            )
            .replace(STRIP_PREFIX_GUARD, "something.else");
        let plugin = r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]}"#;
        let problems = check(plugin, &serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("\"wasm.llm_failover_next\""),
            "{problems:?}"
        );
        assert!(problems[1].contains(STRIP_PREFIX_GUARD), "{problems:?}");
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
