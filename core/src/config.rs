//! The plugin configuration: the JSON users write, read with the crate's own JSON
//! parser (`json.rs`) member by member (unknown fields refused), and validated into
//! the typed [`Config`] the filter runs with. Every error names the field it is
//! about. `llm-failover render` uses the same parser, so it refuses exactly what the
//! filter refuses.

use std::collections::HashMap;
use std::fmt;

use crate::duration::parse_duration_ms;
use crate::json::{self, Value};
use crate::names::{
    CLIENT_CREDENTIAL_HEADERS, DEFAULT_CLUSTER_HEADER, HEALTH_KEY_PREFIX, PROBE_HEADER,
    STREAMED_HEADER,
};

/// Default failure statuses: rate limited, the transient server errors and
/// Anthropic's 529 (overloaded).
const DEFAULT_ON_STATUS: [u16; 6] = [429, 500, 502, 503, 504, 529];
/// With these two, a provider that failed without saying when to come back is
/// probed again 5, 10, then every 20 s: it gets its traffic back within about 20 s
/// of healing (plus the wait for the next request), however long it was down.
const DEFAULT_COOLDOWN: &str = "5s";
const DEFAULT_MAX_BACKOFF_MS: u64 = 20_000;
const DEFAULT_MAX_COOLDOWN: &str = "600s";
/// The largest `contextWindow` taken (tokens): beyond any model's.
const MAX_CONTEXT_WINDOW: u64 = 1_000_000_000;
/// How long one attempt dispatched during within-request failover may take. Matches
/// the lab's route timeout; LLM completions are slow.
const DEFAULT_ATTEMPT_TIMEOUT: &str = "120s";
/// How long a probe of a recovering provider may go unanswered before another
/// request may probe it.
const DEFAULT_PROBE_TIMEOUT: &str = "60s";
/// How long a streamed request's attempt may go without response headers (router
/// mode). A streamed answer sends its headers at once, so a provider silent this
/// long is gone; a non-streamed answer's headers wait for the whole generation, so
/// those keep `attemptTimeout`.
const DEFAULT_STREAM_FIRST_BYTE_TIMEOUT: &str = "20s";
const MAX_CONSECUTIVE_FAILURES: u64 = 1_000;
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
// Reading the JSON: typed access to an object's members, with the path of each
// field for error messages and unknown fields refused.

/// Joins a field name onto a path (`groups[0].providers` + `name`).
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// An object member list and the path it sits at.
struct Obj<'a> {
    path: String,
    members: &'a [(String, Value)],
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: String) -> Result<Self, ConfigError> {
        match value {
            Value::Object(members) => Ok(Obj { path, members }),
            other => Err(ConfigError::new(
                path,
                format!("invalid type: {}, expected an object", other.kind()),
            )),
        }
    }

    /// Refuses members not in `known` and members given twice.
    fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        for (key, _) in self.members {
            if !known.contains(&key.as_str()) {
                let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                return Err(ConfigError::new(
                    join(&self.path, key),
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        expected.join(", ")
                    ),
                ));
            }
        }
        self.unique()
    }

    /// Refuses members given twice.
    fn unique(&self) -> Result<(), ConfigError> {
        for (i, (key, _)) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|(k, _)| k == key) {
                return Err(ConfigError::new(
                    join(&self.path, key),
                    "given more than once",
                ));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn required(&self, key: &str) -> Result<&'a Value, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(self.path.clone(), format!("missing field `{key}`")))
    }

    fn wrong_type(&self, key: &str, found: &Value, expected: &str) -> ConfigError {
        ConfigError::new(
            self.at(key),
            format!("invalid type: {}, expected {expected}", found.kind()),
        )
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, other, "a string")),
        }
    }

    fn required_string(&self, key: &str) -> Result<&'a str, ConfigError> {
        self.required(key)?;
        self.string(key)?
            .ok_or_else(|| ConfigError::new(self.path.clone(), format!("missing field `{key}`")))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(key, other, "a boolean")),
        }
    }

    fn whole_number(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(text)) => whole_number(text)
                .map(Some)
                .ok_or_else(|| ConfigError::new(self.at(key), invalid_number(text))),
            Some(other) => Err(self.wrong_type(key, other, "a whole number")),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong_type(key, other, "an array")),
        }
    }

    fn object(&self, key: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        self.get(key).map(|v| Obj::new(v, self.at(key))).transpose()
    }
}

fn whole_number(text: &str) -> Option<u64> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn invalid_number(text: &str) -> String {
    format!("invalid value: {text}, expected a whole number that is not negative")
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
    /// Query parameters this provider needs (`api-version` for Azure OpenAI), already
    /// percent-encoded, in configuration order. They replace a client parameter of the
    /// same name; the client's others are kept (see `rewrite.rs`).
    pub query: Vec<(String, String)>,
    pub weight: u32,
    pub auth: Auth,
    /// The environment variable the injected key comes from (for `render`, which
    /// passes it into the VM).
    pub auth_env: Option<String>,
    /// Where the provider is (`render` builds its cluster from it); the filter itself
    /// only routes by `cluster`.
    pub endpoint: Option<Endpoint>,
    /// Index of the priority group, 0 = preferred.
    pub group: usize,
    /// `contextWindow` (tokens), when declared: a request too long for another
    /// provider fails over only to providers with a larger one.
    pub context_window: Option<u64>,
    /// Shared-data key of this provider's health: cluster plus model override, so two
    /// models behind one cluster keep separate health.
    pub health_key: String,
}

impl Provider {
    /// Whether sending to this provider changes `:path` (its path or its query).
    pub fn rewrites_path(&self) -> bool {
        self.path.is_some() || !self.query.is_empty()
    }
}

/// A provider's `endpoint` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// How a request reaches the next provider when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Envoy's router retries the request on the next provider's cluster; this filter
    /// also runs as an upstream filter on each provider cluster and rewrites every
    /// attempt. The answer streams on every path.
    Router,
    /// The filter sends the request on itself with `dispatch_http_call`; the
    /// fallback's answer arrives in one piece. For Envoys that cannot run upstream
    /// filters or retry across clusters (older Istio gateways).
    Dispatch,
}

