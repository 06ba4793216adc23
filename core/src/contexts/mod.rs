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

use crate::host::Host;
use crate::names::{AT_KEY, REFUSED_KEY};
use crate::plan::At;

/// Envoy's response flag for a downstream that went away (`DC`).
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;

/// Where the request stands in its plan, the one place it is read: the upstream
/// filter of each attempt and the hedger ask it.
pub fn where_now(h: &impl Host) -> At {
    At::from_state(h.property(&[AT_KEY]).as_deref())
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
