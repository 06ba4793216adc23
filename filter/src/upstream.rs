//! The filter as an upstream HTTP filter on each provider cluster (router mode):
//! one instance per attempt. It finds its provider in the plan the downstream filter
//! left in filter state, rewrites every attempt after the first for it (model, host,
//! path, key) starting from the client's own header values (the downstream filter
//! rewrites the first), and records the attempt's outcome in the provider's health. Envoy's router does the retrying and streams the
//! winner's answer. Thin glue: decisions come from `attempt.rs`.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::attempt::{self, Ended, MetricsSink};
use crate::body;
use crate::config::Config;
use crate::errors;
use crate::handoff::{self, At, Step};
use crate::health::Failure;
use crate::hedge::{self, Live};
use crate::host::{self, HostSharedData};
use crate::metrics;
use crate::names::{
    AT_KEY, CLIENT_HEADERS_KEY, EXHAUSTED_CLUSTER, FAILED_AT_KEY, HEDGED_TO_KEY, HEDGE_HEADER,
    HELD_KEY, NEXT_KEY, PATH_KEY, PLAN_KEY, PROBE_HEADER, REASON_KEY, REFUSED_KEY, RETRY_STATUS,
    STATUS_KEY, STREAMED_KEY, STREAM_KEY, WAIT_HEADER,
};
use crate::probe;
use crate::retry_after;
use crate::sse::{self, StreamWatch};
use crate::telemetry::Telemetry;

/// Envoy's response flag for a downstream that went away (`DC`).
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;

/// A failing answer's status and headers, held while its error body is read.
type Held = (u16, Vec<(String, Vec<u8>)>);

pub struct AttemptFilter {
    config: Rc<Config>,
    telemetry: Rc<Telemetry>,
    plan: Vec<Step>,
    /// This attempt's place in the plan (and how often its provider was asked before
    /// in this request), and its provider.
    at: At,
    provider: Option<usize>,
    /// Whether the body is held here to rewrite `model`.
    buffering: bool,
    /// The downstream filter's plan was found: it rewrote the first attempt's headers.
    planned: bool,
    /// ... and the first attempt's body too.
    first_body_rewritten: bool,
    /// Response headers came back: the attempt had an answer (good or failing).
    answered: bool,
    /// When the attempt started (Unix ms), kept only with `firstByteTimeout`.
    started_ms: u64,
    /// A streamed (SSE) success being watched for its end.
    stream: Option<StreamWatch>,
    /// Whether bytes may be added to that stream (no `content-length`).
    can_append: bool,
    /// The answer's last byte passed (streamed or not).
    response_ended: bool,
    /// The answer was not a failure (a failing one is recorded already, and Envoy
    /// drops its body when it retries).
    good_answer: bool,
    context_id: u32,
    /// This attempt is hedge `id` (sent by the downstream root, see `hedge.rs`), and
    /// this worker's hedges out.
    hedge_id: Option<u64>,
    live: Rc<RefCell<Live>>,
    /// This routed attempt was held for the request's hedge (see `HEDGED_TO_KEY`).
    holding: bool,
    /// A failing answer whose headers are held until its error body is read (render
    /// sets `allow_on_headers_stop_iteration`, so the body still comes): its status
    /// and headers.
    held: Option<Held>,
    /// A streamed answer's headers held until its first event (`firstTokenTimeout`).
    awaiting_first_event: bool,
    /// When the answer's last bytes came (Unix ms), kept with `streamIdleTimeout`.
    last_data_ms: u64,
    /// This attempt is the root's background probe (`probe.rs`).
    probing: bool,
}

impl AttemptFilter {
    pub fn new(
        config: Rc<Config>,
        telemetry: Rc<Telemetry>,
        context_id: u32,
        live: Rc<RefCell<Live>>,
    ) -> Self {
        Self {
            config,
            telemetry,
            plan: Vec::new(),
            at: At::default(),
            provider: None,
            buffering: false,
            planned: false,
            first_body_rewritten: false,
            answered: false,
            started_ms: 0,
            stream: None,
            can_append: false,
            response_ended: false,
            good_answer: false,
            context_id,
            hedge_id: None,
            live,
            holding: false,
            held: None,
            awaiting_first_event: false,
            last_data_ms: 0,
            probing: false,
        }
    }

