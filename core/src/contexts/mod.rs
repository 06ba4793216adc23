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
use crate::names::AT_KEY;
use crate::plan::At;

/// Where the request stands in its plan, the one place it is read: the upstream
/// filter of each attempt and the hedger ask it.
pub fn where_now(h: &impl Host) -> At {
    At::from_state(h.property(&[AT_KEY]).as_deref())
}
