//! The attempt logic both failover modes share: which providers a request tries and
//! in what order, who probes a recovering provider, and what each attempt's outcome
//! does to that provider's health. Pure: the shared-data store, the clock and the
//! metrics sink come in as arguments, so host unit tests drive it with an in-memory
//! store and a stepped clock.
//!
//! Not here: reading headers or properties (the contexts in `http.rs` and
//! `upstream.rs` do that), parsing `Retry-After` (`retry_after.rs`), the breaker's
//! state machine itself (`health.rs`).

use crate::config::Config;
use crate::health::{Failure, HealthRecord, State};
use crate::metrics;
use crate::outcome::Outcome;
use crate::select::{self, HealthView};
use crate::store::{self, SharedData, StoreError};

/// Where the attempt logic counts (cooldowns started). The real sink is Envoy's
/// metrics (`telemetry.rs`); tests use a list.
pub trait MetricsSink {
    fn count(&self, name: String);
}

/// Provider health as one request sees it, read from the store on demand, each
/// record at most once, the clock at most once: one request's consistent view.
pub struct LazyHealth<'a> {
    config: &'a Config,
    store: &'a dyn SharedData,
    clock: &'a dyn Fn() -> u64,
    records: Vec<Option<HealthRecord>>,
    now: Option<u64>,
}

impl<'a> LazyHealth<'a> {
    pub fn new(config: &'a Config, store: &'a dyn SharedData, clock: &'a dyn Fn() -> u64) -> Self {
        Self {
            config,
            store,
            clock,
            records: vec![None; config.providers.len()],
            now: None,
        }
    }

    /// Drops a cached record so the next look reads it again (after a lost claim).
    fn forget(&mut self, index: usize) {
        if let Some(slot) = self.records.get_mut(index) {
            *slot = None;
        }
    }
}

impl HealthView for LazyHealth<'_> {
    fn record(&mut self, index: usize) -> HealthRecord {
        if let Some(Some(r)) = self.records.get(index) {
            return *r;
        }
        let r = self
            .config
            .providers
            .get(index)
            .map(|p| store::read_health(self.store, &p.health_key))
            .unwrap_or_default();
        if let Some(slot) = self.records.get_mut(index) {
            *slot = Some(r);
        }
        r
    }

    fn now_ms(&mut self) -> u64 {
        let clock = self.clock;
        *self.now.get_or_insert_with(clock)
    }
}

/// A provider picked for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// Its record as read when it was picked: decides whether a success has anything
    /// to reset (usually not, so nothing is written).
    pub record: HealthRecord,
    /// The end of the probe claim this request won on it, when it was half-open.
    pub claim: Option<u64>,
}

/// Picks the next provider: the first group with one that is healthy, or half-open
/// and whose probe this request manages to claim (compare-and-swap, so exactly one
/// request across all workers probes it). `tried` marks providers this request
/// already has. `None` when nothing is available.
pub fn choose(
    config: &Config,
    store: &dyn SharedData,
    view: &mut LazyHealth<'_>,
    tried: &[bool],
    ticket: u64,
) -> Option<Pick> {
    let mut excluded: Vec<bool> = tried.to_vec();
    excluded.resize(config.providers.len(), false);
    loop {
        let i = select::next_choice(config, view, &excluded, ticket)?;
        if view.state(i) != State::HalfOpen {
            return Some(Pick {
                index: i,
                record: view.record(i),
                claim: None,
            });
        }
        let now = view.now_ms();
        let key = &config.providers[i].health_key;
        match store::update_health_if(store, key, |h| h.claim_probe(now, &config.failover)) {
            Ok(Some(claimed)) => {
                return Some(Pick {
                    index: i,
                    record: claimed,
                    claim: Some(claimed.probe_until_ms),
                })
            }
            // Another request probes it: skip it for this one.
            Ok(None) | Err(_) => {
                if let Some(e) = excluded.get_mut(i) {
                    *e = true;
                }
                view.forget(i);
            }
        }
    }
}

/// The providers one request will try, in order, at most once each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub picks: Vec<Pick>,
    /// True when no provider was available and the plan holds only the one that can
    /// be tried again first (its failure then goes to the client).
    pub all_cooling: bool,
}

impl Plan {
    pub fn first(&self) -> Option<&Pick> {
        self.picks.first()
    }

    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.picks.iter().map(|p| p.index)
    }
}

