//! The plugin configuration: raw serde structs that mirror the JSON users write
//! (unknown fields refused), then validation into the typed [`Config`] the filter
//! runs with. Every error names the field it is about.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::duration::parse_duration_ms;

/// Default failure statuses: rate limited and the transient server errors.
const DEFAULT_ON_STATUS: [u16; 5] = [429, 500, 502, 503, 504];
const DEFAULT_COOLDOWN: &str = "60s";
const DEFAULT_MAX_COOLDOWN: &str = "600s";
/// How long one attempt dispatched during within-request failover may take. Matches
/// the lab's route timeout; LLM completions are slow.
const DEFAULT_ATTEMPT_TIMEOUT: &str = "120s";
const DEFAULT_CLUSTER_HEADER: &str = "x-llm-failover-cluster";
/// Just under Envoy's default `per_connection_buffer_limit_bytes` (1 MiB), so that
/// the filter's own OpenAI-style 413 answers before Envoy's plain-text one.
const DEFAULT_MAX_BODY_BYTES: u64 = 1_000_000;
const MAX_WEIGHT: u64 = 1_000_000;
/// Selection keeps a group's candidates in a fixed array (no allocation per request).
pub const MAX_GROUP_SIZE: usize = 64;

/// A configuration problem: the JSON path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid llm-failover configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid llm-failover configuration: {}: {}",
                self.field, self.message
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Raw form: exactly what the JSON may contain.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    groups: Vec<RawGroup>,
    #[serde(default)]
    failover: Option<RawFailover>,
    #[serde(default)]
    cluster_header: Option<String>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    cluster: String,
    #[serde(default)]
    openai: Option<RawOpenAi>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    weight: Option<u64>,
    #[serde(default)]
    policies: Option<RawPolicies>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenAi {
    model: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    #[serde(default)]
    auth: Option<RawAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum RawAuth {
    Passthrough(RawEmpty),
    Key(RawKey),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmpty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    env: String,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFailover {
    #[serde(default)]
    on_status: Option<Vec<u16>>,
    #[serde(default)]
    within_request: Option<bool>,
    #[serde(default)]
    default_cooldown: Option<String>,
    #[serde(default)]
    max_cooldown: Option<String>,
    #[serde(default)]
    attempt_timeout: Option<String>,
}

// ---------------------------------------------------------------------------
// Runtime form.

/// How the provider is authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// The client's own credentials go through unchanged.
    Passthrough,
    /// The filter sets `header: value` (value = prefix + key) and removes the
    /// client's credentials.
    Key { header: String, value: String },
}

// Hand-written so that a key can never reach a log line through `{:?}`.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Passthrough => f.write_str("Passthrough"),
            Auth::Key { header, .. } => {
                write!(f, "Key {{ header: {header:?}, value: <redacted> }}")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub cluster: String,
    pub model: Option<String>,
    /// `model` encoded as a JSON string, ready to splice into request bodies.
    pub model_json: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub weight: u32,
    pub auth: Auth,
    /// Index of the priority group, 0 = preferred.
    pub group: usize,
    /// Shared-data key of this provider's health: cluster plus model override, so two
    /// models behind one cluster keep separate health.
    pub health_key: String,
}

#[derive(Debug, Clone)]
pub struct Failover {
    on_status: [bool; 600],
    pub within_request: bool,
    pub default_cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    pub attempt_timeout_ms: u64,
}

impl Failover {
    /// Whether an upstream status counts as a provider failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.on_status
            .get(usize::from(status))
            .copied()
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// All providers, in priority order (group by group).
    pub providers: Vec<Provider>,
    /// `groups[g]` is the index range of group `g` in `providers`.
    pub groups: Vec<std::ops::Range<usize>>,
    pub failover: Failover,
    pub cluster_header: String,
    pub max_body_bytes: u64,
    /// True when some provider rewrites `model`: request bodies must then be JSON.
    pub needs_json_body: bool,
    /// True when a failed request can be sent on to another provider: `withinRequest`
    /// and more than one provider. Only then are the request's headers and body kept.
    pub can_fail_over: bool,
}

impl Config {
    /// Parses and validates the plugin configuration. `env` looks up environment
    /// variables (passed in so that this stays pure and testable).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                ConfigError::new(field, format!("not valid JSON: {inner}"))
            } else {
                ConfigError::new(field, inner.to_string())
            }
        })?;
        de.end().map_err(|e| {
            ConfigError::new(
                "",
                format!("trailing characters after the JSON object: {e}"),
            )
        })?;
        validate(raw, env)
    }
}

fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if raw.groups.is_empty() {
        return Err(ConfigError::new(
            "groups",
            "at least one priority group is required",
        ));
    }
    let mut providers = Vec::new();
    let mut groups = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (g, group) in raw.groups.into_iter().enumerate() {
        let field = format!("groups[{g}].providers");
        if group.providers.is_empty() {
            return Err(ConfigError::new(
                field,
                "a group needs at least one provider",
            ));
        }
        let start = providers.len();
        for (p, rp) in group.providers.into_iter().enumerate() {
            let at = format!("groups[{g}].providers[{p}]");
            let provider = validate_provider(rp, g, &at, env)?;
            if let Some(first) = names.insert(provider.name.clone(), at.clone()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "duplicate provider name {:?} (also at {first})",
                        provider.name
                    ),
                ));
            }
            providers.push(provider);
        }
        groups.push(start..providers.len());
    }
    let failover = validate_failover(raw.failover)?;
    let cluster_header = match raw.cluster_header {
        None => DEFAULT_CLUSTER_HEADER.to_string(),
        Some(h) => validate_header_name(&h).map_err(|m| ConfigError::new("clusterHeader", m))?,
    };
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(ConfigError::new(
            "maxBodyBytes",
            "must be a positive number of bytes",
        ));
    }
    let needs_json_body = providers.iter().any(|p| p.model.is_some());
    let can_fail_over = failover.within_request && providers.len() > 1;
    Ok(Config {
        providers,
        groups,
        failover,
        cluster_header,
        max_body_bytes,
        needs_json_body,
        can_fail_over,
    })
}

fn validate_provider(
    rp: RawProvider,
    group: usize,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    let name = rp.name.trim().to_string();
    if name.is_empty() {
        return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
    }
    // Names become metric name segments and a response header value.
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!("{name:?} may only contain ASCII letters, digits, '-' and '_'"),
        ));
    }
    let cluster = rp.cluster.trim().to_string();
    if cluster.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.cluster"),
            "must not be empty",
        ));
    }
    if cluster.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            format!("{at}.cluster"),
            "contains control characters",
        ));
    }
    let model = match rp.openai {
        None => None,
        Some(o) => {
            if o.model.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.openai.model"),
                    "must not be empty",
                ));
            }
            Some(o.model)
        }
    };
    let host = match rp.host {
        None => None,
        Some(h) => {
            let h = h.trim().to_string();
            if h.is_empty()
                || h.bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
            {
                return Err(ConfigError::new(
                    format!("{at}.host"),
                    format!("{h:?} is not a host[:port]"),
                ));
            }
            Some(h)
        }
    };
    let path = match rp.path {
        None => None,
        Some(p) => {
            if !p.starts_with('/')
                || p.contains('?')
                || p.bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(ConfigError::new(
                    format!("{at}.path"),
                    format!("{p:?} must start with '/' and hold no query or whitespace"),
                ));
            }
            Some(p)
        }
    };
    let weight = match rp.weight {
        None => 1,
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
        Some(w) => {
            return Err(ConfigError::new(
                format!("{at}.weight"),
                format!("{w} is out of range; a weight is an integer from 1 to {MAX_WEIGHT}"),
            ))
        }
    };
    let auth = match rp.policies.and_then(|p| p.auth) {
        None | Some(RawAuth::Passthrough(_)) => Auth::Passthrough,
        Some(RawAuth::Key(k)) => {
            let field = format!("{at}.policies.auth.key");
            let var = k.env.trim();
            if var.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.env"),
                    "must name an environment variable",
                ));
            }
            let key = env(var).unwrap_or_default();
            let key = key.trim();
            if key.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.env"),
                    format!(
                        "environment variable {var} is not set or empty in the Wasm VM \
                         (list it in vm_config.environment_variables.host_env_keys)"
                    ),
                ));
            }
            if key.bytes().any(|b| b.is_ascii_control()) {
                return Err(ConfigError::new(
                    format!("{field}.env"),
                    format!("environment variable {var} holds control characters"),
                ));
            }
            let header = match k.header {
                None => "authorization".to_string(),
                Some(h) => validate_header_name(&h)
                    .map_err(|m| ConfigError::new(format!("{field}.header"), m))?,
            };
            let prefix = k.prefix.unwrap_or_else(|| {
                if header == "authorization" {
                    "Bearer ".into()
                } else {
                    String::new()
                }
            });
            if prefix.bytes().any(|b| b.is_ascii_control()) {
                return Err(ConfigError::new(
                    format!("{field}.prefix"),
                    "contains control characters",
                ));
            }
            Auth::Key {
                header,
                value: format!("{prefix}{key}"),
            }
        }
    };
    let model_json = match &model {
        None => None,
        Some(m) => Some(
            serde_json::to_string(m)
                .map_err(|e| ConfigError::new(format!("{at}.openai.model"), e.to_string()))?,
        ),
    };
    let health_key = match &model {
        Some(m) => format!("llm_failover.health.v1|{cluster}|{m}"),
        None => format!("llm_failover.health.v1|{cluster}|"),
    };
    Ok(Provider {
        name,
        cluster,
        model,
        model_json,
        host,
        path,
        weight,
        auth,
        group,
        health_key,
    })
}

