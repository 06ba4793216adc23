//! Metric names. Envoy shows a wasm metric as `wasmcustom.<name>`; the bootstrap's
//! `stats_config.stats_tags` (see `envoy/envoy.yaml` and the README) turn the
//! `.provider.<p>`, `.status.<class>`, `.from.<a>`, `.to.<b>`, `.reason.<r>`, `.class.<c>` and `.winner.<w>`
//! segments into Prometheus labels. Pure: registering and counting is `contexts/telemetry.rs`'s.

use crate::health::State;

/// `llm_failover_requests{provider, status_class}`: answers the client got, by the
/// provider that gave them.
pub fn requests(provider: &str, status: u16) -> String {
    let class = STATUS_CLASSES[status_class(status)];
    format!("llm_failover.requests.provider.{provider}.status.{class}")
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of `status`'s class in `1xx`..`5xx`; anything outside 100-599 counts as 5xx.
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

/// `llm_failover_failovers{from, to, reason}`: a request sent on from one provider to
/// another within itself.
pub fn failovers(from: &str, to: &str, reason: &str) -> String {
    format!("llm_failover.failovers.from.{from}.to.{to}.reason.{reason}")
}

/// `llm_failover_hedges{from, to, winner}`: hedges sent (`hedgeAfter`), from the
/// provider that had not answered to the one also asked, and whose answer the
/// client got.
pub fn hedges(from: &str, to: &str, winner: &str) -> String {
    format!("llm_failover.hedges.from.{from}.to.{to}.winner.{winner}")
}

/// `llm_failover_errors{provider, class}`: failing answers (400 and up) providers
/// gave, by error class (`errors.rs`), whether or not the request went on. Envoy's
/// own upstream counters see a retried answer as the filter's retry status instead.
pub fn errors(provider: &str, class: &str) -> String {
    format!("llm_failover.errors.provider.{provider}.class.{class}")
}

/// `llm_failover_cooldowns{provider, reason}`: cooldowns started.
pub fn cooldowns(provider: &str, reason: &str) -> String {
    format!("llm_failover.cooldowns.provider.{provider}.reason.{reason}")
}

/// `llm_failover_health{provider}`: 0 healthy, 1 cooling, 2 half-open, 3 probing
/// (4: removed by a reload, [`HEALTH_REMOVED`]).
pub fn health(provider: &str) -> String {
    format!("llm_failover.health.provider.{provider}")
}

/// The health gauge of a provider a reload dropped: Envoy cannot delete a stat from a
/// live VM's scope, so the gauge stays, with this value (the dashboard leaves it out).
pub const HEALTH_REMOVED: u64 = 4;

pub fn health_value(state: State) -> u64 {
    match state {
        State::Healthy => 0,
        State::Cooling => 1,
        State::HalfOpen => 2,
        State::Probing => 3,
    }
}

/// `llm_failover_failover_time_ms`: how long a request spent failing over, from the
/// first failure it met to the answer it got (histogram).
pub const FAILOVER_TIME_MS: &str = "llm_failover.failover_time_ms";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_labels_as_segments() {
        assert_eq!(
            requests("openai-fallback", 200),
            "llm_failover.requests.provider.openai-fallback.status.2xx"
        );
        assert_eq!(
            requests("p", 429),
            "llm_failover.requests.provider.p.status.4xx"
        );
        assert_eq!(
            requests("p", 503),
            "llm_failover.requests.provider.p.status.5xx"
        );
        assert_eq!(
            failovers("a", "b", "status"),
            "llm_failover.failovers.from.a.to.b.reason.status"
        );
        assert_eq!(
            cooldowns("a", "proactive"),
            "llm_failover.cooldowns.provider.a.reason.proactive"
        );
        assert_eq!(health("a"), "llm_failover.health.provider.a");
        assert_eq!(
            errors("a", "quota"),
            "llm_failover.errors.provider.a.class.quota"
        );
        assert_eq!(
            hedges("a", "b", "b"),
            "llm_failover.hedges.from.a.to.b.winner.b"
        );
        assert_eq!(health_value(State::Probing), 3);
    }
}