    /// Which provider this attempt is for: the plan's entry for the router's attempt
    /// count. Without a plan (the downstream filter is missing) the first provider of
    /// this cluster, so a hand-wired Envoy still rewrites.
    fn find_provider(&mut self) -> Option<usize> {
        self.at = host::property(&[AT_KEY])
            .and_then(|v| At::decode(&v))
            .unwrap_or_default();
        if let Some(handoff) = host::property(&[PLAN_KEY])
            .and_then(|v| handoff::decode_plan(&v, self.config.providers.len()))
        {
            self.plan = handoff.steps;
            self.planned = true;
            self.first_body_rewritten = handoff.first_body_rewritten;
            if let Some(step) = self.plan.get(self.at.position) {
                return Some(step.index);
            }
        }
        let cluster = host::property(&["xds", "cluster_name"])?;
        if let Some(index) = self.hedge(&cluster) {
            return Some(index);
        }
        if let Some(mark) = host::request_header(PROBE_HEADER) {
            // The root's background probe (`probe.rs`): one attempt, its own plan.
            host::remove_request_header(PROBE_HEADER);
            if let Some(index) = probe::marked(&self.config, &mark, &cluster) {
                self.plan = vec![Step {
                    index,
                    reset_on_success: true,
                }];
                self.probing = true;
                return Some(index);
            }
            log::warn!("llm-failover: a probe mark for another cluster's provider; ignored");
        }
        let found = self
            .config
            .providers
            .iter()
            .position(|p| p.cluster.as_bytes() == cluster.as_slice());
        log::warn!(
            "llm-failover: an attempt to cluster {} has no plan entry; is the downstream filter missing?",
            String::from_utf8_lossy(&cluster)
        );
        found
    }

    /// A hedge (a call, so without a plan) names its provider in its header, which
    /// is taken off here. Without a hedge's header, or with one naming a provider of
    /// another cluster (forged: a client cannot pick whose key this attempt carries):
    /// `None`.
    fn hedge(&mut self, cluster: &[u8]) -> Option<usize> {
        let value = host::request_header(HEDGE_HEADER)?;
        host::remove_request_header(HEDGE_HEADER);
        let (id, index) = hedge::parse_mark(&value)?;
        if self.config.providers.get(index)?.cluster.as_bytes() != cluster {
            log::warn!("llm-failover: a hedge mark for another cluster's provider; ignored");
            return None;
        }
        self.hedge_id = Some(id);
        // Its record is unknown here: a success reads it and resets it if needed.
        self.plan = vec![Step {
            index,
            reset_on_success: true,
        }];
        self.live.borrow_mut().started(id, self.context_id);
        Some(index)
    }

    /// A retry to the provider this request's hedge is out to waits for the hedge
    /// (see `HEDGED_TO_KEY`): whether this attempt is held.
    fn hold_for_hedge(&mut self, index: usize) -> bool {
        if self.config.failover.hedge_after_ms.is_none() {
            return false;
        }
        let Some((_, to)) = host::property(&[HEDGED_TO_KEY]).and_then(|v| hedge::parse_mark(&v))
        else {
            return false;
        };
        if to != index {
            return false;
        }
        log::info!(
            "llm-failover: the retry to {} waits for the hedge already out to it",
            self.name()
        );
        self.holding = true;
        // The downstream root answers with the hedge's answer when it sees this.
        host::set_property(HELD_KEY, "1");
        true
    }

    fn name(&self) -> &str {
        self.provider
            .and_then(|i| self.config.providers.get(i))
            .map(|p| p.name.as_str())
            .unwrap_or("?")
    }

    /// A failure of this attempt without an answer (refused, reset, timed out): the
    /// router retries it itself, on the attempt this filter names.
    fn failed(&mut self, failure: Failure, reason: &'static str, ended: Ended, why: &str) {
        let now = host::now_ms();
        self.record(failure, None, why, now);
        if self.move_on(ended, reason, now).is_none() {
            // The plan is used up; the router may still have retries: they go nowhere.
            host::set_property(NEXT_KEY, EXHAUSTED_CLUSTER);
        }
    }