#[derive(Debug, Clone)]
pub struct Failover {
    pub mode: Mode,
    on_status: [bool; 600],
    pub within_request: bool,
    pub default_cooldown_ms: u64,
    /// The longest cooldown for failures that say nothing about when to come back.
    pub max_backoff_ms: u64,
    /// The longest cooldown, whatever the provider says; quota and auth failures
    /// cool this long.
    pub max_cooldown_ms: u64,
    /// `backgroundProbes`: router mode: a recovering provider is probed by a small
    /// request from the root, never by a user's request.
    pub background_probes: bool,
    /// `retries`: how many times one provider may be asked again within a request
    /// (500/502/503/504; in router mode also a reset) before the request moves on.
    pub retries: u32,
    /// `retryWithin`: a 429 asking for at most this long is waited out and retried on
    /// the same provider (within `retries`) instead of cooling it.
    pub retry_within_ms: Option<u64>,
    /// `errorClasses`: whether each class of `errors::Class::CONFIGURABLE` (same
    /// order) sends the request on to another provider.
    pub class_fails_over: [bool; 5],
    /// 5xx or connection failures in a row before a cooldown (429 acts at once).
    pub consecutive_failures: u32,
    /// How long a half-open provider's probe may go unanswered before another
    /// request may probe.
    pub probe_timeout_ms: u64,
    /// Cool a provider down when a successful answer says its quota is spent.
    pub proactive: bool,
    pub attempt_timeout_ms: u64,
    /// `firstByteTimeout`: router mode's per-attempt wait for response headers, when set.
    pub first_byte_timeout_ms: Option<u64>,
    /// `hedgeAfter`: router mode's wait for response headers before the next provider
    /// is asked too (`hedge.rs`), when set.
    pub hedge_after_ms: Option<u64>,
    /// `streamFirstByteTimeout`: router mode's wait for a streamed request's response
    /// headers before the attempt is abandoned (render's route for streamed
    /// requests); `None` when off.
    pub stream_first_byte_timeout_ms: Option<u64>,
    /// `firstTokenTimeout`: router mode, streamed requests: the upstream filter holds
    /// a streamed answer's headers until its first event, and an attempt without one
    /// this long is abandoned (Envoy's `per_try_idle_timeout`).
    pub first_token_timeout_ms: Option<u64>,
    /// `streamIdleTimeout`: router mode, streamed requests: a stream silent this long
    /// after its events started is ended (Envoy's `per_try_idle_timeout`).
    pub stream_idle_timeout_ms: Option<u64>,
}

impl Failover {
    /// The statuses that count as a provider failure, ascending.
    pub fn failure_statuses(&self) -> Vec<u16> {
        (0..600u16).filter(|s| self.is_failure_status(*s)).collect()
    }

    /// Whether answers of error class `class` go on to another provider (for the
    /// classes `errorClasses` sets; the others follow `onStatus`).
    pub fn class_fails_over(&self, class: crate::errors::Class) -> bool {
        crate::errors::Class::CONFIGURABLE
            .iter()
            .position(|c| *c == class)
            .and_then(|i| self.class_fails_over.get(i).copied())
            .unwrap_or(false)
    }

    /// Whether streamed requests take a route of their own (render), which the
    /// downstream filter picks once it has read the body.
    pub fn routes_streams_apart(&self) -> bool {
        self.mode == Mode::Router
            && (self.stream_first_byte_timeout_ms.is_some()
                || self.first_token_timeout_ms.is_some()
                || self.stream_idle_timeout_ms.is_some())
    }

    /// Envoy's `per_try_idle_timeout` on the route for streamed requests, if any.
    pub fn stream_silence_ms(&self) -> Option<u64> {
        self.first_token_timeout_ms.or(self.stream_idle_timeout_ms)
    }

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
    /// When set, a request for this path gets the health view instead of a provider.
    /// Off by default: enable it only on a listener ordinary clients cannot reach.
    pub health_path: Option<String>,
    /// True when a failed request can be sent on to another provider: `withinRequest`
    /// and more than one provider. Only then are the request's headers and body kept.
    pub can_fail_over: bool,
    /// The request headers some provider rewrites (router mode keeps the client's
    /// values of these for later attempts).
    pub rewritten_headers: Vec<String>,
}

impl Config {
    /// The filter's own request headers, which a dispatched call (a failover in
    /// dispatch mode, a hedge) must not pass on: a client's are never a provider's.
    pub fn internal_request_headers(&self) -> [&str; 3] {
        [self.cluster_header.as_str(), STREAMED_HEADER, PROBE_HEADER]
    }

    /// Parses and validates the plugin configuration. `env` looks up environment
    /// variables (passed in so that this stays pure and testable).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let value =
            json::parse(json).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        let root = Obj::new(&value, String::new())?;
        root.only(&[
            "groups",
            "failover",
            "clusterHeader",
            "maxBodyBytes",
            "healthPath",
        ])?;
        if root.get("groups").is_none() && root.get("healthPath").is_some() {
            return view_only(&root);
        }
        let (providers, ranges) = read_groups(&root, env)?;
        let failover = validate_failover(root.object("failover")?)?;
        let cluster_header = match root.string("clusterHeader")? {
            None => DEFAULT_CLUSTER_HEADER.to_string(),
            Some(h) => validate_header_name(h).map_err(|m| ConfigError::new("clusterHeader", m))?,
        };
        let max_body_bytes = root
            .whole_number("maxBodyBytes")?
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(ConfigError::new(
                "maxBodyBytes",
                "must be a positive number of bytes",
            ));
        }
        let health_path = health_path(&root)?;
        let needs_json_body = providers.iter().any(|p| p.model.is_some());
        let can_fail_over = failover.within_request && providers.len() > 1;
        let rewritten_headers = rewritten_headers(&providers);
        Ok(Config {
            rewritten_headers,
            health_path,
            providers,
            groups: ranges,
            failover,
            cluster_header,
            max_body_bytes,
            needs_json_body,
            can_fail_over,
        })
    }
}