fn validate_failover(raw: Option<RawFailover>) -> Result<Failover, ConfigError> {
    let raw = raw.unwrap_or(RawFailover {
        on_status: None,
        within_request: None,
        default_cooldown: None,
        max_cooldown: None,
        attempt_timeout: None,
    });
    let mut on_status = [false; 600];
    let statuses = raw.on_status.unwrap_or_else(|| DEFAULT_ON_STATUS.to_vec());
    for (i, s) in statuses.iter().enumerate() {
        if !(400..=599).contains(s) {
            return Err(ConfigError::new(
                format!("failover.onStatus[{i}]"),
                format!("{s} is not an HTTP error status (400-599)"),
            ));
        }
        on_status[usize::from(*s)] = true;
    }
    let duration =
        |field: &str, value: Option<String>, default: &str| -> Result<u64, ConfigError> {
            let text = value.unwrap_or_else(|| default.to_string());
            parse_duration_ms(&text).map_err(|m| ConfigError::new(format!("failover.{field}"), m))
        };
    let default_cooldown_ms = duration("defaultCooldown", raw.default_cooldown, DEFAULT_COOLDOWN)?;
    let max_cooldown_ms = duration("maxCooldown", raw.max_cooldown, DEFAULT_MAX_COOLDOWN)?;
    let attempt_timeout_ms = duration(
        "attemptTimeout",
        raw.attempt_timeout,
        DEFAULT_ATTEMPT_TIMEOUT,
    )?;
    if max_cooldown_ms == 0 {
        return Err(ConfigError::new(
            "failover.maxCooldown",
            "must be longer than 0s",
        ));
    }
    if default_cooldown_ms > max_cooldown_ms {
        return Err(ConfigError::new(
            "failover.defaultCooldown",
            format!(
                "{default_cooldown_ms}ms is longer than failover.maxCooldown ({max_cooldown_ms}ms)"
            ),
        ));
    }
    if attempt_timeout_ms == 0 {
        return Err(ConfigError::new(
            "failover.attemptTimeout",
            "must be longer than 0s",
        ));
    }
    Ok(Failover {
        on_status,
        within_request: raw.within_request.unwrap_or(true),
        default_cooldown_ms,
        max_cooldown_ms,
        attempt_timeout_ms,
    })
}