    /// Names the attempt after this one (`attempt::next_attempt`) for the route's
    /// cluster specifier and for that attempt's upstream filter, and counts a
    /// failover. `None` when there is none; else the wait before it.
    fn move_on(&self, ended: Ended, reason: &'static str, now: u64) -> Option<Option<u64>> {
        let index = self.provider?;
        let plan: Vec<usize> = self.plan.iter().map(|s| s.index).collect();
        let (next, wait) = attempt::next_attempt(&self.config, &plan, self.at, index, ended)?;
        let to = *plan.get(next.position)?;
        let cluster = &self.config.providers.get(to)?.cluster;
        host::set_property(AT_KEY, &next.encode());
        host::set_property(NEXT_KEY, cluster);
        let path = host::property(&[PATH_KEY])
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| self.at.position.to_string());
        host::set_property(PATH_KEY, &format!("{path},{}", next.position));
        if next.position == self.at.position {
            log::info!(
                "llm-failover: asking provider {} again (retry {} of {})",
                self.name(),
                next.retry,
                self.config.failover.retries
            );
        } else {
            self.failing_over(to, reason, now);
        }
        Some(wait)
    }

    /// Counts a failover to provider `to` and, for the first attempt, notes its
    /// reason and time for the access log and the failover-time histogram.
    fn failing_over(&self, to: usize, reason: &'static str, now: u64) {
        let Some(to) = self.config.providers.get(to) else {
            return;
        };
        log::info!("llm-failover: failing over to provider {}", to.name);
        self.telemetry
            .count(metrics::failovers(self.name(), &to.name, reason));
        if host::property(&[REASON_KEY]).is_none() {
            host::set_property(REASON_KEY, reason);
            host::set_property(FAILED_AT_KEY, &now.to_string());
        }
    }

    /// A failing answer (400 and up), its error body read: judged by its class, its
    /// provider's health recorded, and the answer either sent on to the client or
    /// turned into [`RETRY_STATUS`] so the router retries the next provider.
    fn settle(&mut self, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
        let Some(index) = self.provider else { return };
        let config = Rc::clone(&self.config);
        let now = host::now_ms();
        let verdict = attempt::judge(&config, index, status, headers, body, now);
        self.telemetry
            .count(metrics::errors(self.name(), verdict.reason()));
        let why = format!("status {status}, {}", verdict.reason());
        let next = self.move_on(Ended::Answer(status, verdict), verdict.reason(), now);
        let waited_out = matches!(next, Some(Some(_)));
        match verdict.failure {
            // A 429 waited out (retryWithin) is asked again instead of cooling.
            Some(_) if waited_out => log::info!(
                "llm-failover: provider {} failed ({why}); waiting it out (retryWithin)",
                self.name()
            ),
            Some(failure) => {
                let result = self.record(failure, verdict.evidence_ms, &why, now);
                if result.as_ref().is_some_and(|r| r.cooldown_started) {
                    self.say_loudly(failure, status, &config);
                }
            }
            None => {
                log::info!(
                    "llm-failover: provider {} answered {status} ({}): the request is at fault; no cooldown",
                    self.name(),
                    verdict.reason()
                );
                // The provider answered: it is up.
                self.record_success(index);
            }
        }
        match next {
            Some(wait) => {
                host::set_property(STATUS_KEY, &status.to_string());
                host::set_response_header(":status", &RETRY_STATUS.to_string());
                if let Some(ms) = wait {
                    host::set_response_header(WAIT_HEADER, &ms.div_ceil(1000).to_string());
                }
            }
            None if status == RETRY_STATUS => host::set_response_header(":status", "502"),
            None => {}
        }
    }

    /// The timeout Envoy's router gives this attempt to send its headers, below
    /// attemptTimeout, and its name: firstByteTimeout, or for a streamed request
    /// streamFirstByteTimeout when shorter (render's route for streamed requests).
    fn per_try_limit(&self) -> Option<(u64, &'static str)> {
        let failover = &self.config.failover;
        let first_byte = failover
            .first_byte_timeout_ms
            .map(|ms| (ms, "firstByteTimeout"));
        let streamed = failover
            .stream_first_byte_timeout_ms
            .filter(|_| host::property(&[STREAMED_KEY]).is_some())
            .map(|ms| (ms, "streamFirstByteTimeout"));
        match (first_byte, streamed) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// One line an operator cannot miss, once per cooldown, for failures that need a
    /// person: a spent quota, a refused key.
    fn say_loudly(&self, failure: Failure, status: u16, config: &Config) {
        let Some(provider) = self.provider.and_then(|i| config.providers.get(i)) else {
            return;
        };
        let secs = config.failover.max_cooldown_ms / 1000;
        match failure {
            Failure::Quota => log::error!(
                "llm-failover: provider {} is out of quota or credit (status {status}); \
                 it is left alone for {secs} s (maxCooldown): check its billing",
                provider.name
            ),
            Failure::Auth => log::error!(
                "llm-failover: provider {} refused the key from ${} (status {status}); \
                 it is left alone for {secs} s (maxCooldown): fix the key",
                provider.name,
                provider.auth_env.as_deref().unwrap_or("?")
            ),
            _ => {}
        }
    }

    /// Records a good answer (or one the request was at fault for) of provider `index`.
    fn record_success(&self, index: usize) {
        // Asked again after a failure in this request: that failure may need undoing.
        let reset = (self.at.retry == 0)
            .then(|| self.plan.get(self.at.position).map(|s| s.reset_on_success))
            .flatten();
        // Without a plan the record is unknown: read it (None) rather than skip a reset.
        let known = match reset {
            Some(false) => Some(crate::health::HealthRecord::default()),
            _ => None,
        };
        attempt::record_success(&self.config, &HostSharedData, index, known);
    }
}