/// `groups`: every provider, validated, in priority order, and each group's range
/// of them. Provider names are unique across groups.
fn read_groups(
    root: &Obj<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Provider>, Vec<std::ops::Range<usize>>), ConfigError> {
    let groups = root.required("groups")?;
    let Value::Array(groups) = groups else {
        return Err(root.wrong_type("groups", groups, "an array"));
    };
    if groups.is_empty() {
        return Err(ConfigError::new(
            "groups",
            "at least one priority group is required",
        ));
    }
    let mut providers = Vec::new();
    let mut ranges = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (g, group) in groups.iter().enumerate() {
        let group = Obj::new(group, format!("groups[{g}]"))?;
        group.only(&["providers"])?;
        group.required("providers")?;
        let list = group.array("providers")?.unwrap_or_default();
        let field = group.at("providers");
        if list.is_empty() {
            return Err(ConfigError::new(
                field,
                "a group needs at least one provider",
            ));
        }
        if list.len() > MAX_GROUP_SIZE {
            return Err(ConfigError::new(
                field,
                format!("a group holds at most {MAX_GROUP_SIZE} providers"),
            ));
        }
        let start = providers.len();
        for (p, raw) in list.iter().enumerate() {
            let at = format!("{field}[{p}]");
            let provider = validate_provider(Obj::new(raw, at.clone())?, g, env)?;
            if let Some(first) = names.insert(provider.name.clone(), at.clone()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "duplicate provider name \"{}\" (also at {first})",
                        provider.name
                    ),
                ));
            }
            providers.push(provider);
        }
        ranges.push(start..providers.len());
    }
    Ok((providers, ranges))
}

/// `healthPath`, when given.
fn health_path(root: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    match root.string("healthPath")? {
        None => Ok(None),
        Some(p)
            if p.starts_with('/')
                && !p.contains('?')
                && !p
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
        {
            Ok(Some(p.to_string()))
        }
        Some(p) => Err(ConfigError::new(
            "healthPath",
            format!(
                "{} must start with '/' and hold no query or whitespace",
                quoted(p)
            ),
        )),
    }
}

/// `{"healthPath": ...}` alone: an instance that only serves the health view, of the
/// providers the routing configurations publish (`registry.rs`), and passes every
/// other request through untouched. No copy of the providers to get wrong.
fn view_only(root: &Obj<'_>) -> Result<Config, ConfigError> {
    if let Some((key, _)) = root.members.iter().find(|(k, _)| k != "healthPath") {
        return Err(ConfigError::new(
            root.at(key),
            "a health-view-only configuration (no `groups`) takes only `healthPath`",
        ));
    }
    Ok(Config {
        rewritten_headers: Vec::new(),
        health_path: health_path(root)?,
        providers: Vec::new(),
        groups: Vec::new(),
        failover: validate_failover(None)?,
        cluster_header: DEFAULT_CLUSTER_HEADER.to_string(),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        needs_json_body: false,
        can_fail_over: false,
    })
}

fn validate_provider(
    rp: Obj<'_>,
    group: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    rp.only(&[
        "name",
        "cluster",
        "endpoint",
        "openai",
        "host",
        "path",
        "query",
        "weight",
        "policies",
        "contextWindow",
    ])?;
    let name = provider_name(&rp)?;
    let cluster = provider_cluster(&rp)?;
    let model = provider_model(&rp)?;
    let host = provider_host(&rp)?;
    let path = provider_path(&rp)?;
    let query = provider_query(&rp)?;
    let weight = provider_weight(&rp)?;
    let endpoint = match rp.string("endpoint")? {
        None => None,
        Some(url) => Some(parse_endpoint(url).map_err(|m| ConfigError::new(rp.at("endpoint"), m))?),
    };
    let (auth, auth_env) = provider_auth(&rp, env)?;
    let context_window = context_window(&rp)?;
    let model_json = model.as_deref().map(json::quote);
    let health_key = format!(
        "{HEALTH_KEY_PREFIX}{cluster}|{}",
        model.as_deref().unwrap_or("")
    );
    Ok(Provider {
        name,
        cluster,
        model,
        model_json,
        host,
        path,
        query,
        weight,
        auth,
        auth_env,
        endpoint,
        group,
        health_key,
        context_window,
    })
}

/// A provider's `name`: it becomes a metric name segment and a response header value.
fn provider_name(rp: &Obj<'_>) -> Result<String, ConfigError> {
    let name = rp.required_string("name")?.trim().to_string();
    if name.is_empty() {
        return Err(ConfigError::new(rp.at("name"), "must not be empty"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(ConfigError::new(
            rp.at("name"),
            format!(
                "{} may only contain ASCII letters, digits, '-' and '_'",
                quoted(&name)
            ),
        ));
    }
    Ok(name)
}

fn provider_cluster(rp: &Obj<'_>) -> Result<String, ConfigError> {
    let cluster = rp.required_string("cluster")?.trim().to_string();
    if cluster.is_empty() {
        return Err(ConfigError::new(rp.at("cluster"), "must not be empty"));
    }
    if cluster.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            rp.at("cluster"),
            "contains control characters",
        ));
    }
    Ok(cluster)
}

/// `openai.model`, when given.
fn provider_model(rp: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    let Some(o) = rp.object("openai")? else {
        return Ok(None);
    };
    o.only(&["model"])?;
    let model = o.required_string("model")?;
    if model.trim().is_empty() {
        return Err(ConfigError::new(o.at("model"), "must not be empty"));
    }
    Ok(Some(model.to_string()))
}

fn provider_host(rp: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    let Some(h) = rp.string("host")? else {
        return Ok(None);
    };
    let h = h.trim().to_string();
    if h.is_empty()
        || h.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        return Err(ConfigError::new(
            rp.at("host"),
            format!("{} is not a host[:port]", quoted(&h)),
        ));
    }
    Ok(Some(h))
}

