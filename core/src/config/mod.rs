//! The plugin configuration: the JSON users write, read with the crate's own JSON
//! parser (`json.rs`) member by member (unknown fields refused), and validated into
//! the typed [`Config`] the filter runs with. Every error names the field it is
//! about. `llm-failover render` uses the same parser, so it refuses exactly what the
//! filter refuses.
//!
//! In pieces: `reader` (typed access to a JSON object, field paths built one way),
//! `parse` (the top level and the groups), `provider`, `failover` and `endpoint`
//! (each validated field by field); this file holds the typed result.

mod control;
mod endpoint;
mod failover;
mod parse;
mod provider;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;

pub use control::{Bounds, Control};

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

impl Endpoint {
    /// `host[:port]` as a Host header: the port only when it is not the scheme's
    /// own, an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
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
    /// `control`: per-request control for callers with its secret; `None`: off.
    pub control: Option<Control>,
    /// `triedHeader`: after more than one attempt the answer names each provider
    /// asked and why it failed (`x-llm-failover-tried`). On unless false.
    pub tried_header: bool,
}

/// What Envoy's log says when a filter has no plugin configuration at all.
pub const EMPTY_CONFIGURATION: &str =
    "invalid llm-failover configuration: the plugin configuration is empty";

impl Config {
    /// Whether a trusted request may set its own `firstByteTimeout` (`control`): then
    /// attempts are timed, and a timed-out one is judged by the request's limit.
    pub fn requests_time_their_attempts(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|c| c.first_byte_timeout.is_some())
    }

    /// The filter's own request headers, which a dispatched call (a failover in
    /// dispatch mode, a hedge) must not pass on: a client's are never a provider's.
    pub fn internal_request_headers(&self) -> [&str; 3] {
        [self.cluster_header.as_str(), STREAMED_HEADER, PROBE_HEADER]
    }
}