impl AttemptFilter {
    /// Watches a successful streamed (SSE) answer for its end; `header` reads a
    /// response header.
    fn watch_stream(&mut self, status: u16, header: impl Fn(&str) -> Option<Vec<u8>>) {
        if !(200..300).contains(&status) {
            return;
        }
        let sse = header("content-type").is_some_and(|v| v.starts_with(b"text/event-stream"));
        if sse {
            self.stream = Some(StreamWatch::default());
            self.can_append = header("content-length").is_none();
        }
    }

    /// Records a failure of this attempt's provider at `now` and logs it.
    fn record(
        &self,
        failure: Failure,
        evidence: Option<u64>,
        why: &str,
        now: u64,
    ) -> Option<attempt::Recorded> {
        let index = self.provider?;
        let result = attempt::record_failure(
            &self.config,
            &HostSharedData,
            self.telemetry.as_ref(),
            index,
            failure,
            evidence,
            now,
        );
        log::info!(
            "{}",
            attempt::describe(&self.config, index, &result, why, now)
        );
        result.ok()
    }
}

impl MetricsSink for Telemetry {
    fn count(&self, name: String) {
        Telemetry::count(self, name);
    }
}

impl Context for AttemptFilter {
    fn on_done(&mut self) -> bool {
        if self.holding {
            // Held, never sent (see HEDGED_TO_KEY): nobody's failure.
            return true;
        }
        if let Some(id) = self.hedge_id.take() {
            if self.live.borrow_mut().ended(id, self.context_id) {
                // Cancelled by the gateway: the routed attempt won.
                return true;
            }
        }
        if self.provider.is_none() {
            return true;
        }
        if self.awaiting_first_event {
            // Abandoned by firstTokenTimeout (Envoy's per-try idle timer) before its
            // first event: the router goes on to the next provider.
            self.awaiting_first_event = false;
            if !client_went_away() && host::property(&[REFUSED_KEY]).is_none() {
                let limit = self.config.failover.first_token_timeout_ms.unwrap_or(0);
                self.failed(
                    Failure::Stall,
                    "stall",
                    Ended::Gone,
                    &format!("no first event within firstTokenTimeout ({limit} ms)"),
                );
            }
            return true;
        }
        if self.answered {
            // An answer reset after its headers (streamed or not), unless the client
            // went away: its bytes went out, so it cannot be sent elsewhere, but it is
            // the provider's failure.
            if self.good_answer
                && !self.response_ended
                && !self.stream.as_ref().is_some_and(StreamWatch::finished)
                && !client_went_away()
                && host::property(&[REFUSED_KEY]).is_none()
            {
                self.broken_stream("reset");
            }
            return true;
        }
        // No response headers: refused, reset or timed out, unless the client went
        // away (then the router cancelled the attempt, and the provider is not to blame).
        if client_went_away() || host::property(&[REFUSED_KEY]).is_some() {
            return true;
        }
        if let Some((limit, name)) = self.per_try_limit() {
            // Envoy's per-try timer and ours start a hair apart.
            if self.started_ms > 0 && host::now_ms().saturating_sub(self.started_ms) + 50 >= limit {
                self.failed(
                    Failure::Timeout,
                    "timeout",
                    Ended::Gone,
                    &format!("no response headers within {name} ({limit} ms)"),
                );
                return true;
            }
        }
        // A transport failure (refused, no healthy host) says so; without one the
        // provider reset a request it had (which `retries` may ask again).
        let (why, ended) = match host::property(&["upstream", "transport_failure_reason"])
            .filter(|r| !r.is_empty())
        {
            Some(r) => (
                format!("unreachable: {}", String::from_utf8_lossy(&r)),
                Ended::Gone,
            ),
            None => ("no response: reset".to_string(), Ended::Reset),
        };
        let (failure, reason) = attempt::unreachable();
        self.failed(failure, reason, ended, &why);
        true
    }
}