fn provider_path(rp: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    let Some(p) = rp.string("path")? else {
        return Ok(None);
    };
    if !p.starts_with('/')
        || p.contains('?')
        || p.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ConfigError::new(
            rp.at("path"),
            format!(
                "{} must start with '/' and hold no query or whitespace",
                quoted(p)
            ),
        ));
    }
    Ok(Some(p.to_string()))
}

/// `query`: parameter names and values, percent-encoded, in configuration order.
fn provider_query(rp: &Obj<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(q) = rp.object("query")? else {
        return Ok(Vec::new());
    };
    let mut pairs = Vec::new();
    q.unique()?;
    for (key, _) in q.members {
        if key.is_empty() {
            return Err(ConfigError::new(q.at(key), "a parameter needs a name"));
        }
        let value = q.required_string(key)?;
        pairs.push((percent_encode(key), percent_encode(value)));
    }
    Ok(pairs)
}

fn provider_weight(rp: &Obj<'_>) -> Result<u32, ConfigError> {
    match rp.whole_number("weight")? {
        None => Ok(1),
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w as u32),
        Some(w) => Err(ConfigError::new(
            rp.at("weight"),
            format!("{w} is out of range; a weight is an integer from 1 to {MAX_WEIGHT}"),
        )),
    }
}

/// `policies.auth`: passthrough, or a key from an environment variable (and that
/// variable's name, for render).
fn provider_auth(
    rp: &Obj<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Auth, Option<String>), ConfigError> {
    let Some(k) = auth_kind(rp)? else {
        return Ok((Auth::Passthrough, None));
    };
    let var = k.required_string("env")?.trim();
    if var.is_empty() {
        return Err(ConfigError::new(
            k.at("env"),
            "must name an environment variable",
        ));
    }
    // What is wrong in the file first; the environment is looked at last.
    let header = match k.string("header")? {
        None => "authorization".to_string(),
        Some(h) => validate_header_name(h).map_err(|m| ConfigError::new(k.at("header"), m))?,
    };
    let prefix = k.string("prefix")?.map(str::to_string).unwrap_or_else(|| {
        if header == "authorization" {
            "Bearer ".into()
        } else {
            String::new()
        }
    });
    if prefix.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            k.at("prefix"),
            "contains control characters",
        ));
    }
    let key = env(var).unwrap_or_default();
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::new(
            k.at("env"),
            format!(
                "environment variable {var} is not set or empty in the Wasm VM: it \
                 must be exported in Envoy's own environment and listed in \
                 vm_config.environment_variables.host_env_keys (render lists it)"
            ),
        ));
    }
    if key.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            k.at("env"),
            format!("environment variable {var} holds control characters"),
        ));
    }
    let auth = Auth::Key {
        header,
        value: format!("{prefix}{key}"),
    };
    Ok((auth, Some(var.to_string())))
}