/// The attempt order for a new request: every available provider, highest group
/// first, weights inside a group, cooling ones left out; with `withinRequest` off,
/// only the first. Half-open providers are in it only where this request won their
/// probe claim; a claim not used by the end of the request must be given back
/// (`release`).
pub fn plan(
    config: &Config,
    store: &dyn SharedData,
    view: &mut LazyHealth<'_>,
    ticket: u64,
) -> Plan {
    let n = config.providers.len();
    let mut tried = vec![false; n];
    let mut picks = Vec::new();
    let limit = if config.can_fail_over { n } else { 1 };
    while picks.len() < limit {
        let Some(pick) = choose(config, store, view, &tried, ticket) else {
            break;
        };
        if let Some(t) = tried.get_mut(pick.index) {
            *t = true;
        }
        picks.push(pick);
    }
    if picks.is_empty() {
        let i = select::soonest(config, view);
        picks.push(Pick {
            index: i,
            record: view.record(i),
            claim: None,
        });
        return Plan {
            picks,
            all_cooling: true,
        };
    }
    Plan {
        picks,
        all_cooling: false,
    }
}

/// Whether the downstream filter writes the first attempt's model into the body
/// itself (router mode): only when that provider overrides the model and so does
/// every later one in the plan, so no later attempt needs the client's own model
/// back (each upstream filter after the first rewrites the router's copy for its
/// provider). Otherwise every attempt's upstream filter rewrites its own.
pub fn downstream_rewrites_first_body(config: &Config, plan: &Plan) -> bool {
    let overrides = |i: usize| {
        config
            .providers
            .get(i)
            .is_some_and(|p| p.model_json.is_some())
    };
    !plan.picks.is_empty() && plan.indices().all(overrides)
}

/// Gives back a probe claim that was not used (or whose answer never came), if the
/// record still holds that very claim.
pub fn release(config: &Config, store: &dyn SharedData, index: usize, claim: u64) {
    if let Some(p) = config.providers.get(index) {
        let _ = store::update_health_if(store, &p.health_key, |h| h.release_probe(claim));
    }
}

/// What an attempt's outcome means for the provider's health, and the `reason`
/// label of the failover it causes: the one table for both modes.
pub fn failure_of(outcome: Outcome, status: u16) -> Option<(Failure, &'static str)> {
    match (outcome, status) {
        (Outcome::ProviderFailure, 429) => Some((Failure::RateLimited, "status")),
        (Outcome::ProviderFailure, _) => Some((Failure::ServerError, "status")),
        (Outcome::Unreachable, _) => Some((Failure::Unreachable, "connection")),
        (Outcome::Answer | Outcome::LocalReply, _) => None,
    }
}

/// What recording a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub record: HealthRecord,
    /// A new cooldown started (it was not cooling before this failure).
    pub cooldown_started: bool,
}

/// Records a failure of provider `index`: counts it, or opens its cooldown (see
/// `health.rs`); counts a started cooldown in `sink`. `evidence_ms` is the delay the
/// provider asked for, if it said.
pub fn record_failure(
    config: &Config,
    store: &dyn SharedData,
    sink: &dyn MetricsSink,
    index: usize,
    failure: Failure,
    evidence_ms: Option<u64>,
    now_ms: u64,
) -> Result<Recorded, StoreError> {
    let Some(provider) = config.providers.get(index) else {
        return Err(StoreError::Host(format!("no provider {index}")));
    };
    let was_cooling = std::cell::Cell::new(false);
    let record = store::update_health(store, &provider.health_key, |h| {
        was_cooling.set(h.state(now_ms) == State::Cooling);
        h.after_failure(failure, evidence_ms, now_ms, &config.failover)
    })?;
    let cooldown_started = record.state(now_ms) != State::Healthy && !was_cooling.get();
    if cooldown_started {
        sink.count(metrics::cooldowns(&provider.name, record.reason.as_str()));
    }
    Ok(Recorded {
        record,
        cooldown_started,
    })
}

/// Records a good answer of provider `index`: resets its breaker when `known` (the
/// record as read when it was picked; `None` when unknown) had anything to reset.
pub fn record_success(
    config: &Config,
    store: &dyn SharedData,
    index: usize,
    known: Option<HealthRecord>,
) {
    if known.is_some_and(|r| r.after_success().is_none()) {
        return;
    }
    if let Some(p) = config.providers.get(index) {
        let _ = store::update_health_if(store, &p.health_key, HealthRecord::after_success);
    }
}