/// The client went away: the router cancelled the attempt, the provider is not to blame.
fn client_went_away() -> bool {
    let details = host::property(&["response", "code_details"]).unwrap_or_default();
    let flags = host::property_u64(&["response", "flags"]).unwrap_or(0);
    details == b"downstream_remote_disconnect" || flags & DOWNSTREAM_CONNECTION_TERMINATION != 0
}

impl AttemptFilter {
    /// The answer's stream broke off (`how`: `broken` without its end, `reset`):
    /// a failure of the provider, shown in the access log.
    fn broken_stream(&mut self, how: &str) {
        let now = host::now_ms();
        if let Some(idle) = self.config.failover.stream_idle_timeout_ms {
            if how == "reset"
                && self.last_data_ms > 0
                && now.saturating_sub(self.last_data_ms) + 50 >= idle
            {
                // Ended by streamIdleTimeout (Envoy's per-try idle timer): a stall.
                host::set_property(STREAM_KEY, "stall");
                let why = format!("its stream stalled for streamIdleTimeout ({idle} ms)");
                let _ = self.record(Failure::Stall, None, &why, now);
                return;
            }
        }
        host::set_property(STREAM_KEY, how);
        let why = format!("its stream broke off ({how})");
        let _ = self.record(Failure::BrokenStream, None, &why, now);
    }
}