/// `contextWindow`, when given.
fn context_window(rp: &Obj<'_>) -> Result<Option<u64>, ConfigError> {
    match rp.whole_number("contextWindow")? {
        None => Ok(None),
        Some(n) if (1..=MAX_CONTEXT_WINDOW).contains(&n) => Ok(Some(n)),
        Some(n) => Err(ConfigError::new(
            rp.at("contextWindow"),
            format!("{n} is out of range; it is a number of tokens from 1 to {MAX_CONTEXT_WINDOW}"),
        )),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a configured
/// query parameter can never end or split the query it is put into.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed; a path
/// is not: the provider's `path` says where requests go).
fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{} must start with http:// or https://",
            quoted(url)
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.bytes().any(|b| {
            matches!(b, b'/' | b'?' | b'#' | b'@')
                || b.is_ascii_whitespace()
                || b.is_ascii_control()
        })
    {
        return Err(format!(
            "{} must be a scheme and host[:port], with no path, query or user",
            quoted(url)
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{} has an invalid port {}", quoted(url), quoted(p)))?;
            (h, port)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{} has no host", quoted(url)));
    }
    Ok(Endpoint {
        tls,
        host: host.to_string(),
        port,
    })
}

/// The provider's `policies.auth`: `None` for passthrough (or nothing set), the
/// `key` object otherwise. Exactly one kind may be given.
fn auth_kind<'a>(provider: &Obj<'a>) -> Result<Option<Obj<'a>>, ConfigError> {
    let Some(policies) = provider.object("policies")? else {
        return Ok(None);
    };
    policies.only(&["auth"])?;
    let Some(auth) = policies.object("auth")? else {
        return Ok(None);
    };
    match auth.members {
        [(kind, value)] if kind == "passthrough" => {
            Obj::new(value, auth.at(kind))?.only(&[])?;
            Ok(None)
        }
        [(kind, value)] if kind == "key" => {
            let key = Obj::new(value, auth.at(kind))?;
            key.only(&["env", "header", "prefix"])?;
            Ok(Some(key))
        }
        [(kind, _)] => Err(ConfigError::new(
            auth.path.clone(),
            format!("unknown auth kind `{kind}`, expected `passthrough` or `key`"),
        )),
        members => Err(ConfigError::new(
            auth.path.clone(),
            format!(
                "exactly one auth kind (`passthrough` or `key`) is required, found {}",
                members.len()
            ),
        )),
    }
}

/// A user-supplied string for an error message, quoted with anything unprintable
/// escaped.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

fn validate_failover(raw: Option<Obj<'_>>) -> Result<Failover, ConfigError> {
    let empty = Value::Object(Vec::new());
    let raw = match raw {
        Some(o) => o,
        None => Obj::new(&empty, "failover".to_string())?,
    };
    raw.only(&[
        "mode",
        "onStatus",
        "withinRequest",
        "defaultCooldown",
        "maxBackoff",
        "maxCooldown",
        "attemptTimeout",
        "firstByteTimeout",
        "streamFirstByteTimeout",
        "firstTokenTimeout",
        "streamIdleTimeout",
        "hedgeAfter",
        "consecutiveFailures",
        "probeTimeout",
        "proactive",
        "errorClasses",
        "retries",
        "retryWithin",
        "backgroundProbes",
    ])?;
    let on_status = on_status(&raw)?;
    let cooldowns = cooldowns(&raw)?;
    let probe_timeout_ms = positive_duration(&raw, "probeTimeout", DEFAULT_PROBE_TIMEOUT)?;
    let consecutive_failures = consecutive_failures(&raw)?;
    let class_fails_over = error_classes(raw.object("errorClasses")?)?;
    let attempt_timeout_ms = positive_duration(&raw, "attemptTimeout", DEFAULT_ATTEMPT_TIMEOUT)?;
    let mode = mode(&raw)?;
    let within_request = raw.boolean("withinRequest")?.unwrap_or(true);
    let (first_byte_timeout_ms, hedge_after_ms) =
        before_the_first_byte(&raw, mode, within_request)?;
    let stream_first_byte_timeout_ms = stream_first_byte_timeout(&raw, mode, hedge_after_ms)?;
    let (first_token_timeout_ms, stream_idle_timeout_ms) = stream_silences(&raw, mode)?;
    let (retries, retry_within_ms) = same_provider_retries(&raw, mode)?;
    let background_probes = raw.boolean("backgroundProbes")?.unwrap_or(false);
    if background_probes && mode == Mode::Dispatch {
        return Err(ConfigError::new(
            "failover.backgroundProbes",
            "needs router mode (a probe's answer is read by the upstream filter)",
        ));
    }
    Ok(Failover {
        mode,
        first_byte_timeout_ms,
        hedge_after_ms,
        stream_first_byte_timeout_ms,
        first_token_timeout_ms,
        stream_idle_timeout_ms,
        on_status,
        within_request,
        consecutive_failures,
        probe_timeout_ms,
        proactive: raw.boolean("proactive")?.unwrap_or(true),
        default_cooldown_ms: cooldowns.default_ms,
        max_backoff_ms: cooldowns.max_backoff_ms,
        max_cooldown_ms: cooldowns.max_ms,
        class_fails_over,
        retries,
        retry_within_ms,
        background_probes,
        attempt_timeout_ms,
    })
}

/// `failover.onStatus`: the statuses (400-599) that count as failures.
fn on_status(raw: &Obj<'_>) -> Result<[bool; 600], ConfigError> {
    let statuses = match raw.array("onStatus")? {
        None => DEFAULT_ON_STATUS.iter().map(|s| u64::from(*s)).collect(),
        Some(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let field = format!("failover.onStatus[{i}]");
                match item {
                    Value::Number(text) => out.push(
                        whole_number(text)
                            .ok_or_else(|| ConfigError::new(field, invalid_number(text)))?,
                    ),
                    other => {
                        return Err(ConfigError::new(
                            field,
                            format!("invalid type: {}, expected a status code", other.kind()),
                        ))
                    }
                }
            }
            out
        }
    };
    let mut on_status = [false; 600];
    for (i, s) in statuses.iter().enumerate() {
        if !(400..=599).contains(s) {
            return Err(ConfigError::new(
                format!("failover.onStatus[{i}]"),
                format!("{s} is not an HTTP error status (400-599)"),
            ));
        }
        on_status[*s as usize] = true;
    }
    Ok(on_status)
}

/// A duration field of `failover`, or its default.
fn duration(raw: &Obj<'_>, field: &str, default: &str) -> Result<u64, ConfigError> {
    let text = raw.string(field)?.unwrap_or(default);
    parse_duration_ms(text).map_err(|m| ConfigError::new(raw.at(field), m))
}

/// A duration field of `failover` that must be longer than 0s.
fn positive_duration(raw: &Obj<'_>, field: &str, default: &str) -> Result<u64, ConfigError> {
    let ms = duration(raw, field, default)?;
    if ms == 0 {
        return Err(ConfigError::new(raw.at(field), "must be longer than 0s"));
    }
    Ok(ms)
}

/// `failover.defaultCooldown`, `maxBackoff` and `maxCooldown`.
struct Cooldowns {
    default_ms: u64,
    max_backoff_ms: u64,
    max_ms: u64,
}

fn cooldowns(raw: &Obj<'_>) -> Result<Cooldowns, ConfigError> {
    let default_ms = duration(raw, "defaultCooldown", DEFAULT_COOLDOWN)?;
    let max_ms = positive_duration(raw, "maxCooldown", DEFAULT_MAX_COOLDOWN)?;
    if default_ms > max_ms {
        return Err(ConfigError::new(
            "failover.defaultCooldown",
            format!("{default_ms}ms is longer than failover.maxCooldown ({max_ms}ms)"),
        ));
    }
    // Unless given: 20 s, or defaultCooldown when that is longer (then no doubling).
    let max_backoff_ms = match raw.string("maxBackoff")? {
        None => DEFAULT_MAX_BACKOFF_MS.max(default_ms).min(max_ms),
        Some(text) => {
            let ms =
                parse_duration_ms(text).map_err(|m| ConfigError::new(raw.at("maxBackoff"), m))?;
            if ms < default_ms {
                return Err(ConfigError::new(
                    "failover.maxBackoff",
                    format!("{ms}ms is shorter than failover.defaultCooldown ({default_ms}ms)"),
                ));
            }
            if ms > max_ms {
                return Err(ConfigError::new(
                    "failover.maxBackoff",
                    format!("{ms}ms is longer than failover.maxCooldown ({max_ms}ms)"),
                ));
            }
            ms
        }
    };
    Ok(Cooldowns {
        default_ms,
        max_backoff_ms,
        max_ms,
    })
}

/// `failover.consecutiveFailures`, 1 unless given.
fn consecutive_failures(raw: &Obj<'_>) -> Result<u32, ConfigError> {
    match raw.whole_number("consecutiveFailures")? {
        None => Ok(1),
        Some(n) if (1..=MAX_CONSECUTIVE_FAILURES).contains(&n) => Ok(n as u32),
        Some(n) => Err(ConfigError::new(
            "failover.consecutiveFailures",
            format!("{n} is out of range; it is a count from 1 to {MAX_CONSECUTIVE_FAILURES}"),
        )),
    }
}

