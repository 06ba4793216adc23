//! The attempt logic both failover modes share: which providers a request tries and
//! in what order, who probes a recovering provider, and what each attempt's outcome
//! does to that provider's health. Pure: the shared-data store, the clock and the
//! metrics sink come in as arguments, so host unit tests drive it with an in-memory
//! store and a stepped clock.
//!
//! Not here: reading headers or properties (the contexts in `contexts/` do
//! that), parsing `Retry-After` (`retry_after.rs`), the breaker's
//! state machine itself (`health.rs`).

use crate::config::{Auth, Config};
use crate::control::Wish;
use crate::errors::{self, Class};
use crate::health::{Failure, HealthRecord, State};
use crate::metrics;
use crate::plan::{At, Plan, Step};
use crate::retry_after::{self, Headers};
use crate::select::{self, HealthView};
use crate::store::{self, SharedData, StoreError};

/// Where the attempt logic counts (cooldowns started). The real sink is Envoy's
/// metrics (`contexts/telemetry.rs`); tests use a list.
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
) -> Option<Step> {
    let mut excluded: Vec<bool> = tried.to_vec();
    excluded.resize(config.providers.len(), false);
    loop {
        let i = select::next_choice(config, view, &excluded, ticket)?;
        if view.state(i) != State::HalfOpen {
            return Some(Step::new(i, view.record(i).after_success().is_some()));
        }
        if config.failover.background_probes {
            // The root probes it (`probe.rs`): no user request pays for that.
            if let Some(e) = excluded.get_mut(i) {
                *e = true;
            }
            continue;
        }
        let now = view.now_ms();
        let key = &config.providers[i].health_key;
        match store::update_health_if(store, key, |h| h.claim_probe(now, &config.failover)) {
            Ok(Some(claimed)) => {
                return Some(Step {
                    index: i,
                    reset_on_success: true,
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
    plan_for(config, store, view, ticket, &Wish::default())
}

/// [`plan`] for a request with per-request control (`control.rs`): only the
/// providers it names, in its order (health still leaves cooling ones out), and
/// with `fallback` off only the first.
pub fn plan_for(
    config: &Config,
    store: &dyn SharedData,
    view: &mut LazyHealth<'_>,
    ticket: u64,
    wish: &Wish,
) -> Plan {
    let n = config.providers.len();
    let mut tried = vec![false; n];
    let mut picks = Vec::new();
    let limit = if config.can_fail_over && wish.fallback {
        n
    } else {
        1
    };
    while picks.len() < limit {
        let pick = match &wish.order {
            None => choose(config, store, view, &tried, ticket),
            // The first of the request's own order that can be asked now.
            Some(order) => order
                .iter()
                .filter(|i| !tried.get(**i).copied().unwrap_or(true))
                .find_map(|&i| {
                    let only: Vec<bool> = (0..n).map(|j| j != i).collect();
                    choose(config, store, view, &only, ticket)
                }),
        };
        let Some(pick) = pick else {
            break;
        };
        if let Some(t) = tried.get_mut(pick.index) {
            *t = true;
        }
        picks.push(pick);
    }
    if picks.is_empty() {
        let i = match &wish.order {
            None => select::soonest(config, view),
            Some(order) => order
                .iter()
                .copied()
                .min_by_key(|i| view.next_available_at(*i))
                .unwrap_or(0),
        };
        picks.push(Step::new(i, view.record(i).after_success().is_some()));
        return Plan {
            steps: picks,
            all_cooling: true,
            first_body_rewritten: false,
        };
    }
    Plan {
        steps: picks,
        ..Plan::default()
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
    !plan.is_empty() && plan.indices().all(overrides)
}

/// Gives back a probe claim that was not used (or whose answer never came), if the
/// record still holds that very claim.
pub fn release(config: &Config, store: &dyn SharedData, index: usize, claim: u64) {
    if let Some(p) = config.providers.get(index) {
        let _ = store::update_health_if(store, &p.health_key, |h| h.release_probe(claim));
    }
}

/// What a provider's failing answer (status 400 and up) means: its error class,
/// what the provider's health records, and whether the request may go on to
/// another provider. The one table for both modes (docs/configuration.md, "Error
/// classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    /// The failure the provider's health records, if any: a request at fault
    /// (context length, content policy, the client's own credentials) cools nothing.
    pub failure: Option<Failure>,
    /// How long the provider asked to be left alone: its headers, else its body.
    pub evidence_ms: Option<u64>,
    /// Whether the request may go on (a context-length failure: only to a provider
    /// with a larger `contextWindow`, see [`takes_longer_context`]).
    pub fail_over: bool,
}

impl Verdict {
    /// The `reason` label of the failover it causes and of the provider's failure.
    pub fn reason(&self) -> &'static str {
        self.class.as_str()
    }
}

/// Judges provider `index`'s answer with `status` (400 and up), its response
/// headers and the first bytes of its body (`errors::BODY_LIMIT`).
pub fn judge(
    config: &Config,
    index: usize,
    status: u16,
    headers: &Headers,
    body: &[u8],
    now_ms: u64,
) -> Verdict {
    let class = errors::classify(status, body);
    let listed = config.failover.is_failure_status(status);
    let by_class = config.failover.class_fails_over(class);
    let injected = config
        .providers
        .get(index)
        .is_some_and(|p| matches!(p.auth, Auth::Key { .. }));
    let (failure, fail_over) = match class {
        // Told by status alone: onStatus decides, as it always has.
        Class::RateLimited => (listed.then_some(Failure::RateLimited), listed),
        Class::ServerError => (listed.then_some(Failure::ServerError), listed),
        Class::Client => (listed.then_some(Failure::Status), listed),
        // The client's own credentials are wrong: nobody else would take them either.
        Class::Auth if !injected => (None, false),
        Class::Auth => (Some(Failure::Auth), by_class),
        Class::Quota => (Some(Failure::Quota), by_class),
        Class::Overloaded => (Some(Failure::Overloaded), by_class),
        // The request is at fault, not the provider.
        Class::ContextLength | Class::ContentPolicy => (None, by_class),
    };
    let evidence_ms = failure.and_then(|_| {
        retry_after::failure_delay(headers, now_ms).or_else(|| errors::retry_hint_ms(body))
    });
    Verdict {
        class,
        failure,
        evidence_ms,
        fail_over: fail_over && config.can_fail_over,
    }
}

/// Whether provider `to` may take a request too long for provider `from`: it
/// declares a `contextWindow` larger than `from`'s (or any, when `from` declares none).
pub fn takes_longer_context(config: &Config, from: usize, to: usize) -> bool {
    let need = config
        .providers
        .get(from)
        .and_then(|p| p.context_window)
        .unwrap_or(0);
    config
        .providers
        .get(to)
        .and_then(|p| p.context_window)
        .is_some_and(|w| w > need)
}

/// How an attempt ended, as far as the next attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A failing answer with `status`, judged.
    Answer(u16, Verdict),
    /// The provider reset the connection after the request went out.
    Reset,
    /// Refused, no healthy host, or abandoned by a timeout: never asked again within
    /// the request (a silent provider stays silent).
    Gone,
}

/// The attempt that follows one that ended as `ended`, for provider `from` at `at`
/// in a request whose plan is `plan` (provider indices): the same provider again
/// (`retries`, with the wait `retryWithin` allows), the next provider of the plan that
/// may take it (a larger context window after `context_length`), or `None` (the
/// client gets what it has). Every attempt counts: no provider is asked more than
/// `1 + retries` times.
pub fn next_attempt(
    config: &Config,
    plan: &[usize],
    at: At,
    from: usize,
    ended: Ended,
) -> Option<(At, Option<u64>)> {
    let failover = &config.failover;
    let again = at.retry < failover.retries;
    let same = |wait: Option<u64>| {
        Some((
            At {
                position: at.position,
                retry: at.retry + 1,
            },
            wait,
        ))
    };
    let context = match ended {
        Ended::Answer(status, v) => {
            if !v.fail_over {
                return None;
            }
            let transient = matches!(status, 500 | 502 | 503 | 504)
                && matches!(v.class, Class::ServerError | Class::Overloaded);
            if again && transient {
                return same(None);
            }
            if let (true, Class::RateLimited, Some(within), Some(wait)) =
                (again, v.class, failover.retry_within_ms, v.evidence_ms)
            {
                if wait <= within {
                    return same(Some(wait));
                }
            }
            v.class == Class::ContextLength
        }
        Ended::Reset if again => return same(None),
        Ended::Reset | Ended::Gone => false,
    };
    let position = plan
        .iter()
        .enumerate()
        .skip(at.position + 1)
        .find(|(_, to)| !context || takes_longer_context(config, from, **to))?
        .0;
    Some((At { position, retry: 0 }, None))
}

/// The failure and `reason` label of an attempt that got no answer from its provider.
pub fn unreachable() -> (Failure, &'static str) {
    (Failure::Unreachable, "connection")
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

/// Records a good answer of provider `index`: resets its breaker, unless the plan
/// knew it had nothing to reset (`reset` false: usually, so nothing is written).
pub fn record_success(config: &Config, store: &dyn SharedData, index: usize, reset: bool) {
    if !reset {
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
            steps: indices
                .iter()
                .map(|&index| Step::new(index, false))
                .collect(),
            ..Plan::default()
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
        assert_eq!(first.steps[0].index, 0);
        assert!(first.steps[0].claim.is_some());
        assert_eq!(order(&second), vec![1, 2, 3]);
    }

    #[test]
    fn a_released_claim_lets_the_next_request_probe() {
        let c = config("{}");
        let s = MemoryStore::default();
        fail(&c, &s, 0, Failure::RateLimited, Some(1_000), NOW);
        let after = NOW + 1_001;
        let first = plan_at(&c, &s, after, 0);
        release(&c, &s, 0, first.steps[0].claim.unwrap());
        assert_eq!(plan_at(&c, &s, after, 0).steps[0].index, 0);
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

    fn verdict_of(c: &Config, index: usize, status: u16, body: &str) -> Verdict {
        let headers = vec![("retry-after".to_string(), b"7".to_vec())];
        judge(c, index, status, &headers, body.as_bytes(), NOW)
    }

    fn keyed(failover: &str) -> Config {
        let json = format!(
            r#"{{"groups":[
              {{"providers":[{{"name":"p","cluster":"p","contextWindow":8000,
                 "policies":{{"auth":{{"key":{{"env":"K"}}}}}}}}]}},
              {{"providers":[{{"name":"s","cluster":"s","contextWindow":128000}},{{"name":"u","cluster":"u"}}]}}],
              "failover":{failover}}}"#
        );
        Config::parse(json.as_bytes(), &|_| Some("key".to_string())).unwrap()
    }

    #[test]
    fn verdicts_by_class_with_the_defaults() {
        let c = keyed("{}");
        let v = verdict_of(&c, 0, 429, "{}");
        assert_eq!(
            (v.reason(), v.failure, v.evidence_ms, v.fail_over),
            (
                "rate_limited",
                Some(Failure::RateLimited),
                Some(7_000),
                true
            )
        );
        let v = verdict_of(&c, 0, 503, "{}");
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("server_error", Some(Failure::ServerError), true)
        );
        let v = verdict_of(&c, 0, 529, "{}");
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("overloaded", Some(Failure::Overloaded), true)
        );
        let v = verdict_of(&c, 0, 429, r#"{"error":{"code":"insufficient_quota"}}"#);
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("quota", Some(Failure::Quota), true)
        );
        let v = verdict_of(&c, 0, 401, "{}");
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("auth", Some(Failure::Auth), true)
        );
        let v = verdict_of(
            &c,
            0,
            400,
            r#"{"error":{"code":"context_length_exceeded"}}"#,
        );
        assert_eq!(
            (v.reason(), v.failure, v.evidence_ms, v.fail_over),
            ("context_length", None, None, true)
        );
        let v = verdict_of(&c, 0, 400, r#"{"error":{"code":"content_filter"}}"#);
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("content_policy", None, false)
        );
        // A client mistake is passed on and cools nothing.
        let v = verdict_of(&c, 0, 400, r#"{"error":{"message":"bad"}}"#);
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("status", None, false)
        );
        let v = verdict_of(&c, 0, 404, "");
        assert_eq!((v.failure, v.fail_over), (None, false));
    }

    #[test]
    fn the_clients_own_credentials_refused_cool_nothing() {
        let c = keyed("{}");
        // Provider s passes the client's credentials through.
        let v = verdict_of(&c, 1, 401, r#"{"error":{"code":"invalid_api_key"}}"#);
        assert_eq!((v.reason(), v.failure, v.fail_over), ("auth", None, false));
        let v = verdict_of(&c, 1, 403, "");
        assert_eq!((v.failure, v.fail_over), (None, false));
    }

    #[test]
    fn error_classes_and_on_status_override_the_defaults() {
        let c = keyed(
            r#"{"onStatus":[400,429],"errorClasses":{"content_policy":"failover","quota":"return"}}"#,
        );
        let v = verdict_of(
            &c,
            0,
            400,
            r#"{"error":{"code":"content_policy_violation"}}"#,
        );
        assert_eq!((v.failure, v.fail_over), (None, true));
        // Quota returns to the client, but the provider still cools.
        let v = verdict_of(&c, 0, 402, "{}");
        assert_eq!((v.failure, v.fail_over), (Some(Failure::Quota), false));
        // A 400 the operator listed fails over and counts; a 503 no longer listed does not.
        let v = verdict_of(&c, 0, 400, "{}");
        assert_eq!(
            (v.reason(), v.failure, v.fail_over),
            ("status", Some(Failure::Status), true)
        );
        let v = verdict_of(&c, 0, 503, "{}");
        assert_eq!((v.failure, v.fail_over), (None, false));
        // withinRequest off: judged, never sent on.
        let c = keyed(r#"{"withinRequest":false}"#);
        let v = verdict_of(&c, 0, 429, "{}");
        assert_eq!(
            (v.failure, v.fail_over),
            (Some(Failure::RateLimited), false)
        );
    }

    #[test]
    fn a_retry_hint_in_the_body_counts_when_no_header_says() {
        let c = keyed("{}");
        let body = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"retryDelay":"37s"}]}}"#;
        let v = judge(&c, 0, 429, &[], body.as_bytes(), NOW);
        assert_eq!(v.evidence_ms, Some(37_000));
        // The header wins.
        assert_eq!(verdict_of(&c, 0, 429, body).evidence_ms, Some(7_000));
    }

    fn at(position: usize, retry: u32) -> At {
        At { position, retry }
    }

    #[test]
    fn the_next_attempt_moves_on_by_the_plan() {
        let c = keyed("{}");
        let plan = [0, 1, 2];
        let v = verdict_of(&c, 0, 429, "{}");
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(429, v)),
            Some((at(1, 0), None))
        );
        assert_eq!(
            next_attempt(&c, &plan, at(2, 0), 2, Ended::Answer(429, v)),
            None,
            "the plan's end"
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Gone),
            Some((at(1, 0), None))
        );
        // Without retries a reset moves on too.
        assert_eq!(
            next_attempt(&c, &plan, at(1, 0), 1, Ended::Reset),
            Some((at(2, 0), None))
        );
        // An answer that goes back to the client ends it.
        let v = verdict_of(&c, 0, 400, r#"{"error":{"code":"content_filter"}}"#);
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(400, v)),
            None
        );
    }

    #[test]
    fn context_length_skips_to_a_larger_window() {
        let c = keyed("{}");
        let v = verdict_of(
            &c,
            0,
            400,
            r#"{"error":{"code":"context_length_exceeded"}}"#,
        );
        // p (8000) -> u (undeclared) -> s (128000): u steps aside.
        assert_eq!(
            next_attempt(&c, &[0, 2, 1], at(0, 0), 0, Ended::Answer(400, v)),
            Some((at(2, 0), None))
        );
        // s (128000) -> nothing larger.
        assert_eq!(
            next_attempt(&c, &[1, 0, 2], at(0, 0), 1, Ended::Answer(400, v)),
            None
        );
    }

    #[test]
    fn retries_ask_the_same_provider_again_within_their_budget() {
        let c = keyed(r#"{"retries":2,"retryWithin":"3s"}"#);
        let plan = [0, 1];
        let v500 = verdict_of(&c, 0, 500, "{}");
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(500, v500)),
            Some((at(0, 1), None))
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 1), 0, Ended::Answer(500, v500)),
            Some((at(0, 2), None))
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 2), 0, Ended::Answer(500, v500)),
            Some((at(1, 0), None)),
            "budget spent"
        );
        let v529 = verdict_of(&c, 0, 529, "{}");
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(529, v529)),
            Some((at(1, 0), None)),
            "529 is not retried"
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Reset),
            Some((at(0, 1), None))
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Gone),
            Some((at(1, 0), None)),
            "never a timeout"
        );
        // A 429 asking for at most retryWithin is waited out; a longer one moves on.
        let short = judge(
            &c,
            0,
            429,
            &[("retry-after".to_string(), b"2".to_vec())],
            b"",
            NOW,
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(429, short)),
            Some((at(0, 1), Some(2_000)))
        );
        let long = judge(
            &c,
            0,
            429,
            &[("retry-after".to_string(), b"4".to_vec())],
            b"",
            NOW,
        );
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(429, long)),
            Some((at(1, 0), None))
        );
        let unsaid = judge(&c, 0, 429, &[], b"", NOW);
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(429, unsaid)),
            Some((at(1, 0), None))
        );
        // Quota is never retried on the same provider.
        let quota = verdict_of(&c, 0, 429, r#"{"error":{"code":"insufficient_quota"}}"#);
        assert_eq!(
            next_attempt(&c, &plan, at(0, 0), 0, Ended::Answer(429, quota)),
            Some((at(1, 0), None))
        );
    }

    #[test]
    fn only_a_larger_context_window_takes_a_too_long_request() {
        let c = keyed("{}");
        assert!(takes_longer_context(&c, 0, 1), "8000 -> 128000");
        assert!(!takes_longer_context(&c, 1, 0), "128000 -> 8000");
        assert!(!takes_longer_context(&c, 0, 2), "undeclared");
        assert!(
            takes_longer_context(&c, 2, 0),
            "from undeclared to declared"
        );
        assert!(!takes_longer_context(&c, 0, 0));
    }

    #[test]
    fn a_started_cooldown_is_counted_once() {
        let c = config("{}");
        let s = MemoryStore::default();
        let sink = Counted::default();
        record_failure(&c, &s, &sink, 0, Failure::RateLimited, Some(5_000), NOW).unwrap();
        record_failure(&c, &s, &sink, 0, Failure::RateLimited, Some(5_000), NOW + 1).unwrap();
        assert_eq!(
            *sink.0.borrow(),
            vec![metrics::cooldowns("p", "rate_limited")]
        );
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
        record_success(&c, &s, 0, true);
        let again = fail(&c, &s, 0, Failure::Unreachable, None, NOW + 1);
        assert!(!again.cooldown_started);
    }

    #[test]
    fn success_of_a_clear_provider_writes_nothing() {
        let c = config("{}");
        let s = MemoryStore::default();
        record_success(&c, &s, 0, false);
        assert_eq!(s.writes(), 0);
    }
}
