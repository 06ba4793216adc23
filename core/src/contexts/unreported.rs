//! Attempts whose end the host does not report. Envoy's dynamic modules destroy the
//! upstream filter of an attempt that ended without an answer (a refused
//! connection, a reset, a per-try timeout) without completing it, and a destroyed
//! filter can no longer set filter state (measured, ARCHITECTURE.md). On such a host
//! (`Host::reports_attempt_ends` false) each attempt is marked open when it starts,
//! with the next attempt named in advance for the router. The mark says what the
//! attempt still waits for: its headers, its first event (held for
//! `firstTokenTimeout`), or the rest of its body (headers sent on to the client); the
//! end of its answer closes it. The next attempt's filter, or the downstream filter
//! for the last one, records an attempt it finds still open.

use crate::attempt;
use crate::config::Config;
use crate::health::Failure;
use crate::host::Host;
use crate::names::{CONTROL_TIMEOUT_KEY, OPEN_KEY, STREAMED_KEY};
use crate::plan::At;

use super::telemetry::Telemetry;

/// Envoy's per-try timers and this filter's clock start a hair apart.
pub const TIMER_SLACK_MS: u64 = 50;

/// The value of a closed mark (an empty filter-state value is not stored everywhere).
const CLOSED: &str = "-";

/// What an open attempt waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Its response headers.
    Headers,
    /// Its first event: a stream held for `firstTokenTimeout`, nothing sent on yet.
    FirstEvent,
    /// The rest of its answer, whose headers went on to the client.
    Body,
}

impl Waiting {
    fn code(self) -> &'static str {
        match self {
            Waiting::Headers => "",
            Waiting::FirstEvent => ":f",
            Waiting::Body => ":b",
        }
    }
}

/// An attempt marked open: where it was in the plan, since when (its start, or the
/// moment it began waiting for what it waits for) and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub at: At,
    pub started_ms: u64,
    pub waiting: Waiting,
}

/// Marks the attempt at `at` open from `now`, waiting for its headers.
pub fn mark(h: &mut impl Host, at: At, now: u64) {
    mark_waiting(h, at, now, Waiting::Headers);
}

/// Marks the attempt at `at` as waiting for `waiting` from `now`.
pub fn mark_waiting(h: &mut impl Host, at: At, now: u64, waiting: Waiting) {
    h.set_property_str(
        OPEN_KEY,
        &format!("{}:{now}{}", at.encode(), waiting.code()),
    );
}

/// The attempt got an answer: it is settled by the answer's own handling.
pub fn close(h: &mut impl Host) {
    h.set_property_str(OPEN_KEY, CLOSED);
}

/// The attempt still marked open, if any, without closing the mark.
pub fn peek(h: &impl Host) -> Option<Open> {
    let mark = h.property(&[OPEN_KEY])?;
    let text = std::str::from_utf8(&mark).ok()?;
    let (at, rest) = text.split_once(':')?;
    let (started, waiting) = match rest.split_once(':') {
        None => (rest, Waiting::Headers),
        Some((started, "f")) => (started, Waiting::FirstEvent),
        Some((started, "b")) => (started, Waiting::Body),
        Some(_) => return None,
    };
    Some(Open {
        at: At::decode(at.as_bytes())?,
        started_ms: started.parse().ok()?,
        waiting,
    })
}

/// The attempt still marked open, if any; the mark is closed.
pub fn take(h: &mut impl Host) -> Option<Open> {
    let open = peek(h)?;
    close(h);
    Some(open)
}

/// The timeout Envoy's router gives an attempt to send its headers, below
/// attemptTimeout, and its name: firstByteTimeout, or for a streamed request
/// streamFirstByteTimeout when shorter (render's route for streamed requests).
pub fn per_try_limit(config: &Config, h: &impl Host) -> Option<(u64, &'static str)> {
    let failover = &config.failover;
    // A request's own firstByteTimeout is the router's per-try timeout on either
    // route (`x-envoy-upstream-rq-per-try-timeout-ms`, README "Per-request control").
    if config.requests_time_their_attempts() {
        if let Some(ms) = h.property_number::<u64>(CONTROL_TIMEOUT_KEY) {
            return Some((ms, "the request's own firstByteTimeout"));
        }
    }
    let first_byte = failover
        .first_byte_timeout_ms
        .map(|ms| (ms, "firstByteTimeout"));
    let streamed = failover
        .stream_first_byte_timeout_ms
        .filter(|_| h.property(&[STREAMED_KEY]).is_some())
        .map(|ms| (ms, "streamFirstByteTimeout"));
    match (first_byte, streamed) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Records the failure of `open`, an attempt to provider `index` that ended without
/// an answer: a stall when it was held for its first event (Envoy's per-try idle
/// timer, `firstTokenTimeout`, ended it), a timeout when it lasted its per-try
/// limit, else a connection failure. Its reason.
pub fn record(
    h: &impl Host,
    config: &Config,
    telemetry: &Telemetry,
    index: usize,
    open: Open,
    now: u64,
) -> &'static str {
    let lasted = now.saturating_sub(open.started_ms);
    let (failure, reason, why) = if open.waiting != Waiting::Headers {
        let limit = config.failover.first_token_timeout_ms.unwrap_or(0);
        (
            Failure::Stall,
            "stall",
            format!("no first event within firstTokenTimeout ({limit} ms)"),
        )
    } else {
        match per_try_limit(config, h) {
            Some((limit, name)) if lasted + TIMER_SLACK_MS >= limit => (
                Failure::Timeout,
                "timeout",
                format!("no response headers within {name} ({limit} ms)"),
            ),
            _ => {
                let (failure, reason) = attempt::unreachable();
                (
                    failure,
                    reason,
                    "no response: refused, reset or timed out".to_string(),
                )
            }
        }
    };
    let _ = super::record_failure(h, config, telemetry, index, failure, None, &why);
    reason
}