/// `failover.mode`, router unless given.
fn mode(raw: &Obj<'_>) -> Result<Mode, ConfigError> {
    match raw.string("mode")? {
        None | Some("router") => Ok(Mode::Router),
        Some("dispatch") => Ok(Mode::Dispatch),
        Some(other) => Err(ConfigError::new(
            "failover.mode",
            format!(
                "{} is not a mode; expected \"router\" or \"dispatch\"",
                quoted(other)
            ),
        )),
    }
}

/// `failover.firstByteTimeout` and `failover.hedgeAfter`, both off unless given and
/// both router mode only: an attempt without response headers this long is
/// abandoned (Envoy's per-try timeout, a `timeout` failure), or also asked of the next
/// provider (`hedge.rs`).
fn before_the_first_byte(
    raw: &Obj<'_>,
    mode: Mode,
    within_request: bool,
) -> Result<(Option<u64>, Option<u64>), ConfigError> {
    let first_byte_timeout_ms = match raw.string("firstByteTimeout")? {
        None => None,
        Some(_) => {
            let ms = positive_duration(raw, "firstByteTimeout", "")?;
            if mode == Mode::Dispatch {
                return Err(ConfigError::new(
                    "failover.firstByteTimeout",
                    "needs router mode (dispatch mode cannot abandon its routed attempt); \
                     in dispatch mode attemptTimeout limits the dispatched attempts",
                ));
            }
            Some(ms)
        }
    };
    let Some(text) = raw.string("hedgeAfter")? else {
        return Ok((first_byte_timeout_ms, None));
    };
    let ms = positive_duration(raw, "hedgeAfter", "")?;
    let refuse = |m: String| Err(ConfigError::new("failover.hedgeAfter", m));
    if mode == Mode::Dispatch {
        return refuse(
            "needs router mode (dispatch mode has no upstream filter to cancel a hedge with)"
                .to_string(),
        );
    }
    if !within_request {
        return refuse(
            "needs withinRequest: a hedge sends the request to a second provider".to_string(),
        );
    }
    if let Some(fbt) = first_byte_timeout_ms.filter(|fbt| ms >= *fbt) {
        return refuse(format!(
            "{text} must be shorter than firstByteTimeout ({fbt} ms), which would \
             abandon the attempt before the hedge is sent"
        ));
    }
    Ok((first_byte_timeout_ms, Some(ms)))
}

/// The most `retries` takes: each is one more attempt of the same provider.
const MAX_RETRIES: u64 = 5;
/// The longest `retryWithin`: a client waits this long at most for one provider.
const MAX_RETRY_WITHIN_MS: u64 = 60_000;

/// `failover.retries` (0 unless given) and `failover.retryWithin` (off unless given;
/// router mode only).
fn same_provider_retries(raw: &Obj<'_>, mode: Mode) -> Result<(u32, Option<u64>), ConfigError> {
    let retries = match raw.whole_number("retries")? {
        None => 0,
        Some(n) if n <= MAX_RETRIES => n as u32,
        Some(n) => {
            return Err(ConfigError::new(
                "failover.retries",
                format!("{n} is out of range; it is a count from 0 to {MAX_RETRIES}"),
            ))
        }
    };
    let Some(text) = raw.string("retryWithin")? else {
        return Ok((retries, None));
    };
    let field = raw.at("retryWithin");
    if mode == Mode::Dispatch {
        return Err(ConfigError::new(
            field,
            "needs router mode (dispatch mode has no timer to wait with before it asks again)",
        ));
    }
    let ms = parse_duration_ms(text).map_err(|m| ConfigError::new(field.clone(), m))?;
    if ms == 0 || ms > MAX_RETRY_WITHIN_MS {
        return Err(ConfigError::new(
            field,
            format!("{text} is out of range; it is a duration from 1ms to 60s"),
        ));
    }
    if retries == 0 {
        return Err(ConfigError::new(
            field,
            "needs failover.retries of 1 or more: a 429 waited out is asked again, and \
             every attempt counts",
        ));
    }
    Ok((retries, Some(ms)))
}

/// `failover.streamFirstByteTimeout`: 20 s unless given; `"0s"` turns it off. Router
/// mode only (dispatch mode does not apply it).
fn stream_first_byte_timeout(
    raw: &Obj<'_>,
    mode: Mode,
    hedge_after_ms: Option<u64>,
) -> Result<Option<u64>, ConfigError> {
    const FIELD: &str = "failover.streamFirstByteTimeout";
    let given = raw.string("streamFirstByteTimeout")?;
    let text = given.unwrap_or(DEFAULT_STREAM_FIRST_BYTE_TIMEOUT);
    let ms = parse_duration_ms(text).map_err(|m| ConfigError::new(FIELD, m))?;
    if mode == Mode::Dispatch {
        if given.is_some() && ms > 0 {
            return Err(ConfigError::new(
                FIELD,
                "needs router mode (dispatch mode cannot abandon its routed attempt); \
                 in dispatch mode attemptTimeout limits the dispatched attempts",
            ));
        }
        return Ok(None);
    }
    if ms == 0 {
        return Ok(None);
    }
    if let Some(hedge) = hedge_after_ms.filter(|h| *h >= ms) {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "{text} must be longer than hedgeAfter ({hedge} ms), or a streamed attempt \
                 is abandoned before its hedge is sent; set it longer, or \"0s\" to turn it off"
            ),
        ));
    }
    Ok(Some(ms))
}