/// A log line for a recorded failure.
pub fn describe(
    config: &Config,
    index: usize,
    result: &Result<Recorded, StoreError>,
    why: &str,
    now_ms: u64,
) -> String {
    let name = config
        .providers
        .get(index)
        .map(|p| p.name.as_str())
        .unwrap_or("?");
    match result {
        Ok(r) if r.record.cooling_until_ms > now_ms => format!(
            "llm-failover: provider {name} failed ({why}); cooling down for {} ms",
            r.record.cooling_until_ms - now_ms
        ),
        Ok(r) if r.record.cooling_until_ms != 0 => {
            format!("llm-failover: provider {name} failed ({why}); cooling down for 0 ms")
        }
        Ok(r) => format!(
            "llm-failover: provider {name} failed ({why}); {} of {} failures before a cooldown",
            r.record.failures, config.failover.consecutive_failures
        ),
        Err(e) => format!(
            "llm-failover: provider {name} failed ({why}) but its health could not be saved: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Counted(RefCell<Vec<String>>);
    impl MetricsSink for Counted {
        fn count(&self, name: String) {
            self.0.borrow_mut().push(name);
        }
    }

    fn config(failover: &str) -> Config {
        let json = format!(
            r#"{{"groups":[
              {{"providers":[{{"name":"p","cluster":"p"}}]}},
              {{"providers":[{{"name":"s1","cluster":"s1","weight":3}},{{"name":"s2","cluster":"s2"}}]}},
              {{"providers":[{{"name":"t","cluster":"t"}}]}}],
              "failover":{failover}}}"#
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    const NOW: u64 = 1_000_000;

    fn plan_at(c: &Config, s: &MemoryStore, now: u64, ticket: u64) -> Plan {
        let clock = move || now;
        let mut view = LazyHealth::new(c, s, &clock);
        plan(c, s, &mut view, ticket)
    }

    fn order(p: &Plan) -> Vec<usize> {
        p.indices().collect()
    }

    fn fail(
        c: &Config,
        s: &MemoryStore,
        i: usize,
        failure: Failure,
        evidence: Option<u64>,
        now: u64,
    ) -> Recorded {
        record_failure(c, s, &Counted::default(), i, failure, evidence, now).unwrap()
    }

    #[test]
    fn the_first_body_is_rewritten_downstream_only_when_every_planned_provider_overrides() {
        let json = r#"{"groups":[
          {"providers":[{"name":"a","cluster":"a","openai":{"model":"m-a"}}]},
          {"providers":[{"name":"b","cluster":"b","openai":{"model":"m-b"}}]},
          {"providers":[{"name":"c","cluster":"c"}]}]}"#;
        let c = Config::parse(json.as_bytes(), &|_| None).unwrap();
        let plan_of = |indices: &[usize]| Plan {
            picks: indices
                .iter()
                .map(|&index| Pick {
                    index,
                    record: HealthRecord::default(),
                    claim: None,
                })
                .collect(),
            all_cooling: false,
        };
        assert!(downstream_rewrites_first_body(&c, &plan_of(&[0, 1])));
        // c sends the client's own model: a later attempt would need it back.
        assert!(!downstream_rewrites_first_body(&c, &plan_of(&[0, 1, 2])));
        assert!(!downstream_rewrites_first_body(&c, &plan_of(&[2])));
        assert!(!downstream_rewrites_first_body(&c, &plan_of(&[])));
    }

    #[test]
    fn plan_lists_every_provider_highest_group_first() {
        let c = config("{}");
        let s = MemoryStore::default();
        assert_eq!(order(&plan_at(&c, &s, NOW, 0)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn plan_follows_weights_inside_a_group() {
        let c = config("{}");
        let s = MemoryStore::default();
        // s1 has weight 3, s2 weight 1: tickets 0-2 start the group with s1, ticket 3 with s2.
        let seconds: Vec<usize> = (0..4).map(|t| order(&plan_at(&c, &s, NOW, t))[1]).collect();
        assert_eq!(seconds, vec![1, 1, 1, 2]);
        assert_eq!(order(&plan_at(&c, &s, NOW, 3)), vec![0, 2, 1, 3]);
    }

    #[test]
    fn plan_skips_cooling_providers() {
        let c = config("{}");
        let s = MemoryStore::default();
        fail(&c, &s, 0, Failure::RateLimited, Some(5_000), NOW);
        fail(&c, &s, 2, Failure::RateLimited, Some(5_000), NOW);
        assert_eq!(order(&plan_at(&c, &s, NOW + 1, 0)), vec![1, 3]);
    }

    #[test]
    fn plan_without_within_request_failover_has_one_provider() {
        let c = config(r#"{"withinRequest": false}"#);
        let s = MemoryStore::default();
        assert_eq!(order(&plan_at(&c, &s, NOW, 0)), vec![0]);
    }

    #[test]
    fn plan_when_all_cool_holds_the_one_that_recovers_first() {
        let c = config("{}");
        let s = MemoryStore::default();
        for (i, ms) in [(0, 9_000), (1, 3_000), (2, 4_000), (3, 8_000)] {
            fail(&c, &s, i, Failure::RateLimited, Some(ms), NOW);
        }
        let p = plan_at(&c, &s, NOW + 1, 0);
        assert!(p.all_cooling);
        assert_eq!(order(&p), vec![1]);
    }

    #[test]
    fn exactly_one_plan_claims_a_recovering_provider() {
        let c = config("{}");
        let s = MemoryStore::default();
        fail(&c, &s, 0, Failure::RateLimited, Some(1_000), NOW);
        let after = NOW + 1_001;
        let first = plan_at(&c, &s, after, 0);
        let second = plan_at(&c, &s, after, 0);
        assert_eq!(first.picks[0].index, 0);
        assert!(first.picks[0].claim.is_some());
        assert_eq!(order(&second), vec![1, 2, 3]);
    }

    #[test]
    fn a_released_claim_lets_the_next_request_probe() {
        let c = config("{}");
        let s = MemoryStore::default();
        fail(&c, &s, 0, Failure::RateLimited, Some(1_000), NOW);
        let after = NOW + 1_001;
        let first = plan_at(&c, &s, after, 0);
        release(&c, &s, 0, first.picks[0].claim.unwrap());
        assert_eq!(plan_at(&c, &s, after, 0).picks[0].index, 0);
    }

    #[test]
    fn a_failed_probe_reopens_the_cooldown_and_keeps_later_providers_in_the_plan() {
        let c = config("{}");
        let s = MemoryStore::default();
        fail(&c, &s, 0, Failure::RateLimited, Some(1_000), NOW);
        let after = NOW + 1_001;
        let probe = plan_at(&c, &s, after, 0);
        assert_eq!(order(&probe), vec![0, 1, 2, 3]);
        let r = fail(&c, &s, 0, Failure::ServerError, None, after);
        assert!(r.cooldown_started);
        assert_eq!(order(&plan_at(&c, &s, after + 1, 0)), vec![1, 2, 3]);
    }

    #[test]
    fn outcome_table_maps_statuses_and_connection_failures() {
        assert_eq!(
            failure_of(Outcome::ProviderFailure, 429),
            Some((Failure::RateLimited, "status"))
        );
        assert_eq!(
            failure_of(Outcome::ProviderFailure, 503),
            Some((Failure::ServerError, "status"))
        );
        assert_eq!(
            failure_of(Outcome::Unreachable, 503),
            Some((Failure::Unreachable, "connection"))
        );
        assert_eq!(failure_of(Outcome::Answer, 200), None);
        assert_eq!(failure_of(Outcome::LocalReply, 429), None);
    }

    #[test]
    fn a_started_cooldown_is_counted_once() {
        let c = config("{}");
        let s = MemoryStore::default();
        let sink = Counted::default();
        record_failure(&c, &s, &sink, 0, Failure::RateLimited, Some(5_000), NOW).unwrap();
        record_failure(&c, &s, &sink, 0, Failure::RateLimited, Some(5_000), NOW + 1).unwrap();
        assert_eq!(*sink.0.borrow(), vec![metrics::cooldowns("p", "status")]);
    }

    #[test]
    fn failures_below_the_threshold_start_no_cooldown() {
        let c = config(r#"{"consecutiveFailures": 2}"#);
        let s = MemoryStore::default();
        let first = fail(&c, &s, 0, Failure::Unreachable, None, NOW);
        assert!(!first.cooldown_started);
        assert_eq!(order(&plan_at(&c, &s, NOW + 1, 0))[0], 0);
        let second = fail(&c, &s, 0, Failure::Unreachable, None, NOW + 2);
        assert!(second.cooldown_started);
    }

    #[test]
    fn success_after_failures_resets_the_count() {
        let c = config(r#"{"consecutiveFailures": 2}"#);
        let s = MemoryStore::default();
        fail(&c, &s, 0, Failure::Unreachable, None, NOW);
        record_success(&c, &s, 0, None);
        let again = fail(&c, &s, 0, Failure::Unreachable, None, NOW + 1);
        assert!(!again.cooldown_started);
    }

    #[test]
    fn success_of_a_clear_provider_writes_nothing() {
        let c = config("{}");
        let s = MemoryStore::default();
        record_success(&c, &s, 0, Some(HealthRecord::default()));
        assert_eq!(s.writes(), 0);
    }
}
