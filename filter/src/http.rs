//! The per-request (downstream) filter. Decisions come from the pure modules
//! (`attempt.rs` above all); this file gathers their inputs and applies their answers.
//!
//! - Router mode (the default): plans the attempt order when the request headers
//!   arrive and hands it to Envoy's router (cluster order) and to the upstream filter
//!   of each attempt (`upstream.rs`, which rewrites and records every attempt). It
//!   checks the body, names the provider that answered, counts, and gives back
//!   unused probe claims. A provider Envoy could not even start an attempt to (no
//!   healthy host, unknown cluster) is failed over with `dispatch_http_call`.
//! - Dispatch mode: picks the first provider, rewrites the request for it, and on a
//!   failure sends the same request on with `dispatch_http_call`.
//!
//! Every host call crosses into the wasm runtime and costs, so the normal path
//! makes as few as it can: one health record read when the preferred provider is
//! healthy, headers read individually unless a failover copy is needed, the body
//! buffered only when it must be rewritten, checked or kept.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::attempt::{self, Ended, LazyHealth, Plan};
use crate::body::{self, ModelSlots};
use crate::config::{Config, Mode, Provider};
use crate::handoff::{self, At};
use crate::health::{Failure, HealthRecord};
use crate::hedge::{self, Candidate, Ending, Hedges};
use crate::hedging;
use crate::host::{self, HostSharedData};
use crate::metrics;
use crate::outcome::{self, Outcome};
use crate::registry;
use crate::reply::{self, error_body, Relayed};
use crate::retry_after;
use crate::rewrite::{self, Edit};
use crate::select::{self, HealthView};
use crate::store;
use crate::telemetry::Telemetry;

use crate::names::{
    ATTEMPTS_KEY, CLIENT_HEADERS_KEY, FAILED_AT_KEY, HEDGE_KEY, NEXT_KEY, PATH_KEY, PLAN_KEY,
    PROVIDER_HEADER, REASON_KEY, REFUSED_KEY, RETRY_STATUS, STATUS_KEY, STREAMED_HEADER,
    STREAMED_KEY, TRIED_KEY,
};
use crate::view;

/// Which of Envoy's response flags say the router could not start an attempt at
/// all (no upstream filter saw it): no healthy host, unknown cluster.
const NO_ATTEMPT_FLAGS: u64 = (1 << 1) | (1 << 24);

/// Where a request stands in this filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Request headers not handled yet.
    Start,
    /// The body passes through unread: nothing to check, rewrite or keep.
    Streaming,
    /// The body is held here until it is complete: checked, rewritten, kept.
    Buffering,
    /// The whole request went on to the router (or it had no body).
    Sent,
    /// Dispatch mode: a failover call is out; the failed answer is held back.
    FailingOver,
    /// The filter answered the client itself (400, 413, or a failover's answer).
    Replied,
}

pub struct FailoverFilter {
    config: Rc<Config>,
    ticket: u64,
    /// The provider now serving the request: the routed one, then each dispatched one.
    current: usize,
    tried: Vec<bool>,
    /// The client's headers as they arrived (kept only when failover is possible), to
    /// build each further attempt from the original, never from another provider's
    /// rewritten copy (so one provider's key cannot leak to the next).
    original_headers: Vec<(String, Vec<u8>)>,
    original_path: Option<String>,
    /// The client's body as it arrived, kept for further attempts.
    original_body: Option<Vec<u8>>,
    slots: Option<ModelSlots>,
    phase: Phase,
    /// Router mode: this filter writes the first attempt's model into the body.
    rewrite_first_body: bool,
    pending_call: Option<u32>,
    /// The serving provider's record as read when it was chosen: decides whether a
    /// success has anything to reset (usually not, so nothing is written).
    current_record: HealthRecord,
    /// The probe claim this request holds on its provider (its expiry), if any.
    probe_claim: Option<u64>,
    telemetry: Rc<Telemetry>,
    /// Providers asked, in order, once the request failed over (for the access log;
    /// left empty on the normal path so it costs nothing there).
    asked: Vec<usize>,
    /// Why the request failed over (the first failure's kind) and when it began.
    failover_reason: Option<&'static str>,
    failover_started_ms: u64,
    /// Router mode: the attempt order handed to the router.
    plan: Plan,
    /// This request's context id (the key of its hedge).
    context_id: u32,
    /// This worker's hedges (see `hedge.rs`), and this request's copy for its hedge
    /// until its body is complete (`hedgeAfter` only).
    hedges: Rc<RefCell<Hedges>>,
    hedge_request: Option<hedge::Request>,
    /// Dispatch mode: how often the provider now serving was asked again (`retries`).
    retried: u32,
}

