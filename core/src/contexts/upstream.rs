//! The filter as an upstream HTTP filter on each provider cluster (router mode):
//! one instance per attempt. It finds its provider in the plan the downstream filter
//! left in filter state, rewrites every attempt after the first for it (model, host,
//! path, key) starting from the client's own header values (the downstream filter
//! rewrites the first), judges the answer, and records the attempt's outcome in the
//! provider's health. Envoy's router does the retrying and streams the winner's
//! answer; the decisions come from `attempt.rs`.

use std::cell::RefCell;
use std::rc::Rc;

use crate::attempt::{self, Ended, Recorded};
use crate::body;
use crate::config::Config;
use crate::errors;
use crate::handoff;
use crate::health::Failure;
use crate::hedge::{self, Live};
use crate::host::{parse_number, Action, HeaderList, Host};
use crate::metrics;
use crate::names::{
    AT_KEY, CLIENT_HEADERS_KEY, EXHAUSTED_CLUSTER, FAILED_AT_KEY, HEDGED_TO_KEY, HEDGE_HEADER,
    HELD_KEY, NEXT_KEY, PATH_KEY, PLAN_KEY, PROBE_HEADER, REASON_KEY, REFUSED_KEY, RETRY_STATUS,
    STATUS_KEY, STREAMED_KEY, STREAM_KEY, WAIT_HEADER,
};
use crate::plan::{At, Plan};
use crate::probe;
use crate::retry_after;
use crate::sse::{self, StreamWatch};

use super::request::apply_edits;
use super::telemetry::Telemetry;

/// Envoy's response flag for a downstream that went away (`DC`).
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;

/// Envoy's per-try timers and this filter's clock start a hair apart.
const TIMER_SLACK_MS: u64 = 50;

/// Which attempt this instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An attempt of Envoy's router; `planned`: the downstream filter's plan was
    /// found (it rewrote the first attempt's headers).
    Routed { planned: bool },
    /// Hedge `id`, a call the downstream root sent (see `hedge.rs`).
    Hedge(u64),
    /// The root's background probe (`probe.rs`).
    Probe,
}

/// Where the attempt stands: one state instead of a flag per question.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// No provider of this filter's (nothing to do), or request headers not seen yet.
    Idle,
    /// The request is going out; `buffering`: its body is held here to rewrite
    /// `model`.
    Sending { buffering: bool },
    /// A retry to the provider this request's hedge is out to: held, never sent
    /// (see `HEDGED_TO_KEY`).
    HeldForHedge,
    /// A failing answer whose headers are held until its error body is read (render
    /// sets `allow_on_headers_stop_iteration`, so the body still comes).
    ReadingError { status: u16, headers: HeaderList },
    /// A failing answer, judged and recorded (Envoy drops its body when it retries).
    Failed,
    /// A streamed answer's headers held until its first event (`firstTokenTimeout`).
    AwaitingFirstEvent,
    /// A good answer going to the client; `ended`: its last byte passed.
    Answering { ended: bool },
}

/// A streamed (SSE) success watched for its end.
struct Watched {
    watch: StreamWatch,
    /// Bytes may be added to the stream (it has no `content-length`).
    can_append: bool,
}