/// Header names are compared in lower case (Envoy lower-cases them); a name with
/// upper case letters is accepted and normalised, anything not a token is refused.
fn validate_header_name(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if lower.is_empty() || !lower.bytes().all(token) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_with_key(name: &str) -> Option<String> {
        (name == "OPENAI_API_KEY").then(|| "sk-test-123".to_string())
    }

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes(), &env_with_key)
    }

    fn err(json: &str) -> ConfigError {
        match parse(json) {
            Ok(_) => panic!("config was accepted: {json}"),
            Err(e) => e,
        }
    }

    const SPEC_EXAMPLE: &str = r#"{
      "groups": [
        { "providers": [
            { "name": "mock-ratelimit-provider", "cluster": "mock_gpt_4o",
              "openai": { "model": "mock-gpt-4o" }, "host": "mock-gpt-4o-svc:8000",
              "path": "/v1/chat/completions",
              "policies": { "auth": { "passthrough": {} } } } ] },
        { "providers": [
            { "name": "openai-fallback", "cluster": "openai",
              "openai": { "model": "gpt-4o-mini" }, "host": "api.openai.com",
              "policies": { "auth": { "key": { "env": "OPENAI_API_KEY" } } } } ] }
      ],
      "failover": { "onStatus": [429, 500, 502, 503, 504], "withinRequest": true,
                    "defaultCooldown": "60s", "maxCooldown": "600s" },
      "clusterHeader": "x-llm-failover-cluster"
    }"#;

    #[test]
    fn spec_example_parses_into_typed_config() {
        let c = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.groups, vec![0..1, 1..2]);
        let p = &c.providers[0];
        assert_eq!(p.model.as_deref(), Some("mock-gpt-4o"));
        assert_eq!(p.host.as_deref(), Some("mock-gpt-4o-svc:8000"));
        assert_eq!(p.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(p.auth, Auth::Passthrough);
        assert_eq!(
            p.health_key,
            "llm_failover.health.v1|mock_gpt_4o|mock-gpt-4o"
        );
        assert_eq!(
            c.providers[1].auth,
            Auth::Key {
                header: "authorization".into(),
                value: "Bearer sk-test-123".into()
            }
        );
        assert!(c.failover.within_request);
        assert_eq!(c.failover.default_cooldown_ms, 60_000);
        assert_eq!(c.failover.max_cooldown_ms, 600_000);
        assert!(c.failover.is_failure_status(429));
        assert!(!c.failover.is_failure_status(404));
        assert!(c.needs_json_body);
    }

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let c = parse(r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]}"#).unwrap();
        assert_eq!(c.cluster_header, "x-llm-failover-cluster");
        assert!(c.failover.within_request);
        assert_eq!(c.failover.default_cooldown_ms, 60_000);
        assert_eq!(c.failover.attempt_timeout_ms, 120_000);
        assert_eq!(c.providers[0].weight, 1);
        assert_eq!(c.max_body_bytes, 1_000_000);
        for s in [429, 500, 502, 503, 504] {
            assert!(c.failover.is_failure_status(s), "{s}");
        }
        assert!(!c.needs_json_body);
    }

    #[test]
    fn key_auth_honours_header_and_prefix() {
        let c = parse(
            r#"{"groups":[{"providers":[
              {"name":"az","cluster":"c","policies":{"auth":{"key":{"env":"OPENAI_API_KEY","header":"api-key"}}}},
              {"name":"an","cluster":"d","policies":{"auth":{"key":{"env":"OPENAI_API_KEY","header":"X-Api-Key","prefix":"k="}}}}
            ]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.providers[0].auth,
            Auth::Key {
                header: "api-key".into(),
                value: "sk-test-123".into()
            }
        );
        assert_eq!(
            c.providers[1].auth,
            Auth::Key {
                header: "x-api-key".into(),
                value: "k=sk-test-123".into()
            }
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let c = parse(SPEC_EXAMPLE).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("sk-test-123"), "{dump}");
        assert!(dump.contains("<redacted>"));
    }

    #[test]
    fn bad_configs_name_the_field_and_the_problem() {
        let one = |provider: &str| format!(r#"{{"groups":[{{"providers":[{provider}]}}]}}"#);
        let cases: Vec<(String, &str, &str)> = vec![
            ("not json".into(), "", "not valid JSON: expected"),
            (r#"{"groups":[]}"#.into(), "groups", "at least one priority group"),
            (r#"{}"#.into(), "", "missing field `groups`"),
            (r#"{"groups":[{"providers":[]}]}"#.into(), "groups[0].providers", "at least one provider"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"colour":1}"#.into(), "colour", "unknown field `colour`"),
            (one(r#"{"name":"a","cluster":"c","wieght":2}"#), "groups[0].providers[0].wieght", "unknown field `wieght`"),
            (one(r#"{"name":"a","cluster":"c","weight":0}"#), "groups[0].providers[0].weight", "out of range"),
            (one(r#"{"name":"a","cluster":"c","weight":-1}"#), "groups[0].providers[0].weight", "invalid value"),
            (one(r#"{"name":"","cluster":"c"}"#), "groups[0].providers[0].name", "must not be empty"),
            (one(r#"{"name":"a b","cluster":"c"}"#), "groups[0].providers[0].name", "may only contain"),
            (one(r#"{"name":"a","cluster":""}"#), "groups[0].providers[0].cluster", "must not be empty"),
            (one(r#"{"name":"a","cluster":"c","path":"v1/chat"}"#), "groups[0].providers[0].path", "must start with '/'"),
            (one(r#"{"name":"a","cluster":"c","host":""}"#), "groups[0].providers[0].host", "not a host"),
            (one(r#"{"name":"a","cluster":"c","openai":{"model":""}}"#), "groups[0].providers[0].openai.model", "must not be empty"),
            (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"secretRef":{"name":"x"}}}}"#), "groups[0].providers[0].policies.auth", "unknown variant `secretRef`"),
            (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"key":{"env":"MISSING"}}}}"#), "groups[0].providers[0].policies.auth.key.env", "MISSING is not set"),
            (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"key":{"env":"OPENAI_API_KEY","header":"bad header"}}}}"#), "groups[0].providers[0].policies.auth.key.header", "not a valid HTTP header"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]},{"providers":[{"name":"a","cluster":"d"}]}]}"#.into(), "groups[1].providers[0].name", "duplicate provider name \"a\" (also at groups[0].providers[0])"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"defaultCooldown":"60"}}"#.into(), "failover.defaultCooldown", "missing unit"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxCooldown":"1s","defaultCooldown":"5s"}}"#.into(), "failover.defaultCooldown", "longer than failover.maxCooldown"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxCooldown":"0s"}}"#.into(), "failover.maxCooldown", "longer than 0s"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"onStatus":[200]}}"#.into(), "failover.onStatus[0]", "not an HTTP error status"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"withinRequest":"yes"}}"#.into(), "failover.withinRequest", "invalid type"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"clusterHeader":"x y"}"#.into(), "clusterHeader", "not a valid HTTP header"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"maxBodyBytes":0}"#.into(), "maxBodyBytes", "positive"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]} x"#.into(), "", "trailing characters"),
        ];
        for (json, field, message) in cases {
            let e = err(&json);
            assert_eq!(e.field, field, "{json} gave {e}");
            assert!(e.message.contains(message), "{json} gave {e}");
            assert!(e
                .to_string()
                .starts_with("invalid llm-failover configuration"));
        }
    }

    #[test]
    fn missing_key_env_error_does_not_depend_on_other_vars() {
        let json = r#"{"groups":[{"providers":[{"name":"a","cluster":"c","policies":{"auth":{"key":{"env":"OPENAI_API_KEY"}}}}]}]}"#;
        let e = Config::parse(json.as_bytes(), &no_env).unwrap_err();
        assert!(e.message.contains("OPENAI_API_KEY is not set"), "{e}");
    }

    #[test]
    fn same_cluster_different_models_get_separate_health_keys() {
        let c = parse(
            r#"{"groups":[{"providers":[
              {"name":"a","cluster":"c","openai":{"model":"m1"}},
              {"name":"b","cluster":"c","openai":{"model":"m2"}}]}]}"#,
        )
        .unwrap();
        assert_ne!(c.providers[0].health_key, c.providers[1].health_key);
    }
}