/// `failover.firstTokenTimeout` and `failover.streamIdleTimeout`, both off unless
/// given. Router mode only. Both are Envoy's one `per_try_idle_timeout` on the route
/// for streamed requests, so when both are given they must be equal.
fn stream_silences(raw: &Obj<'_>, mode: Mode) -> Result<(Option<u64>, Option<u64>), ConfigError> {
    let mut out = [None, None];
    for (slot, name) in out
        .iter_mut()
        .zip(["firstTokenTimeout", "streamIdleTimeout"])
    {
        let Some(text) = raw.string(name)? else {
            continue;
        };
        let field = raw.at(name);
        let ms = parse_duration_ms(text).map_err(|m| ConfigError::new(field.clone(), m))?;
        if ms == 0 {
            return Err(ConfigError::new(field, "must be longer than 0s"));
        }
        if mode == Mode::Dispatch {
            return Err(ConfigError::new(
                field,
                "needs router mode (dispatch mode delivers a fallback's stream in one piece)",
            ));
        }
        *slot = Some(ms);
    }
    let [first_token, idle] = out;
    if let (Some(a), Some(b)) = (first_token, idle) {
        if a != b {
            return Err(ConfigError::new(
                "failover.streamIdleTimeout",
                format!(
                    "{b}ms differs from firstTokenTimeout ({a}ms): both are Envoy's one \
                     per_try_idle_timeout on the route for streamed requests; give them the \
                     same value, or only one"
                ),
            ));
        }
    }
    Ok((first_token, idle))
}

/// `failover.errorClasses`: per error class, `"failover"` or `"return"`. Defaults:
/// quota, auth, overloaded and context_length fail over; content_policy returns.
fn error_classes(raw: Option<Obj<'_>>) -> Result<[bool; 5], ConfigError> {
    use crate::errors::Class;
    let mut out = Class::CONFIGURABLE.map(|c| c != Class::ContentPolicy);
    let Some(raw) = raw else { return Ok(out) };
    raw.unique()?;
    for (name, value) in raw.members {
        let field = raw.at(name);
        let Some(i) = Class::CONFIGURABLE
            .iter()
            .position(|c| c.as_str() == name.as_str())
        else {
            let known: Vec<&str> = Class::CONFIGURABLE.iter().map(|c| c.as_str()).collect();
            return Err(ConfigError::new(
                field,
                format!("unknown error class; the classes are {}", known.join(", ")),
            ));
        };
        out[i] = match value {
            Value::String(s) if s == "failover" => true,
            Value::String(s) if s == "return" => false,
            Value::String(s) => {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{} is not an action; expected \"failover\" or \"return\"",
                        quoted(s)
                    ),
                ))
            }
            other => return Err(raw.wrong_type(name, other, "\"failover\" or \"return\"")),
        };
    }
    Ok(out)
}

/// Header names are compared in lower case (Envoy lower-cases them); a name with
/// upper case letters is accepted and normalised, anything not a token is refused.
fn validate_header_name(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if lower.is_empty() || !lower.bytes().all(token) {
        return Err(format!("{} is not a valid HTTP header name", quoted(name)));
    }
    Ok(lower)
}