pub struct AttemptFilter {
    config: Rc<Config>,
    telemetry: Rc<Telemetry>,
    kind: Kind,
    stage: Stage,
    plan: Plan,
    /// This attempt's place in the plan (and how often its provider was asked before
    /// in this request), and its provider.
    at: At,
    provider: Option<usize>,
    /// When the attempt started (Unix ms), kept only with a per-try timeout.
    started_ms: u64,
    stream: Option<Watched>,
    /// When the answer's last bytes came (Unix ms), kept with `streamIdleTimeout`.
    last_data_ms: u64,
    context_id: u32,
    /// This worker's hedges out (shared with the upstream root).
    live: Rc<RefCell<Live>>,
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
            kind: Kind::Routed { planned: false },
            stage: Stage::Idle,
            plan: Plan::default(),
            at: At::default(),
            provider: None,
            started_ms: 0,
            stream: None,
            last_data_ms: 0,
            context_id,
            live,
        }
    }

    fn name(&self) -> &str {
        self.provider
            .and_then(|i| self.config.providers.get(i))
            .map(|p| p.name.as_str())
            .unwrap_or("?")
    }

    /// Request headers: finds the provider and rewrites the attempt for it.
    pub fn on_request_headers(&mut self, h: &mut impl Host, end_of_stream: bool) -> Action {
        self.provider = self.find_provider(h);
        let Some(index) = self.provider else {
            return Action::Continue;
        };
        let config = Rc::clone(&self.config);
        let provider = &config.providers[index];
        if config.failover.first_byte_timeout_ms.is_some()
            || config.failover.stream_first_byte_timeout_ms.is_some()
        {
            self.started_ms = h.now_ms();
        }
        let planned = self.kind == Kind::Routed { planned: true };
        if planned && self.at.position == 0 {
            // The downstream filter rewrote the first attempt's headers (and, when it
            // says so, its body) already.
            let buffering =
                !end_of_stream && provider.model_json.is_some() && !self.plan.first_body_rewritten;
            self.stage = Stage::Sending { buffering };
            return Action::Continue;
        }
        let original_path = self.restore_client_headers(h, index);
        apply_edits(h, &config, provider, original_path.as_deref());
        let buffering = !end_of_stream && provider.model_json.is_some();
        if buffering && matches!(self.kind, Kind::Hedge(_) | Kind::Probe) {
            // Envoy gave the call its body's length; the rewrite changes it.
            // (A routed attempt's was removed by the downstream filter.)
            h.remove_request_header("content-length");
        }
        self.stage = Stage::Sending { buffering };
        if planned && self.at.position > 0 && self.hold_for_hedge(h, index) {
            self.stage = Stage::HeldForHedge;
            return Action::Pause;
        }
        Action::Continue
    }

    /// Later attempts start from the client's values: the earlier attempts' rewrites
    /// are still in the shared header map. The client's `:path`, if a provider
    /// rewrites it.
    fn restore_client_headers(&self, h: &mut impl Host, index: usize) -> Option<String> {
        let config = &self.config;
        if self.at.position == 0 || config.rewritten_headers.is_empty() {
            return if config.providers[index].rewrites_path() {
                h.request_header(":path")
                    .and_then(|v| String::from_utf8(v).ok())
            } else {
                None
            };
        }
        let client = h
            .property(&[CLIENT_HEADERS_KEY])
            .map(|v| handoff::decode_client_headers(&v))
            .unwrap_or_default();
        let mut original_path = None;
        for name in &config.rewritten_headers {
            match client.iter().find(|(n, _)| n == name) {
                Some((_, value)) => {
                    if name == ":path" {
                        original_path = String::from_utf8(value.clone()).ok();
                    }
                    h.set_request_header(name, value);
                }
                None => h.remove_request_header(name),
            }
        }
        original_path
    }

    /// Which provider this attempt is for: the plan's entry for where the request
    /// stands. Without a plan (the downstream filter is missing) the first provider
    /// of this cluster, so a hand-wired Envoy still rewrites.
    fn find_provider(&mut self, h: &mut impl Host) -> Option<usize> {
        self.at = super::where_now(h);
        if let Some(plan) = h
            .property(&[PLAN_KEY])
            .and_then(|v| Plan::decode(&v, self.config.providers.len()))
        {
            self.plan = plan;
            self.kind = Kind::Routed { planned: true };
            if let Some(step) = self.plan.get(self.at.position) {
                return Some(step.index);
            }
        }
        let cluster = h.property(&["xds", "cluster_name"])?;
        if let Some(index) = self.hedge(h, &cluster) {
            return Some(index);
        }
        if let Some(mark) = h.request_header(PROBE_HEADER) {
            // The root's background probe (`probe.rs`): one attempt, its own plan.
            h.remove_request_header(PROBE_HEADER);
            if let Some(index) = probe::marked(&self.config, &mark, &cluster) {
                self.plan = Plan::single(index);
                self.kind = Kind::Probe;
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
    fn hedge(&mut self, h: &mut impl Host, cluster: &[u8]) -> Option<usize> {
        let value = h.request_header(HEDGE_HEADER)?;
        h.remove_request_header(HEDGE_HEADER);
        let (id, index) = hedge::parse_mark(&value)?;
        if self.config.providers.get(index)?.cluster.as_bytes() != cluster {
            log::warn!("llm-failover: a hedge mark for another cluster's provider; ignored");
            return None;
        }
        self.kind = Kind::Hedge(id);
        self.plan = Plan::single(index);
        self.live.borrow_mut().started(id, self.context_id);
        Some(index)
    }

    /// A retry to the provider this request's hedge is out to waits for the hedge
    /// (see `HEDGED_TO_KEY`): whether this attempt is held.
    fn hold_for_hedge(&self, h: &mut impl Host, index: usize) -> bool {
        if self.config.failover.hedge_after_ms.is_none() {
            return false;
        }
        let Some((_, to)) = h
            .property(&[HEDGED_TO_KEY])
            .and_then(|v| hedge::parse_mark(&v))
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
        // The downstream root answers with the hedge's answer when it sees this.
        h.set_property_str(HELD_KEY, "1");
        true
    }

    pub fn on_request_body(
        &mut self,
        h: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        match self.stage {
            // A held attempt keeps its body here (Continue would let the held headers go).
            Stage::HeldForHedge => return Action::Pause,
            Stage::Sending { buffering: true } => {}
            _ => return Action::Continue,
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let (Some(index), Some(body)) = (self.provider, h.request_body(body_size)) else {
            return Action::Continue;
        };
        // The downstream filter already refused a body that is not JSON.
        if let (Some(model), Ok(slots)) = (
            &self.config.providers[index].model_json,
            body::inspect(&body),
        ) {
            let (replaced, prefix) = body::model_edit(&body, &slots, model);
            h.replace_request_body_prefix(replaced, &prefix);
        }
        Action::Continue
    }

    /// Response headers: a failing answer is held to read its error body; a good one
    /// is recorded (a stream at its first event with `firstTokenTimeout`).
    pub fn on_response_headers(&mut self, h: &mut impl Host, end_of_stream: bool) -> Action {
        let Some(index) = self.provider else {
            return Action::Continue;
        };
        let status: u16 = parse_number(h.response_header(":status").as_deref()).unwrap_or(0);
        // Everything an upstream filter sees came from the provider.
        if status >= 400 {
            let headers = h.response_headers();
            if end_of_stream {
                self.settle(h, status, &headers, &[]);
                return Action::Continue;
            }
            self.stage = Stage::ReadingError { status, headers };
            return Action::Pause;
        }
        self.stage = Stage::Answering {
            ended: end_of_stream,
        };
        let config = Rc::clone(&self.config);
        let headers = if config.failover.proactive {
            Some(h.response_headers())
        } else {
            None
        };
        self.watch_stream(h, status, headers.as_deref());
        if let Some(headers) = &headers {
            let now = h.now_ms();
            if let Some(delay) = retry_after::quota_spent(headers, now) {
                let _ = self.record(h, Failure::QuotaSpent, delay, "quota spent", now);
                return Action::Continue;
            }
        }
        if config.failover.first_token_timeout_ms.is_some()
            && self.stream.is_some()
            && !end_of_stream
        {
            // Held until the first event: Envoy's per-try idle timer (firstTokenTimeout)
            // still runs, and when it fires the router tries the next provider, since
            // nothing reached the client. The success is recorded at the first event.
            self.stage = Stage::AwaitingFirstEvent;
            return Action::Pause;
        }
        self.record_success(h, index);
        Action::Continue
    }

    /// Watches a successful streamed (SSE) answer for its end; `headers` when read
    /// already.
    fn watch_stream(&mut self, h: &impl Host, status: u16, headers: Option<&[(String, Vec<u8>)]>) {
        if !(200..300).contains(&status) {
            return;
        }
        let header = |name: &str| match headers {
            Some(all) => crate::host::header_value(all, name).map(<[u8]>::to_vec),
            None => h.response_header(name),
        };
        let sse = header("content-type").is_some_and(|v| v.starts_with(b"text/event-stream"));
        if sse {
            self.stream = Some(Watched {
                watch: StreamWatch::default(),
                can_append: header("content-length").is_none(),
            });
        }
    }

    pub fn on_response_body(
        &mut self,
        h: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        match &self.stage {
            Stage::ReadingError { .. } => return self.read_error_body(h, body_size, end_of_stream),
            Stage::AwaitingFirstEvent => {
                self.stage = Stage::Answering { ended: false };
                if let Some(index) = self.provider {
                    self.record_success(h, index);
                }
            }
            _ => {}
        }
        if self.config.failover.stream_idle_timeout_ms.is_some() {
            self.last_data_ms = h.now_ms();
        }
        if end_of_stream {
            if let Stage::Answering { ended } = &mut self.stage {
                *ended = true;
            }
        }
        let Some(watched) = self.stream.as_mut() else {
            return Action::Continue;
        };
        if !watched.watch.finished() {
            if let Some(chunk) = h.response_body(body_size) {
                watched.watch.feed(&chunk);
            }
        }
        if end_of_stream && !watched.watch.finished() {
            let can_append = watched.can_append;
            self.broken_stream(h, "broken");
            if can_append {
                // The client's SDK then raises instead of returning half an answer.
                let event = sse::error_event(self.name());
                h.append_response_body(body_size, event.as_bytes());
            }
        }
        Action::Continue
    }

    /// A failing answer's body: buffered here until it is complete or as long as it
    /// will be read, then the answer is judged.
    fn read_error_body(
        &mut self,
        h: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !end_of_stream && body_size < errors::BODY_LIMIT {
            return Action::Pause;
        }
        let body = h
            .response_body(body_size.min(errors::BODY_LIMIT))
            .unwrap_or_default();
        if let Stage::ReadingError { status, headers } =
            std::mem::replace(&mut self.stage, Stage::Failed)
        {
            self.settle(h, status, &headers, &body);
        }
        Action::Continue
    }

    pub fn on_response_trailers(&mut self, h: &mut impl Host) -> Action {
        match std::mem::replace(&mut self.stage, Stage::Failed) {
            // The body (if any) came without its end: judged on what came.
            Stage::ReadingError { status, headers } => self.settle(h, status, &headers, &[]),
            Stage::Answering { .. } => self.stage = Stage::Answering { ended: true },
            other => self.stage = other,
        }
        Action::Continue
    }

    /// A failing answer (400 and up), its error body read: judged by its class, its
    /// provider's health recorded, and the answer either sent on to the client or
    /// turned into [`RETRY_STATUS`] so the router retries the next provider.
    fn settle(
        &mut self,
        h: &mut impl Host,
        status: u16,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
    ) {
        self.stage = Stage::Failed;
        let Some(index) = self.provider else { return };
        let config = Rc::clone(&self.config);
        let now = h.now_ms();
        let verdict = attempt::judge(&config, index, status, headers, body, now);
        let class = metrics::errors(self.name(), verdict.reason());
        self.telemetry.count(h, class);
        let why = format!("status {status}, {}", verdict.reason());
        let next = self.move_on(h, Ended::Answer(status, verdict), verdict.reason(), now);
        let waited_out = matches!(next, Some(Some(_)));
        match verdict.failure {
            // A 429 waited out (retryWithin) is asked again instead of cooling.
            Some(_) if waited_out => log::info!(
                "llm-failover: provider {} failed ({why}); waiting it out (retryWithin)",
                self.name()
            ),
            Some(failure) => {
                let result = self.record(h, failure, verdict.evidence_ms, &why, now);
                if result.as_ref().is_some_and(|r| r.cooldown_started) {
                    self.say_loudly(failure, status);
                }
            }
            None => {
                log::info!(
                    "llm-failover: provider {} answered {status} ({}): the request is at fault; no cooldown",
                    self.name(),
                    verdict.reason()
                );
                // The provider answered: it is up.
                self.record_success(h, index);
            }
        }
        match next {
            Some(wait) => {
                h.set_property_str(STATUS_KEY, &status.to_string());
                h.set_response_header(":status", &RETRY_STATUS.to_string());
                if let Some(ms) = wait {
                    h.set_response_header(WAIT_HEADER, &ms.div_ceil(1000).to_string());
                }
            }
            None if status == RETRY_STATUS => h.set_response_header(":status", "502"),
            None => {}
        }
    }

    /// A failure of this attempt without an answer (refused, reset, timed out): the
    /// router retries it itself, on the attempt this filter names.
    fn failed(
        &mut self,
        h: &mut impl Host,
        failure: Failure,
        reason: &'static str,
        ended: Ended,
        why: &str,
    ) {
        let now = h.now_ms();
        let _ = self.record(h, failure, None, why, now);
        if self.move_on(h, ended, reason, now).is_none() {
            // The plan is used up; the router may still have retries: they go nowhere.
            h.set_property_str(NEXT_KEY, EXHAUSTED_CLUSTER);
        }
    }

    /// Names the attempt after this one (`attempt::next_attempt`) for the route's
    /// cluster specifier and for that attempt's upstream filter, and counts a
    /// failover. `None` when there is none; else the wait before it.
    fn move_on(
        &self,
        h: &mut impl Host,
        ended: Ended,
        reason: &'static str,
        now: u64,
    ) -> Option<Option<u64>> {
        let index = self.provider?;
        let plan: Vec<usize> = self.plan.indices().collect();
        let (next, wait) = attempt::next_attempt(&self.config, &plan, self.at, index, ended)?;
        let to = *plan.get(next.position)?;
        let cluster = &self.config.providers.get(to)?.cluster;
        h.set_property_str(AT_KEY, &next.encode());
        h.set_property_str(NEXT_KEY, cluster);
        let path = h
            .property(&[PATH_KEY])
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| self.at.position.to_string());
        h.set_property_str(PATH_KEY, &format!("{path},{}", next.position));
        if next.position == self.at.position {
            log::info!(
                "llm-failover: asking provider {} again (retry {} of {})",
                self.name(),
                next.retry,
                self.config.failover.retries
            );
        } else {
            self.failing_over(h, to, reason, now);
        }
        Some(wait)
    }

    /// Counts a failover to provider `to` and, for the first attempt, notes its
    /// reason and time for the access log and the failover-time histogram.
    fn failing_over(&self, h: &mut impl Host, to: usize, reason: &'static str, now: u64) {
        let Some(to) = self.config.providers.get(to) else {
            return;
        };
        log::info!("llm-failover: failing over to provider {}", to.name);
        let name = metrics::failovers(self.name(), &to.name, reason);
        self.telemetry.count(h, name);
        if h.property(&[REASON_KEY]).is_none() {
            h.set_property_str(REASON_KEY, reason);
            h.set_property_str(FAILED_AT_KEY, &now.to_string());
        }
    }

    /// The timeout Envoy's router gives this attempt to send its headers, below
    /// attemptTimeout, and its name: firstByteTimeout, or for a streamed request
    /// streamFirstByteTimeout when shorter (render's route for streamed requests).
    fn per_try_limit(&self, h: &impl Host) -> Option<(u64, &'static str)> {
        let failover = &self.config.failover;
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

    /// One line an operator cannot miss, once per cooldown, for failures that need a
    /// person: a spent quota, a refused key.
    fn say_loudly(&self, failure: Failure, status: u16) {
        let Some(provider) = self.provider.and_then(|i| self.config.providers.get(i)) else {
            return;
        };
        let secs = self.config.failover.max_cooldown_ms / 1000;
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

    /// Records a good answer (or one the request was at fault for) of provider
    /// `index`. Asked again after a failure in this request, or without a plan, the
    /// record may need a reset: it is read.
    fn record_success(&self, h: &impl Host, index: usize) {
        let known_clear = self.at.retry == 0
            && self
                .plan
                .get(self.at.position)
                .is_some_and(|s| !s.reset_on_success);
        attempt::record_success(&self.config, h, index, !known_clear);
    }

    /// Records a failure of this attempt's provider at `now` and logs it.
    fn record(
        &self,
        h: &impl Host,
        failure: Failure,
        evidence: Option<u64>,
        why: &str,
        now: u64,
    ) -> Option<Recorded> {
        let index = self.provider?;
        let sink = self.telemetry.sink(h);
        let result = attempt::record_failure(&self.config, h, &sink, index, failure, evidence, now);
        log::info!(
            "{}",
            attempt::describe(&self.config, index, &result, why, now)
        );
        result.ok()
    }

    /// The answer's stream broke off (`how`: `broken` without its end, `reset`):
    /// a failure of the provider, shown in the access log.
    fn broken_stream(&mut self, h: &mut impl Host, how: &str) {
        let now = h.now_ms();
        if let Some(idle) = self.config.failover.stream_idle_timeout_ms {
            if how == "reset"
                && self.last_data_ms > 0
                && now.saturating_sub(self.last_data_ms) + TIMER_SLACK_MS >= idle
            {
                // Ended by streamIdleTimeout (Envoy's per-try idle timer): a stall.
                h.set_property_str(STREAM_KEY, "stall");
                let why = format!("its stream stalled for streamIdleTimeout ({idle} ms)");
                let _ = self.record(h, Failure::Stall, None, &why, now);
                return;
            }
        }
        h.set_property_str(STREAM_KEY, how);
        let why = format!("its stream broke off ({how})");
        let _ = self.record(h, Failure::BrokenStream, None, &why, now);
    }

    /// The attempt is over: what its end says about its provider.
    pub fn on_done(&mut self, h: &mut impl Host) -> bool {
        if let Kind::Hedge(id) = self.kind {
            if self.live.borrow_mut().ended(id, self.context_id) {
                // Cancelled by the gateway: the routed attempt won.
                return true;
            }
        }
        match self.stage {
            // No provider; or held, never sent (see HEDGED_TO_KEY): nobody's failure.
            Stage::Idle | Stage::HeldForHedge => {}
            Stage::AwaitingFirstEvent => {
                // Abandoned by firstTokenTimeout (Envoy's per-try idle timer) before its
                // first event: the router goes on to the next provider.
                self.stage = Stage::Answering { ended: false };
                if !self.not_the_providers_doing(h) {
                    let limit = self.config.failover.first_token_timeout_ms.unwrap_or(0);
                    let why = format!("no first event within firstTokenTimeout ({limit} ms)");
                    self.failed(h, Failure::Stall, "stall", Ended::Gone, &why);
                }
            }
            // An answer reset after its headers (streamed or not), unless the client
            // went away: its bytes went out, so it cannot be sent elsewhere, but it is
            // the provider's failure.
            Stage::Answering { ended: false }
                if !self.stream.as_ref().is_some_and(|s| s.watch.finished())
                    && !self.not_the_providers_doing(h) =>
            {
                self.broken_stream(h, "reset");
            }
            Stage::Answering { .. } | Stage::ReadingError { .. } | Stage::Failed => {}
            Stage::Sending { .. } => self.ended_without_answer(h),
        }
        true
    }

    /// No response headers: refused, reset or timed out, unless the client went
    /// away (then the router cancelled the attempt, and the provider is not to blame)
    /// or the downstream filter answered the client itself.
    fn ended_without_answer(&mut self, h: &mut impl Host) {
        if self.not_the_providers_doing(h) {
            return;
        }
        if let Some((limit, name)) = self.per_try_limit(h) {
            if self.started_ms > 0
                && h.now_ms().saturating_sub(self.started_ms) + TIMER_SLACK_MS >= limit
            {
                let why = format!("no response headers within {name} ({limit} ms)");
                self.failed(h, Failure::Timeout, "timeout", Ended::Gone, &why);
                return;
            }
        }
        // A transport failure (refused, no healthy host) says so; without one the
        // provider reset a request it had (which `retries` may ask again).
        let (why, ended) = match h
            .property(&["upstream", "transport_failure_reason"])
            .filter(|r| !r.is_empty())
        {
            Some(r) => (
                format!("unreachable: {}", String::from_utf8_lossy(&r)),
                Ended::Gone,
            ),
            None => ("no response: reset".to_string(), Ended::Reset),
        };
        let (failure, reason) = attempt::unreachable();
        self.failed(h, failure, reason, ended, &why);
    }

    /// The client went away (the router cancelled the attempt), or the gateway
    /// answered the client itself (`REFUSED_KEY`): the provider is not to blame.
    fn not_the_providers_doing(&self, h: &impl Host) -> bool {
        let details = h
            .property(&["response", "code_details"])
            .unwrap_or_default();
        let flags = h.property_u64(&["response", "flags"]).unwrap_or(0);
        details == b"downstream_remote_disconnect"
            || flags & DOWNSTREAM_CONNECTION_TERMINATION != 0
            || h.property(&[REFUSED_KEY]).is_some()
    }
}
