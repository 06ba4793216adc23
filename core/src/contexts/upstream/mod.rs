//! The filter as an upstream HTTP filter on each provider cluster (router mode):
//! one instance per attempt. It finds its provider in the plan the downstream filter
//! left in filter state, rewrites every attempt after the first for it (model, host,
//! path, key) starting from the client's own header values (the downstream filter
//! rewrites the first), judges the answer, and records the attempt's outcome in the
//! provider's health. Envoy's router does the retrying and streams the winner's
//! answer; the decisions come from `attempt.rs`. This file: the attempt's state and
//! its request; `answer.rs`: the answer; `outcome.rs`: what the attempt's end means.

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
    HELD_KEY, NEXT_KEY, PATH_KEY, PLAN_KEY, PROBE_HEADER, REASON_KEY, RETRY_STATUS, STATUS_KEY,
    WAIT_HEADER, WHYS_KEY,
};
use crate::plan::{At, Plan};
use crate::probe;
use crate::retry_after;
use crate::sse::{self, StreamWatch};

use super::request::apply_edits;
use super::telemetry::Telemetry;
use super::unreported::{self, TIMER_SLACK_MS};

mod answer;
mod outcome;

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
            || config.requests_time_their_attempts()
        {
            self.started_ms = h.now_ms();
        }
        let planned = self.kind == Kind::Routed { planned: true };
        if planned && !h.reports_attempt_ends() {
            self.open(h, index);
        }
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

    /// (A host that does not report an attempt's end without an answer.) Records the
    /// attempt before this one if it was left open, marks this one open, and names
    /// the attempt after it for the router, in advance (an answer renames it).
    fn open(&self, h: &mut impl Host, index: usize) {
        let now = h.now_ms();
        if let Some(open) = unreported::take(h) {
            self.after_unanswered(h, open, now);
        }
        unreported::mark(h, self.at, now);
        let plan: Vec<usize> = self.plan.indices().collect();
        let next = attempt::next_attempt(&self.config, &plan, self.at, index, Ended::Gone)
            .and_then(|(next, _)| {
                Some((next, self.config.providers.get(*plan.get(next.position)?)?))
            });
        match next {
            Some((next, to)) => {
                h.set_property_str(AT_KEY, &next.encode());
                h.set_property_str(NEXT_KEY, &to.cluster);
            }
            None => h.set_property_str(NEXT_KEY, EXHAUSTED_CLUSTER),
        }
    }

    /// The attempt before this one ended without an answer: its provider's failure,
    /// and where the request went (as `move_on` says it when the end is reported).
    fn after_unanswered(&self, h: &mut impl Host, open: unreported::Open, now: u64) {
        let Some(from) = self.plan.get(open.at.position).map(|s| s.index) else {
            return;
        };
        let reason = unreported::record(h, &self.config, &self.telemetry, from, open, now);
        extend_path(h, open.at.position, self.at.position, reason);
        let (Some(from), Some(to)) = (
            self.config.providers.get(from),
            self.provider.and_then(|i| self.config.providers.get(i)),
        ) else {
            return;
        };
        if open.at.position == self.at.position {
            return;
        }
        log::info!("llm-failover: failing over to provider {}", to.name);
        let name = metrics::failovers(&from.name, &to.name, reason);
        self.telemetry.count(h, name);
        if h.property(&[REASON_KEY]).is_none() {
            h.set_property_str(REASON_KEY, reason);
            h.set_property_str(FAILED_AT_KEY, &now.to_string());
        }
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
        // Listed for the cancel list's polling, and taken off at the attempt's end: a
        // host that does not report every end cancels hedges itself (`cancel_call`).
        if h.reports_attempt_ends() {
            self.live.borrow_mut().started(id, self.context_id);
        }
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

    pub fn on_request_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        match self.stage {
            // A held attempt keeps its body here (Continue would let the held headers go).
            Stage::HeldForHedge => return Action::Pause,
            Stage::Sending { buffering: true } => {}
            _ => return Action::Continue,
        }
        if !end {
            return Action::Pause;
        }
        let (Some(index), Some(body)) = (self.provider, h.request_body(size)) else {
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
}

/// The request moved from plan position `from` to `to` because of `reason`: both
/// noted in filter state, where the downstream filter reads where the request went
/// (`PATH_KEY`) and why each attempt before the last failed (`WHYS_KEY`, the tried
/// header). Only on a failover path.
pub(super) fn extend_path(h: &mut impl Host, from: usize, to: usize, reason: &'static str) {
    fn read(h: &impl Host, key: &str) -> Option<String> {
        h.property(&[key]).and_then(|v| String::from_utf8(v).ok())
    }
    let path = read(h, PATH_KEY).unwrap_or_else(|| from.to_string());
    h.set_property_str(PATH_KEY, &format!("{path},{to}"));
    let whys = match read(h, WHYS_KEY) {
        Some(whys) => format!("{whys},{reason}"),
        None => reason.to_string(),
    };
    h.set_property_str(WHYS_KEY, &whys);
}