/// The request headers some provider's edits change: in router mode their client
/// values are kept for the attempts after the first (see `handoff.rs`).
fn rewritten_headers(providers: &[Provider]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !names.iter().any(|have| have == n) {
            names.push(n.to_string());
        }
    };
    for p in providers {
        if p.host.is_some() {
            add(":authority");
        }
        if p.rewrites_path() {
            add(":path");
        }
        if let Auth::Key { header, .. } = &p.auth {
            for h in CLIENT_CREDENTIAL_HEADERS {
                add(h);
            }
            add(header);
        }
    }
    names
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
        assert_eq!(c.failover.default_cooldown_ms, 5_000);
        assert_eq!(c.failover.max_backoff_ms, 20_000);
        assert_eq!(c.failover.max_cooldown_ms, 600_000);
        assert_eq!(c.failover.attempt_timeout_ms, 120_000);
        assert_eq!(c.failover.stream_first_byte_timeout_ms, Some(20_000));
        assert_eq!(c.failover.first_token_timeout_ms, None);
        assert_eq!(c.failover.stream_idle_timeout_ms, None);
        assert!(c.failover.routes_streams_apart());
        assert_eq!(c.providers[0].weight, 1);
        assert_eq!(c.providers[0].context_window, None);
        assert_eq!(c.max_body_bytes, 1_000_000);
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(c.failover.is_failure_status(s), "{s}");
        }
        use crate::errors::Class;
        for class in [
            Class::Quota,
            Class::Auth,
            Class::Overloaded,
            Class::ContextLength,
        ] {
            assert!(c.failover.class_fails_over(class), "{class:?}");
        }
        for class in [Class::ContentPolicy, Class::RateLimited, Class::Client] {
            assert!(!c.failover.class_fails_over(class), "{class:?}");
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
            (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"secretRef":{"name":"x"}}}}"#), "groups[0].providers[0].policies.auth", "unknown auth kind `secretRef`, expected `passthrough` or `key`"),
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
            (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"passthrough":{},"key":{"env":"OPENAI_API_KEY"}}}}"#), "groups[0].providers[0].policies.auth", "exactly one auth kind"),
            (one(r#"{"name":"a","cluster":"c","name":"b"}"#), "groups[0].providers[0].name", "given more than once"),
            (one(r#"{"name":"a","cluster":7}"#), "groups[0].providers[0].cluster", "invalid type: a number, expected a string"),
            (one(r#"{"name":"a","cluster":"c","weight":1.5}"#), "groups[0].providers[0].weight", "invalid value: 1.5"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]} x"#.into(), "", "expected nothing after the JSON value"),
            (one(r#"{"name":"a","cluster":"c","contextWindow":0}"#), "groups[0].providers[0].contextWindow", "out of range"),
            (one(r#"{"name":"a","cluster":"c","contextWindow":"128k"}"#), "groups[0].providers[0].contextWindow", "invalid type"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxBackoff":"1s"}}"#.into(), "failover.maxBackoff", "shorter than failover.defaultCooldown"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxBackoff":"20m"}}"#.into(), "failover.maxBackoff", "longer than failover.maxCooldown"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"rate_limited":"return"}}}"#.into(), "failover.errorClasses.rate_limited", "unknown error class; the classes are quota, auth, overloaded, context_length, content_policy"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"quota":"ignore"}}}"#.into(), "failover.errorClasses.quota", "\"ignore\" is not an action"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"quota":true}}}"#.into(), "failover.errorClasses.quota", "invalid type: a boolean"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"quota":"return","quota":"failover"}}}"#.into(), "failover.errorClasses.quota", "given more than once"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"streamFirstByteTimeout":"soon"}}"#.into(), "failover.streamFirstByteTimeout", "bad duration"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","streamFirstByteTimeout":"5s"}}"#.into(), "failover.streamFirstByteTimeout", "needs router mode"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"hedgeAfter":"25s"}}"#.into(), "failover.streamFirstByteTimeout", "must be longer than hedgeAfter"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"firstTokenTimeout":"0s"}}"#.into(), "failover.firstTokenTimeout", "longer than 0s"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","streamIdleTimeout":"5s"}}"#.into(), "failover.streamIdleTimeout", "needs router mode"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"firstTokenTimeout":"5s","streamIdleTimeout":"30s"}}"#.into(), "failover.streamIdleTimeout", "differs from firstTokenTimeout"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","retries":1,"retryWithin":"2s"}}"#.into(), "failover.retryWithin", "needs router mode"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"retries":6}}"#.into(), "failover.retries", "out of range"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"retryWithin":"2s"}}"#.into(), "failover.retryWithin", "needs failover.retries of 1 or more"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"retries":1,"retryWithin":"2m"}}"#.into(), "failover.retryWithin", "out of range"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","backgroundProbes":true}}"#.into(), "failover.backgroundProbes", "needs router mode"),
            (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"backgroundProbes":"yes"}}"#.into(), "failover.backgroundProbes", "invalid type"),
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
    fn stream_timeouts_and_backoff_defaults_follow_what_is_given() {
        let failover = |f: &str| {
            parse(&format!(
                r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"c"}}]}}],"failover":{f}}}"#
            ))
            .unwrap()
            .failover
        };
        let f = failover(r#"{"streamFirstByteTimeout":"0s"}"#);
        assert_eq!(f.stream_first_byte_timeout_ms, None);
        assert!(!f.routes_streams_apart());
        let f = failover(r#"{"streamFirstByteTimeout":"0s","streamIdleTimeout":"30s"}"#);
        assert!(f.routes_streams_apart());
        assert_eq!(f.stream_silence_ms(), Some(30_000));
        let f = failover(r#"{"firstTokenTimeout":"5s","streamIdleTimeout":"5s"}"#);
        assert_eq!(f.stream_silence_ms(), Some(5_000));
        // Dispatch mode applies none of them, and the default does not make it refuse.
        let f = failover(r#"{"mode":"dispatch"}"#);
        assert_eq!(f.stream_first_byte_timeout_ms, None);
        assert!(!f.routes_streams_apart());
        // A longer defaultCooldown without maxBackoff: no doubling beyond it.
        let f = failover(r#"{"defaultCooldown":"60s"}"#);
        assert_eq!(f.max_backoff_ms, 60_000);
        let f = failover(r#"{"defaultCooldown":"1s","maxCooldown":"10s"}"#);
        assert_eq!(f.max_backoff_ms, 10_000);
        let f = failover(r#"{"hedgeAfter":"25s","streamFirstByteTimeout":"30s"}"#);
        assert_eq!(f.stream_first_byte_timeout_ms, Some(30_000));
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

    #[test]
    fn a_health_view_only_configuration_takes_only_health_path() {
        let c = Config::parse(br#"{"healthPath":"/h"}"#, &|_| None).unwrap();
        assert!(c.providers.is_empty() && c.groups.is_empty());
        assert_eq!(c.health_path.as_deref(), Some("/h"));
        let e = Config::parse(br#"{"healthPath":"/h","maxBodyBytes":5}"#, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxBodyBytes: a health-view-only"), "{e}");
        let e = Config::parse(br#"{"maxBodyBytes":5}"#, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `groups`"), "{e}");
    }

    #[test]
    fn latency_controls_are_off_by_default_and_checked() {
        let one = |failover: &str| {
            Config::parse(
                format!(r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"a"}}]}}],"failover":{failover}}}"#)
                    .as_bytes(),
                &|_| None,
            )
        };
        let off = one("{}").unwrap().failover;
        assert_eq!(
            (off.first_byte_timeout_ms, off.hedge_after_ms),
            (None, None)
        );
        let on = one(r#"{"firstByteTimeout":"750ms","hedgeAfter":"250ms"}"#)
            .unwrap()
            .failover;
        assert_eq!(
            (on.first_byte_timeout_ms, on.hedge_after_ms),
            (Some(750), Some(250))
        );
        for (raw, want) in [
            (
                r#"{"firstByteTimeout":"1s","mode":"dispatch"}"#,
                "failover.firstByteTimeout: needs router mode",
            ),
            (
                r#"{"firstByteTimeout":"0s"}"#,
                "failover.firstByteTimeout: must be longer than 0s",
            ),
            (
                r#"{"hedgeAfter":"0s"}"#,
                "failover.hedgeAfter: must be longer than 0s",
            ),
            (
                r#"{"hedgeAfter":"1s","mode":"dispatch"}"#,
                "failover.hedgeAfter: needs router mode",
            ),
            (
                r#"{"hedgeAfter":"1s","withinRequest":false}"#,
                "failover.hedgeAfter: needs withinRequest",
            ),
            (
                r#"{"hedgeAfter":"2s","firstByteTimeout":"2s"}"#,
                "failover.hedgeAfter: 2s must be shorter than firstByteTimeout (2000 ms)",
            ),
            (r#"{"hedgeAfter":"soon"}"#, "failover.hedgeAfter"),
        ] {
            let e = one(raw).unwrap_err().to_string();
            assert!(e.contains(want), "{raw}: {e}");
        }
    }
}
