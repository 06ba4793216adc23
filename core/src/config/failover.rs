//! The `failover` object, validated field by field.

use super::reader::{invalid_number, quoted, whole_number, Obj};
use super::*;

pub(super) fn validate_failover(raw: Option<Obj<'_>>) -> Result<Failover, ConfigError> {
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
pub(super) fn on_status(raw: &Obj<'_>) -> Result<[bool; 600], ConfigError> {
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
pub(super) fn duration(raw: &Obj<'_>, field: &str, default: &str) -> Result<u64, ConfigError> {
    let text = raw.string(field)?.unwrap_or(default);
    parse_duration_ms(text).map_err(|m| ConfigError::new(raw.at(field), m))
}

/// A duration field of `failover` that must be longer than 0s.
pub(super) fn positive_duration(
    raw: &Obj<'_>,
    field: &str,
    default: &str,
) -> Result<u64, ConfigError> {
    let ms = duration(raw, field, default)?;
    if ms == 0 {
        return Err(ConfigError::new(raw.at(field), "must be longer than 0s"));
    }
    Ok(ms)
}

/// `failover.defaultCooldown`, `maxBackoff` and `maxCooldown`.
pub(super) struct Cooldowns {
    default_ms: u64,
    max_backoff_ms: u64,
    max_ms: u64,
}

pub(super) fn cooldowns(raw: &Obj<'_>) -> Result<Cooldowns, ConfigError> {
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
pub(super) fn consecutive_failures(raw: &Obj<'_>) -> Result<u32, ConfigError> {
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
pub(super) fn mode(raw: &Obj<'_>) -> Result<Mode, ConfigError> {
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
pub(super) fn before_the_first_byte(
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
pub(super) const MAX_RETRIES: u64 = 5;
/// The longest `retryWithin`: a client waits this long at most for one provider.
pub(super) const MAX_RETRY_WITHIN_MS: u64 = 60_000;

/// `failover.retries` (0 unless given) and `failover.retryWithin` (off unless given;
/// router mode only).
pub(super) fn same_provider_retries(
    raw: &Obj<'_>,
    mode: Mode,
) -> Result<(u32, Option<u64>), ConfigError> {
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
pub(super) fn stream_first_byte_timeout(
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
pub(super) fn stream_silences(
    raw: &Obj<'_>,
    mode: Mode,
) -> Result<(Option<u64>, Option<u64>), ConfigError> {
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
pub(super) fn error_classes(raw: Option<Obj<'_>>) -> Result<[bool; 5], ConfigError> {
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
