//! `control`: per-request control for trusted callers (README "Per-request
//! control"). Off unless given. A request's control headers count only with the
//! shared secret from `control.secret.env`; the timeouts a request may set are
//! bounded here.

use super::failover::positive_duration;
use super::reader::Obj;
use super::{ConfigError, Mode};

/// A secret shorter than this is refused: a caller could guess it.
const MIN_SECRET_BYTES: usize = 16;

/// The configured `control` section.
#[derive(Clone, PartialEq, Eq)]
pub struct Control {
    /// The shared secret a trusted request carries in `x-llm-failover-secret`.
    pub secret: Vec<u8>,
    /// The environment variable it comes from (for render).
    pub secret_env: String,
    /// The `firstByteTimeout` a request may set; `None`: it may not.
    pub first_byte_timeout: Option<Bounds>,
    /// The `hedgeAfter` a request may set; `None`: it may not (it may still switch
    /// hedging off, when `failover.hedgeAfter` is set).
    pub hedge_after: Option<Bounds>,
}

// Hand-written so that the secret can never reach a log line through `{:?}`.
impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("secret", &"<redacted>")
            .field("secret_env", &self.secret_env)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("hedge_after", &self.hedge_after)
            .finish()
    }
}

/// The shortest and longest value a request may ask for, inclusive (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Bounds {
    pub fn contain(&self, ms: u64) -> bool {
        (self.min_ms..=self.max_ms).contains(&ms)
    }
}

/// What `control` depends on elsewhere in the configuration.
pub(super) struct Context {
    pub mode: Mode,
    pub hedge_after_ms: Option<u64>,
    /// `failover.attemptTimeout`: no attempt waits longer, whatever a request asks.
    pub attempt_timeout_ms: u64,
}

/// `control`, when given.
pub(super) fn validate_control(
    raw: Option<Obj<'_>>,
    context: Context,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Control>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    raw.only(&["secret", "firstByteTimeout", "hedgeAfter"])?;
    if context.mode == Mode::Dispatch {
        return Err(ConfigError::new(
            raw.path.clone(),
            "needs router mode: dispatch mode plans and times its attempts itself, and \
             per-request control is built on the router's plan and per-try timeout",
        ));
    }
    let first_byte_timeout = bounds(&raw, "firstByteTimeout")?;
    if let Some(b) = first_byte_timeout.filter(|b| b.max_ms > context.attempt_timeout_ms) {
        return Err(ConfigError::new(
            raw.at("firstByteTimeout"),
            format!(
                "max ({} ms) is longer than failover.attemptTimeout ({} ms): a request \
                 could wait longer than any attempt may",
                b.max_ms, context.attempt_timeout_ms
            ),
        ));
    }
    let hedge_after = bounds(&raw, "hedgeAfter")?;
    if let (Some(_), None) = (hedge_after, context.hedge_after_ms) {
        return Err(ConfigError::new(
            raw.at("hedgeAfter"),
            "needs failover.hedgeAfter (the value for requests that set none)",
        ));
    }
    if let (Some(h), Some(f)) = (hedge_after, first_byte_timeout) {
        if h.min_ms >= f.max_ms {
            return Err(ConfigError::new(
                raw.at("hedgeAfter"),
                format!(
                    "min ({} ms) must be shorter than firstByteTimeout's max ({} ms): no \
                     request could set both",
                    h.min_ms, f.max_ms
                ),
            ));
        }
    }
    let (secret, secret_env) = secret(&raw, env)?;
    Ok(Some(Control {
        secret,
        secret_env,
        first_byte_timeout,
        hedge_after,
    }))
}

/// `control.<field>`: `{"min": "1s", "max": "30s"}`, both required.
fn bounds(raw: &Obj<'_>, field: &str) -> Result<Option<Bounds>, ConfigError> {
    let Some(b) = raw.object(field)? else {
        return Ok(None);
    };
    b.only(&["min", "max"])?;
    b.required("min")?;
    b.required("max")?;
    let min_ms = positive_duration(&b, "min", "")?;
    let max_ms = positive_duration(&b, "max", "")?;
    if min_ms > max_ms {
        return Err(ConfigError::new(
            b.at("min"),
            format!("{min_ms} ms is longer than max ({max_ms} ms)"),
        ));
    }
    Ok(Some(Bounds { min_ms, max_ms }))
}

/// `control.secret`: `{"env": "VAR"}`, the variable set in Envoy's environment.
fn secret(
    raw: &Obj<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<u8>, String), ConfigError> {
    let s = raw.object("secret")?.ok_or_else(|| {
        ConfigError::new(
            raw.at("secret"),
            "is required: control headers count only on a request that carries this \
             shared secret",
        )
    })?;
    s.only(&["env"])?;
    let var = s.env_name()?;
    let value = env(var).unwrap_or_default();
    let value = value.trim();
    if value.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::new(
            s.at("env"),
            format!(
                "environment variable {var} must hold a secret of at least \
                 {MIN_SECRET_BYTES} bytes (it holds {}); it must be exported in Envoy's \
                 own environment and listed in host_env_keys (render lists it)",
                value.len()
            ),
        ));
    }
    if value.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(ConfigError::new(
            s.at("env"),
            format!(
                "environment variable {var} holds characters a header value cannot \
                 carry (printable ASCII without spaces only)"
            ),
        ));
    }
    Ok((value.as_bytes().to_vec(), var.to_string()))
}