impl HttpContext for AttemptFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.provider = self.find_provider();
        let Some(index) = self.provider else {
            return Action::Continue;
        };
        let config = Rc::clone(&self.config);
        let provider = &config.providers[index];
        if config.failover.first_byte_timeout_ms.is_some()
            || config.failover.stream_first_byte_timeout_ms.is_some()
        {
            self.started_ms = host::now_ms();
        }
        if self.planned && self.at.position == 0 {
            // The downstream filter rewrote the first attempt's headers (and, when it
            // says so, its body) already.
            self.buffering =
                !end_of_stream && provider.model_json.is_some() && !self.first_body_rewritten;
            return Action::Continue;
        }
        // Later attempts start from the client's values: the earlier attempts'
        // rewrites are still in the shared header map.
        let mut original_path = None;
        if self.at.position > 0 && !config.rewritten_headers.is_empty() {
            let client = host::property(&[CLIENT_HEADERS_KEY])
                .map(|v| handoff::decode_client_headers(&v))
                .unwrap_or_default();
            for name in &config.rewritten_headers {
                match client.iter().find(|(n, _)| n == name) {
                    Some((_, value)) => {
                        if name == ":path" {
                            original_path = String::from_utf8(value.clone()).ok();
                        }
                        host::set_request_header_bytes(name, value);
                    }
                    None => host::remove_request_header(name),
                }
            }
        } else if provider.rewrites_path() {
            original_path = host::request_header(":path").and_then(|v| String::from_utf8(v).ok());
        }
        crate::http::apply_edits(&config, provider, original_path.as_deref());
        self.buffering = !end_of_stream && provider.model_json.is_some();
        if self.buffering && (self.hedge_id.is_some() || self.probing) {
            // Envoy gave the call its body's length; the rewrite changes it.
            // (A routed attempt's was removed by the downstream filter.)
            host::remove_request_header("content-length");
        }
        if self.planned && self.at.position > 0 && self.hold_for_hedge(index) {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // A held attempt keeps its body here (Continue would let the held headers go).
        let go_on = if self.holding {
            Action::Pause
        } else {
            Action::Continue
        };
        if !self.buffering {
            return go_on;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let (Some(index), Some(body)) = (self.provider, host::request_body(body_size)) else {
            return go_on;
        };
        let config = Rc::clone(&self.config);
        // The downstream filter already refused a body that is not JSON.
        if let (Some(model), Ok(slots)) =
            (&config.providers[index].model_json, body::inspect(&body))
        {
            let (replaced, prefix) = body::model_edit(&body, &slots, model);
            host::replace_request_body_prefix(replaced, &prefix);
        }
        go_on
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response_ended = true;
        if let Some((status, headers)) = self.held.take() {
            // The body (if any) came without its end: judged on what came.
            self.settle(status, &headers, &[]);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.held.is_some() {
            // Buffered here until it is complete or as long as it will be read.
            if !end_of_stream && body_size < errors::BODY_LIMIT {
                return Action::Pause;
            }
            let body = host::response_body(body_size.min(errors::BODY_LIMIT)).unwrap_or_default();
            self.response_ended = end_of_stream;
            if let Some((status, headers)) = self.held.take() {
                self.settle(status, &headers, &body);
            }
            return Action::Continue;
        }
        if self.awaiting_first_event {
            self.awaiting_first_event = false;
            if let Some(index) = self.provider {
                self.record_success(index);
            }
        }
        if self.config.failover.stream_idle_timeout_ms.is_some() {
            self.last_data_ms = host::now_ms();
        }
        let Some(watch) = self.stream.as_mut() else {
            self.response_ended |= end_of_stream;
            return Action::Continue;
        };
        if !watch.finished() {
            if let Some(chunk) = host::response_body(body_size) {
                watch.feed(&chunk);
            }
        }
        if end_of_stream {
            self.response_ended = true;
            if !watch.finished() {
                self.broken_stream("broken");
                if self.can_append {
                    // The client's SDK then raises instead of returning half an answer.
                    host::append_response_body(body_size, sse::error_event(self.name()).as_bytes());
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.answered = true;
        self.response_ended = end_of_stream;
        let Some(index) = self.provider else {
            return Action::Continue;
        };
        let status: u16 = host::response_header(":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0);
        let config = Rc::clone(&self.config);
        // Everything an upstream filter sees came from the provider.
        if status >= 400 {
            let headers = host::response_headers();
            if end_of_stream {
                self.settle(status, &headers, &[]);
                return Action::Continue;
            }
            // Held until the error body is read (render sets
            // allow_on_headers_stop_iteration, so the body callbacks still come).
            self.held = Some((status, headers));
            return Action::Pause;
        }
        self.good_answer = true;
        if config.failover.proactive {
            let headers = host::response_headers();
            self.watch_stream(status, |name| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            });
            let now = host::now_ms();
            if let Some(delay) = retry_after::quota_spent(&headers, now) {
                let result = attempt::record_failure(
                    &config,
                    &HostSharedData,
                    self.telemetry.as_ref(),
                    index,
                    Failure::QuotaSpent,
                    delay,
                    now,
                );
                log::info!(
                    "{}",
                    attempt::describe(&config, index, &result, "quota spent", now)
                );
                return Action::Continue;
            }
        }
        if !config.failover.proactive {
            self.watch_stream(status, host::response_header);
        }
        if config.failover.first_token_timeout_ms.is_some()
            && self.stream.is_some()
            && !end_of_stream
        {
            // Held until the first event: Envoy's per-try idle timer (firstTokenTimeout)
            // still runs, and when it fires the router tries the next provider, since
            // nothing reached the client. The success is recorded at the first event.
            self.awaiting_first_event = true;
            return Action::Pause;
        }
        self.record_success(index);
        Action::Continue
    }
}