impl FailoverFilter {
    pub fn new(
        config: Rc<Config>,
        ticket: u64,
        telemetry: Rc<Telemetry>,
        context_id: u32,
        hedges: Rc<RefCell<Hedges>>,
    ) -> Self {
        Self {
            config,
            ticket,
            current: 0,
            tried: Vec::new(),
            original_headers: Vec::new(),
            original_path: None,
            original_body: None,
            slots: None,
            phase: Phase::Start,
            rewrite_first_body: false,
            pending_call: None,
            current_record: HealthRecord::default(),
            probe_claim: None,
            telemetry,
            asked: Vec::new(),
            failover_reason: None,
            failover_started_ms: 0,
            plan: Plan::default(),
            context_id,
            hedges,
            hedge_request: None,
            retried: 0,
        }
    }

    /// Counts the answer the client gets and exposes, for the access log, which
    /// provider gave it, which were asked and why the request failed over.
    fn finish(&mut self, status: u16) {
        // The provider itself reaches the access log as the x-llm-provider response
        // header (%RESP(X-LLM-PROVIDER)%): no extra host call on the normal path.
        self.telemetry.count_request(self.current, status, || {
            metrics::requests(self.provider_name(), status)
        });
        if self.config.failover.mode == Mode::Router {
            if self.asked.len() > 1 {
                self.log_asked();
                // The reason was set by the upstream filter of the first attempt.
                if let Some(at) = parse_number::<u64>(host::property(&[FAILED_AT_KEY]).as_deref()) {
                    let spent = host::now_ms().saturating_sub(at);
                    self.telemetry.histogram(metrics::FAILOVER_TIME_MS, spent);
                }
            }
            return;
        }
        if let Some(reason) = self.failover_reason {
            self.log_asked();
            host::set_property(REASON_KEY, reason);
            let spent = host::now_ms().saturating_sub(self.failover_started_ms);
            self.telemetry.histogram(metrics::FAILOVER_TIME_MS, spent);
        }
    }

    /// The providers asked, in order, and how many, for the access log.
    fn log_asked(&self) {
        let asked: Vec<&str> = self
            .asked
            .iter()
            .filter_map(|i| self.config.providers.get(*i).map(|p| p.name.as_str()))
            .collect();
        host::set_property(TRIED_KEY, &asked.join(","));
        host::set_property(ATTEMPTS_KEY, &asked.len().to_string());
    }

