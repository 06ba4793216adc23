//! The filters' logic, written against [`crate::host::Host`]: a host crate's
//! callbacks gather their inputs, call these handlers and map the `Action` back.
//!
//! - `root`: the configuration, the tick (gauges, hedges, background probes), and
//!   the filter each new request or attempt gets;
//! - `downstream`: the per-request filter, by what it serves: `routed` (router
//!   mode), `dispatched` (dispatch mode) or `health_view`; `request` is what the
//!   two modes share;
//! - `upstream`: the filter on each provider cluster, one per attempt;
//! - `hedging`: hedges sent from the root's tick;
//! - `telemetry`: counting into the host's metrics.

pub mod dispatched;
pub mod downstream;
pub mod health_view;
pub mod hedging;
pub mod request;
pub mod root;
pub mod routed;
pub mod telemetry;
pub mod unreported;
pub mod upstream;

#[cfg(test)]
mod tests;

use crate::attempt::{self, Recorded};
use crate::config::Config;
use crate::health::Failure;
use crate::host::Host;
use crate::names::{AT_KEY, REFUSED_KEY, STREAM_KEY};
use crate::plan::At;
use crate::store::StoreError;

use telemetry::Telemetry;

/// Envoy's response flag for a downstream that went away (`DC`).
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;

/// Where the request stands in its plan, the one place it is read: the upstream
/// filter of each attempt and the hedger ask it.
pub fn where_now(h: &impl Host) -> At {
    At::from_state(h.property(&[AT_KEY]).as_deref())
}

/// The attempt under way, as the downstream filter sees it between attempts' hooks:
/// where the request stands, except on a host that does not report an attempt's end,
/// where `AT_KEY` names the next attempt in advance and the one under way is the
/// attempt marked open (`unreported.rs`).
pub fn attempt_under_way(h: &impl Host) -> At {
    if h.reports_attempt_ends() {
        return where_now(h);
    }
    unreported::peek(h).map_or_else(|| where_now(h), |open| open.at)
}

/// Records a failure of provider `index` now (counted, or its cooldown opened and
/// counted; `evidence_ms`: the delay the provider asked for) and logs what it means:
/// the one way every filter blames a provider.
pub fn record_failure(
    h: &impl Host,
    config: &Config,
    telemetry: &Telemetry,
    index: usize,
    failure: Failure,
    evidence_ms: Option<u64>,
    why: &str,
) -> Result<Recorded, StoreError> {
    let now = h.now_ms();
    let sink = telemetry.sink(h);
    let result = attempt::record_failure(config, h, &sink, index, failure, evidence_ms, now);
    log::info!("{}", attempt::describe(config, index, &result, why, now));
    result
}

/// The answer of provider `index` broke off after its headers went on to the client
/// (`how`: `broken`, ended without its end; `reset`): its provider's failure, and what
/// the access log's `stream` shows. A reset when the answer's last data
/// (`last_data_ms`, 0: none) is `streamIdleTimeout` old was Envoy's per-try idle timer:
/// a stall. The upstream filter's judgement when the host reports the attempt's end,
/// the downstream filter's when it does not (`unreported.rs`).
pub fn record_broken_stream(
    h: &mut impl Host,
    config: &Config,
    telemetry: &Telemetry,
    index: usize,
    how: &str,
    last_data_ms: u64,
) {
    let now = h.now_ms();
    if let Some(idle) = config.failover.stream_idle_timeout_ms {
        if how == "reset"
            && last_data_ms > 0
            && now.saturating_sub(last_data_ms) + unreported::TIMER_SLACK_MS >= idle
        {
            h.set_property_str(STREAM_KEY, "stall");
            let why = format!("its stream stalled for streamIdleTimeout ({idle} ms)");
            let _ = record_failure(&*h, config, telemetry, index, Failure::Stall, None, &why);
            return;
        }
    }
    h.set_property_str(STREAM_KEY, how);
    let why = format!("its stream broke off ({how})");
    let _ = record_failure(
        &*h,
        config,
        telemetry,
        index,
        Failure::BrokenStream,
        None,
        &why,
    );
}

/// An attempt that ended without an answer because the client went away (the router
/// cancelled it) or the gateway answered the client itself (`REFUSED_KEY`): the
/// provider is not to blame.
pub fn not_the_providers_doing(h: &impl Host) -> bool {
    let details = h
        .property(&["response", "code_details"])
        .unwrap_or_default();
    let flags = h.property_u64(&["response", "flags"]).unwrap_or(0);
    details == b"downstream_remote_disconnect"
        || flags & DOWNSTREAM_CONNECTION_TERMINATION != 0
        || h.property(&[REFUSED_KEY]).is_some()
}