    /// Router mode, request headers: plans the attempts and hands the plan over.
    fn route_request(&mut self, end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let clock = host::now_ms;
        let mut view = LazyHealth::new(&config, &HostSharedData, &clock);
        self.plan = attempt::plan(&config, &HostSharedData, &mut view, self.ticket);
        let Some(first) = self.plan.first().copied() else {
            return Action::Continue;
        };
        self.current = first.index;
        if self.plan.all_cooling {
            log::info!(
                "llm-failover: every provider is cooling down; trying {}, which recovers first",
                config.providers[first.index].name
            );
        }
        for pick in &self.plan.picks {
            if pick.claim.is_some() {
                log::info!(
                    "llm-failover: probing provider {} after its cooldown",
                    config.providers[pick.index].name
                );
            }
        }
        let hedging = config.failover.hedge_after_ms.is_some() && self.plan.picks.len() > 1;
        // A hedge needs the whole body, kept.
        // A streamed request is told by its body (it takes a route of its own).
        let stream_timeout = config.failover.routes_streams_apart();
        self.phase = body_phase(
            end_of_stream,
            config.needs_json_body || hedging || stream_timeout,
        );
        self.rewrite_first_body = self.phase == Phase::Buffering
            && attempt::downstream_rewrites_first_body(&config, &self.plan);
        host::set_property(
            PLAN_KEY,
            &handoff::encode_plan(&self.plan, self.rewrite_first_body),
        );
        // The first attempt's cluster, for the route's matcher cluster specifier (filter
        // state: no client can set it). Set before the header below, whose change makes
        // Envoy pick the route again.
        host::set_property(NEXT_KEY, &config.providers[first.index].cluster);
        // Replaces whatever a client sent, so no client can set the retries: one
        // attempt per provider of the plan, and its same-provider retries.
        let attempts = self.plan.picks.len() * (1 + config.failover.retries as usize);
        host::set_request_header("x-envoy-max-retries", &(attempts - 1).to_string());
        // The client's values, before the first attempt's rewrite below changes them.
        let headers =
            if hedging || (self.plan.picks.len() > 1 && !config.rewritten_headers.is_empty()) {
                let all = host::request_headers();
                if !config.rewritten_headers.is_empty() {
                    host::set_property_bytes(
                        CLIENT_HEADERS_KEY,
                        &handoff::encode_client_headers(&all, &config.rewritten_headers),
                    );
                }
                Some(all)
            } else {
                None
            };
        // The first attempt is rewritten here rather than in its upstream filter: the
        // same edits, but one filter instance fewer doing host calls on the common path.
        let provider = &config.providers[first.index];
        let original_path = match (provider.rewrites_path(), &headers) {
            (false, _) => None,
            (true, Some(all)) => header_value(all, ":path")
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string),
            (true, None) => host::request_header(":path").and_then(|v| String::from_utf8(v).ok()),
        };
        apply_edits(&config, provider, original_path.as_deref());
        if self.phase == Phase::Buffering {
            let content_length: Option<u64> = match &headers {
                Some(all) => parse_number(header_value(all, "content-length")),
                None => parse_number(host::request_header("content-length").as_deref()),
            };
            let only_reads = !config.needs_json_body && !hedging;
            if content_length.is_some_and(|len| len > config.max_body_bytes) {
                if !only_reads {
                    self.reply_too_large();
                    return Action::Pause;
                }
                // Read only to tell a stream, and too large to read: it goes on unread,
                // as a non-streamed request.
                self.phase = Phase::Streaming;
            } else if !only_reads {
                // A rewritten body has another length: the upstream gets it chunked.
                host::remove_request_header("content-length");
            }
        }
        if let (true, Some(all)) = (hedging, headers) {
            // Kept for a hedge, which waits from when the whole request went on.
            self.hedge_request = Some(hedge::Request {
                headers: all,
                body: None,
            });
            if end_of_stream {
                self.wait_for_hedge(None);
            }
        }
        if config.failover.routes_streams_apart() {
            if self.phase == Phase::Buffering {
                // Held until the body says whether the answer is streamed, which picks
                // the route (render gives streamed requests their own timeouts). The
                // wiring sets allow_on_headers_stop_iteration, so the body still comes.
                return Action::Pause;
            }
            // No body to read: never the streamed route, whatever a client sent.
            host::remove_request_header(STREAMED_HEADER);
        }
        Action::Continue
    }

    /// Router mode, response headers: names the provider that answered (the plan's
    /// entry for the router's last attempt) and counts. An attempt the router could
    /// not even start (no healthy host, unknown cluster) never met an upstream filter:
    /// it is recorded here. The router does not retry it, so that client gets
    /// Envoy's 503; the next requests skip the provider.
    fn route_response(&mut self, mut status: u16) -> Action {
        if status == RETRY_STATUS {
            // The router did not retry after all (no retry left): the provider's own status.
            status = parse_number(host::property(&[STATUS_KEY]).as_deref()).unwrap_or(502);
            host::set_response_header(":status", &status.to_string());
        }
        // Where the upstream filters moved the request (absent: it stayed on the first).
        if let Some(path) = host::property(&[PATH_KEY]) {
            let positions: Vec<usize> = String::from_utf8_lossy(&path)
                .split(',')
                .filter_map(|p| p.parse().ok())
                .collect();
            self.asked = positions
                .iter()
                .filter_map(|p| self.plan.picks.get(*p).map(|pick| pick.index))
                .collect();
            if let Some(pick) = positions.last().and_then(|p| self.plan.picks.get(*p)) {
                self.current = pick.index;
                self.current_record = pick.record;
            }
        } else {
            self.asked = self.plan.indices().take(1).collect();
        }
        if status >= 400 {
            let details = host::property(&["response", "code_details"]).unwrap_or_default();
            let flags = host::property_u64(&["response", "flags"]).unwrap_or(0);
            if details != b"via_upstream" && flags & NO_ATTEMPT_FLAGS != 0 {
                let why = if details.starts_with(b"cluster_not_found") {
                    format!(
                        "Envoy has no cluster {:?} (a typo in `cluster`? `llm-failover check` \
                         compares a configuration with an Envoy bootstrap)",
                        self.config.providers[self.current].cluster
                    )
                } else {
                    format!(
                        "Envoy could not start an attempt: {}",
                        String::from_utf8_lossy(&details)
                    )
                };
                self.mark_failed(self.current, Failure::Unreachable, None, &why);
            }
            if let Some(secs) = self.all_cooling_retry_after() {
                host::set_response_header("retry-after", &secs);
            }
        }
        host::set_response_header(PROVIDER_HEADER, self.provider_name());
        self.finish(status);
        Action::Continue
    }

    /// The whole request went to the router: it is hedged if no response headers
    /// come within `hedgeAfter` (see `hedge.rs`).
    fn wait_for_hedge(&mut self, body: Option<Vec<u8>>) {
        let (Some(after), Some(mut request)) = (
            self.config.failover.hedge_after_ms,
            self.hedge_request.take(),
        ) else {
            return;
        };
        request.body = body;
        let plan = self
            .plan
            .picks
            .iter()
            .map(|p| Candidate {
                index: p.index,
                claimed: p.claim.is_some(),
            })
            .collect();
        self.hedges
            .borrow_mut()
            .wait(self.context_id, host::now_ms(), after, plan, request);
    }

    /// Router mode with `hedgeAfter`, response headers: either the hedge's answer
    /// (the root sent it as this request's reply) or the routed attempt's, which
    /// cancels a hedge that is out.
    fn hedged_response(&mut self, status: u16, ending: Ending) -> Action {
        let config = Rc::clone(&self.config);
        let name = |i: usize| config.providers[i].name.as_str();
        match ending {
            Ending::HedgeWon { from, to } => {
                self.current = to;
                self.asked = vec![from, to];
                self.telemetry
                    .count(metrics::hedges(name(from), name(to), name(to)));
                self.finish(status);
                self.phase = Phase::Replied;
                Action::Continue
            }
            Ending::RoutedWon { id, from, to } => {
                hedging::cancel(id);
                let action = self.route_response(status);
                host::set_property(HEDGE_KEY, &format!("{}:lost", name(to)));
                self.telemetry
                    .count(metrics::hedges(name(from), name(to), self.provider_name()));
                action
            }
            Ending::None => self.route_response(status),
        }
    }

    /// The health view, when this request asks for it (see `healthPath`).
    fn serve_health_view(&mut self, path: Option<&[u8]>) -> bool {
        let Some(want) = &self.config.health_path else {
            return false;
        };
        let path = path.and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("");
        if path.split('?').next() != Some(want.as_str()) {
            return false;
        }
        let now = host::now_ms();
        // What the routing configurations published, not this configuration's copy.
        let registry = registry::read(&HostSharedData);
        let records: Vec<HealthRecord> = registry
            .entries
            .iter()
            .map(|p| store::read_health(&HostSharedData, &p.health_key))
            .collect();
        let body = view::health_json(&registry, &records, now);
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ];
        host::send_response(200, &headers, body.as_bytes());
        self.phase = Phase::Replied;
        true
    }

    /// Picks the provider to try next (the first one when nothing was tried yet): a
    /// healthy one, or a half-open one whose probe this request manages to claim.
    /// `None` when nothing is available.
    fn choose(&mut self, config: &Config, view: &mut LazyHealth<'_>) -> Option<usize> {
        let pick = attempt::choose(config, &HostSharedData, view, &self.tried, self.ticket)?;
        if pick.claim.is_some() {
            log::info!(
                "llm-failover: probing provider {} after its cooldown",
                config.providers[pick.index].name
            );
        }
        self.current_record = pick.record;
        self.probe_claim = pick.claim;
        Some(pick.index)
    }

    /// Gives back an unused probe claim (the request was answered by the filter).
    fn release_probe(&mut self) {
        if let Some(claim) = self.probe_claim.take() {
            attempt::release(&self.config, &HostSharedData, self.current, claim);
        }
        for pick in std::mem::take(&mut self.plan.picks) {
            if let Some(claim) = pick.claim {
                attempt::release(&self.config, &HostSharedData, pick.index, claim);
            }
        }
    }

    /// Records a good answer: resets the provider's breaker when it had anything to
    /// reset, and with `proactive` cools it down when the answer says its quota is spent.
    fn record_success(&mut self, headers: Option<&retry_after::Headers>) {
        let config = Rc::clone(&self.config);
        if config.failover.proactive {
            let owned;
            let headers = match headers {
                Some(h) => h,
                None => {
                    owned = host::response_headers();
                    &owned
                }
            };
            if let Some(delay) = retry_after::quota_spent(headers, host::now_ms()) {
                self.mark_failed(self.current, Failure::QuotaSpent, delay, "quota spent");
                return;
            }
        }
        attempt::record_success(
            &config,
            &HostSharedData,
            self.current,
            Some(self.current_record),
        );
        self.probe_claim = None;
    }

    fn reply_error(&mut self, status: u16, message: &str, kind: &str, code: &str) {
        self.release_probe();
        if self.config.failover.mode == Mode::Router {
            // The router may have started the attempt already; its upstream filter
            // must not blame the provider for the reset this reply causes.
            host::set_property(REFUSED_KEY, "1");
        }
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        host::send_response(status, &headers, error_body(message, kind, code).as_bytes());
        self.phase = Phase::Replied;
    }

    fn reply_too_large(&mut self) {
        let message = format!(
            "request body is larger than the gateway's limit of {} bytes",
            self.config.max_body_bytes
        );
        self.reply_error(413, &message, "invalid_request_error", "request_too_large");
    }

    /// Records a failure of provider `index`: counts it or opens its cooldown (see
    /// `health.rs`). `evidence_ms` is the delay the provider asked for, if it said.
    fn mark_failed(&mut self, index: usize, failure: Failure, evidence_ms: Option<u64>, why: &str) {
        if self.tried.is_empty() {
            self.tried = vec![false; self.config.providers.len()];
        }
        if let Some(t) = self.tried.get_mut(index) {
            *t = true;
        }
        if index == self.current {
            self.probe_claim = None;
        }
        let config = Rc::clone(&self.config);
        let now = host::now_ms();
        let result = attempt::record_failure(
            &config,
            &HostSharedData,
            self.telemetry.as_ref(),
            index,
            failure,
            evidence_ms,
            now,
        );
        log::info!("{}", attempt::describe(&config, index, &result, why, now));
    }

    /// Dispatch mode: records a failing answer as its verdict says and, when the
    /// verdict lets it, sends the request on. True when a call went out.
    fn failed_answer(&mut self, status: u16, verdict: &attempt::Verdict) -> bool {
        self.telemetry
            .count(metrics::errors(self.provider_name(), verdict.reason()));
        match verdict.failure {
            Some(failure) => {
                let why = format!("status {status}, {}", verdict.reason());
                self.mark_failed(self.current, failure, verdict.evidence_ms, &why);
            }
            // The request was at fault; the provider answered, so it is up.
            None => {
                attempt::record_success(
                    &self.config,
                    &HostSharedData,
                    self.current,
                    Some(self.current_record),
                );
                self.probe_claim = None;
            }
        }
        if self.retry_same(status, verdict) {
            return true;
        }
        if !verdict.fail_over {
            return false;
        }
        if self.tried.is_empty() {
            self.tried = vec![false; self.config.providers.len()];
        }
        if let Some(t) = self.tried.get_mut(self.current) {
            *t = true;
        }
        if verdict.class == crate::errors::Class::ContextLength {
            // Only a provider with a larger context window may take it.
            let from = self.current;
            for (to, tried) in self.tried.iter_mut().enumerate() {
                *tried |= !attempt::takes_longer_context(&self.config, from, to);
            }
        }
        self.try_next(verdict.reason())
    }

    /// Sends the request on to the next available provider. Returns false when there
    /// is none, so the client gets the failure it has.
    fn try_next(&mut self, reason: &'static str) -> bool {
        let config = Rc::clone(&self.config);
        if self.failover_reason.is_none() {
            self.failover_reason = Some(reason);
            self.failover_started_ms = host::now_ms();
        }
        loop {
            let clock = host::now_ms;
            let mut view = LazyHealth::new(&config, &HostSharedData, &clock);
            // The same choice as for the routed attempt: a half-open provider is only
            // tried if this request wins its probe claim.
            let Some(next) = self.choose(&config, &mut view) else {
                return false;
            };
            let provider = &config.providers[next];
            match self.call(next) {
                Ok(token) => {
                    log::info!("llm-failover: failing over to provider {}", provider.name);
                    let from = self.provider_name().to_string();
                    self.telemetry
                        .count(metrics::failovers(&from, &provider.name, reason));
                    self.called(next, token, reason);
                    self.current = next;
                    self.retried = 0;
                    return true;
                }
                Err(status) => {
                    // BadArgument: the cluster does not exist in Envoy's configuration.
                    let why = format!(
                        "cannot dispatch to cluster {}: {status:?}",
                        provider.cluster
                    );
                    self.current = next;
                    self.mark_failed(next, Failure::Unreachable, None, &why);
                }
            }
        }
    }

    /// Dispatch mode, `retries`: asks the provider that just answered `status` again
    /// when the verdict lets it (`attempt::next_attempt`, the router mode's rule: a
    /// 500/502/503/504, within the budget). True when a call went out.
    fn retry_same(&mut self, status: u16, verdict: &attempt::Verdict) -> bool {
        let at = At {
            position: 0,
            retry: self.retried,
        };
        let again = attempt::next_attempt(
            &self.config,
            &[self.current],
            at,
            self.current,
            Ended::Answer(status, *verdict),
        );
        if again.is_none() {
            return false;
        }
        let Ok(token) = self.call(self.current) else {
            return false;
        };
        self.retried += 1;
        log::info!(
            "llm-failover: asking provider {} again (retry {} of {})",
            self.provider_name(),
            self.retried,
            self.config.failover.retries
        );
        self.called(self.current, token, verdict.reason());
        true
    }

    /// A call to provider `to` went out (`token`): noted for the access log (the
    /// first failure's reason, the providers asked) and awaited.
    fn called(&mut self, to: usize, token: u32, reason: &'static str) {
        if self.failover_reason.is_none() {
            self.failover_reason = Some(reason);
            self.failover_started_ms = host::now_ms();
        }
        if self.asked.is_empty() {
            self.asked.push(self.current);
        }
        self.asked.push(to);
        self.pending_call = Some(token);
    }

    /// Sends the client's request, rewritten for provider `index`, with
    /// `dispatch_http_call`; the call's token.
    fn call(&self, index: usize) -> Result<u32, proxy_wasm::types::Status> {
        let config = &self.config;
        let provider = &config.providers[index];
        let edits = rewrite::edits_for(
            provider,
            &config.cluster_header,
            self.original_path.as_deref(),
        );
        let mut headers = rewrite::apply_to(&self.original_headers, &edits);
        // The call names its cluster itself; routing headers are not the provider's.
        let internal = config.internal_request_headers();
        headers.retain(|(n, _)| !internal.contains(&n.as_str()));
        let rewritten;
        let body = match (&self.original_body, &provider.model_json, &self.slots) {
            (Some(b), Some(model), Some(slots)) => {
                rewritten = body::with_model(b, slots, model);
                Some(rewritten.as_slice())
            }
            (Some(b), _, _) => Some(b.as_slice()),
            (None, _, _) => None,
        };
        host::dispatch(
            &provider.cluster,
            &headers,
            body,
            config.failover.attempt_timeout_ms,
        )
    }

    /// Lets the routed attempt's failed answer (still in Envoy's response headers) go
    /// to the client: nobody is left to ask.
    fn pass_failed_answer(&mut self, status: u16) {
        if let Some(secs) = self.all_cooling_retry_after() {
            host::set_response_header("retry-after", &secs);
        }
        host::set_response_header(PROVIDER_HEADER, self.provider_name());
        self.finish(status);
    }

    /// `Retry-After` for a failure the client gets while every provider cools down.
    fn all_cooling_retry_after(&self) -> Option<String> {
        let clock = host::now_ms;
        let mut view = LazyHealth::new(&self.config, &HostSharedData, &clock);
        select::retry_after_secs(&self.config, &mut view).map(|s| s.to_string())
    }

    fn provider_name(&self) -> &str {
        self.config
            .providers
            .get(self.current)
            .map(|p| p.name.as_str())
            .unwrap_or("")
    }
}

/// Sends the live request to `provider` (`rewrite::edits_for`); in router mode without
/// the routing header, since the router routes by the cluster order.
pub(crate) fn apply_edits(config: &Config, provider: &Provider, original_path: Option<&str>) {
    let router = config.failover.mode == Mode::Router;
    for edit in rewrite::edits_for(provider, &config.cluster_header, original_path) {
        match edit {
            Edit::Set(name, _) if router && name == config.cluster_header => {}
            Edit::Set(name, value) => host::set_request_header(name, &value),
            Edit::Remove(name) => host::remove_request_header(name),
        }
    }
}

/// The phase a request enters once its headers are handled.
fn body_phase(end_of_stream: bool, buffer: bool) -> Phase {
    match (end_of_stream, buffer) {
        (true, _) => Phase::Sent,
        (false, true) => Phase::Buffering,
        (false, false) => Phase::Streaming,
    }
}

fn header_value<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

fn parse_number<T: std::str::FromStr>(value: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(value?).ok()?.trim().parse().ok()
}

impl Context for FailoverFilter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.pending_call != Some(token_id) {
            return;
        }
        self.pending_call = None;
        let headers = host::call_response_headers();
        let status = reply::status_of(&headers);
        let body = host::call_response_body(body_size);
        let config = Rc::clone(&self.config);
        let failed = match (outcome::classify_callout(status, &body), status) {
            (Outcome::Unreachable, _) => {
                let (failure, reason) = attempt::unreachable();
                self.mark_failed(self.current, failure, None, "no response");
                if self.try_next(reason) {
                    return;
                }
                true
            }
            (_, Some(s)) if s >= 400 => {
                let verdict =
                    attempt::judge(&config, self.current, s, &headers, &body, host::now_ms());
                if self.failed_answer(s, &verdict) {
                    return;
                }
                verdict.failure.is_some()
            }
            _ => {
                self.record_success(Some(&headers));
                false
            }
        };
        self.finish(status.unwrap_or(503));
        let mut reply = Relayed::new(&headers, body, self.provider_name());
        if failed {
            if let Some(secs) = self.all_cooling_retry_after() {
                reply.set_header("retry-after", &secs);
            }
        }
        host::send_response(reply.status, &reply.headers, &reply.body);
        self.phase = Phase::Replied;
    }
}

impl HttpContext for FailoverFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)]
        if host::request_header("x-llm-failover-test-panic").is_some() {
            panic!("x-llm-failover-test-panic asked for a panic");
        }
        if self.config.health_path.is_some()
            && self.serve_health_view(host::request_header(":path").as_deref())
        {
            return Action::Pause;
        }
        let config = Rc::clone(&self.config);
        if config.providers.is_empty() {
            // A health-view-only configuration: everything else passes untouched.
            return Action::Continue;
        }
        if config.failover.mode == Mode::Router {
            return self.route_request(end_of_stream);
        }
        let clock = host::now_ms;
        let mut view = LazyHealth::new(&config, &HostSharedData, &clock);
        self.current = match self.choose(&config, &mut view) {
            Some(i) => i,
            None => {
                let i = select::soonest(&config, &mut view);
                self.current_record = view.record(i);
                log::info!(
                    "llm-failover: every provider is cooling down; trying {}, which recovers first",
                    config.providers[i].name
                );
                i
            }
        };
        self.phase = body_phase(
            end_of_stream,
            config.needs_json_body || config.can_fail_over,
        );
        let provider = &config.providers[self.current];

        // One call for all headers when a copy is kept for failover; otherwise only
        // the headers this request needs, one call each.
        let content_length: Option<u64>;
        if config.can_fail_over {
            self.original_headers = host::request_headers();
            content_length = parse_number(header_value(&self.original_headers, "content-length"));
            self.original_path = header_value(&self.original_headers, ":path")
                .and_then(|v| String::from_utf8(v.to_vec()).ok());
        } else {
            content_length = if self.phase == Phase::Buffering {
                parse_number(host::request_header("content-length").as_deref())
            } else {
                None
            };
            if provider.rewrites_path() {
                self.original_path =
                    host::request_header(":path").and_then(|v| String::from_utf8(v).ok());
            }
        }
        if self.phase == Phase::Buffering
            && content_length.is_some_and(|len| len > config.max_body_bytes)
        {
            self.reply_too_large();
            return Action::Pause;
        }

        apply_edits(&config, provider, self.original_path.as_deref());
        if self.phase != Phase::Sent && provider.model.is_some() {
            // The rewritten body has another length; without this the upstream would
            // get a truncated body or wait for bytes that never come.
            host::remove_request_header("content-length");
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::Replied => return Action::Pause,
            Phase::Buffering => {}
            _ => return Action::Continue,
        }
        let config = Rc::clone(&self.config);
        if body_size as u64 > config.max_body_bytes {
            if config.needs_json_body || self.hedge_request.is_some() {
                self.reply_too_large();
                return Action::Pause;
            }
            // Read only to tell a stream (no model to rewrite, nothing kept for a
            // hedge), and too large to read: it goes on unread, as a non-streamed
            // request, with the held headers.
            host::remove_request_header(STREAMED_HEADER);
            self.phase = Phase::Streaming;
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is here: it is checked, rewritten and kept whole.
            return Action::Pause;
        }
        let body = host::request_body(body_size).unwrap_or_default();
        let inspect = config.needs_json_body || config.failover.routes_streams_apart();
        if inspect {
            match body::inspect(&body) {
                Ok(slots) => self.slots = Some(slots),
                // Only a model rewrite needs JSON; without one the body goes on as it is.
                Err(_) if !config.needs_json_body => {}
                Err(e) => {
                    // A compressed body is never JSON to the scanner; say why it was refused.
                    // Told by its first bytes: the request headers cannot be read here (the
                    // SDK panics on the status Envoy gives once they went on).
                    match body::compression_of(&body) {
                        Some(kind) => self.reply_error(
                            415,
                            &format!(
                                "the request body is {kind}-compressed; compressed request \
                                 bodies are not supported: send the JSON uncompressed"
                            ),
                            "invalid_request_error",
                            "unsupported_content_encoding",
                        ),
                        None => self.reply_error(
                            400,
                            &e.to_string(),
                            "invalid_request_error",
                            "invalid_json",
                        ),
                    }
                    return Action::Pause;
                }
            }
        }
        if config.failover.mode == Mode::Router {
            // The first attempt's model, when the plan lets it be written here (see
            // `attempt::downstream_rewrites_first_body`); the upstream filters of later
            // attempts rewrite the router's copy for their own providers.
            let first = self.plan.first().map(|p| &config.providers[p.index]);
            if let (true, Some(model), Some(slots)) = (
                self.rewrite_first_body,
                first.and_then(|p| p.model_json.as_ref()),
                &self.slots,
            ) {
                let (replaced, prefix) = body::model_edit(&body, slots, model);
                host::replace_request_body_prefix(replaced, &prefix);
            }
            if self.slots.as_ref().is_some_and(|s| s.stream)
                && config.failover.stream_first_byte_timeout_ms.is_some()
            {
                // Each attempt's upstream filter starts its streamFirstByteTimeout.
                host::set_property(STREAMED_KEY, "1");
            }
            if config.failover.routes_streams_apart() {
                if self.slots.as_ref().is_some_and(|s| s.stream) {
                    host::set_request_header(STREAMED_HEADER, "1");
                    // For the upstream filters: which timeout abandoned an attempt.
                    host::set_property(STREAMED_KEY, "1");
                } else {
                    host::remove_request_header(STREAMED_HEADER);
                }
            }
            self.phase = Phase::Sent;
            if self.hedge_request.is_some() {
                self.wait_for_hedge(Some(body));
            }
            return Action::Continue;
        }
        let provider = &config.providers[self.current];
        if let (Some(model), Some(slots)) = (&provider.model_json, &self.slots) {
            let (replaced, prefix) = body::model_edit(&body, slots, model);
            host::replace_request_body_prefix(replaced, &prefix);
        }
        if config.can_fail_over {
            self.original_body = Some(body);
        }
        self.phase = Phase::Sent;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.phase == Phase::Replied || self.config.providers.is_empty() {
            return Action::Continue;
        }
        let Some(status) = parse_number::<u16>(host::response_header(":status").as_deref()) else {
            return Action::Continue;
        };
        let config = Rc::clone(&self.config);
        if config.failover.mode == Mode::Router {
            if config.failover.hedge_after_ms.is_none() {
                return self.route_response(status);
            }
            let ending = self.hedges.borrow_mut().end(self.context_id);
            return self.hedged_response(status, ending);
        }
        if status < 400 {
            self.record_success(None);
        } else {
            let details = host::property(&["response", "code_details"])
                .and_then(|v| String::from_utf8(v).ok());
            let flags = host::property_u64(&["response", "flags"]).unwrap_or(0);
            match outcome::classify_routed(details.as_deref(), flags) {
                Outcome::Unreachable => {
                    let (failure, reason) = attempt::unreachable();
                    let why = format!("unreachable, Envoy answered {status}");
                    self.mark_failed(self.current, failure, None, &why);
                    if config.can_fail_over && self.try_next(reason) {
                        self.phase = Phase::FailingOver;
                        return Action::Pause;
                    }
                    self.pass_failed_answer(status);
                    return Action::Continue;
                }
                Outcome::LocalReply => {}
                Outcome::Answer => {
                    // Dispatch mode cannot hold these headers to read the body (no
                    // allow_on_headers_stop_iteration in a WasmPlugin): the routed
                    // attempt is judged by its status and headers alone.
                    let headers = host::response_headers();
                    let verdict = attempt::judge(
                        &config,
                        self.current,
                        status,
                        &headers,
                        b"",
                        host::now_ms(),
                    );
                    if self.failed_answer(status, &verdict) {
                        self.phase = Phase::FailingOver;
                        return Action::Pause;
                    }
                    if verdict.failure.is_some() {
                        self.pass_failed_answer(status);
                        return Action::Continue;
                    }
                }
            }
        }
        host::set_response_header(PROVIDER_HEADER, self.provider_name());
        self.finish(status);
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream ended while this request still held a probe claim (the client
        // went away mid-probe): give it back rather than block probing for
        // `probeTimeout`.
        self.release_probe();
        if self.config.failover.hedge_after_ms.is_some() {
            // The client left before any answer: its hedge is not wanted either.
            if let Ending::RoutedWon { id, .. } = self.hedges.borrow_mut().end(self.context_id) {
                hedging::cancel(id);
            }
        }
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.phase == Phase::FailingOver {
            // The failed provider's body is held back; the next attempt's answer replaces it.
            return Action::Pause;
        }
        Action::Continue
    }
}
