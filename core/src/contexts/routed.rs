//! The downstream filter in router mode (the default): plans the attempt order when
//! the request headers arrive and hands it to Envoy's router (the cluster the
//! route's specifier reads) and to the upstream filter of each attempt
//! (`upstream.rs`, which rewrites and records every later attempt). It rewrites the
//! first attempt, checks the body, names the provider that answered, counts, and
//! gives back unused probe claims. A provider Envoy could not even start an attempt
//! to (no healthy host, unknown cluster) is recorded here.

use std::cell::RefCell;
use std::rc::Rc;

use crate::attempt::{self, LazyHealth};
use crate::health::Failure;
use crate::hedge::{self, Ending, Hedges};
use crate::host::{header_value, parse_number, Action, HeaderList, Host};
use crate::metrics;
use crate::names::{
    CLIENT_HEADERS_KEY, CONTROL_TIMEOUT_KEY, FAILED_AT_KEY, HEDGE_KEY, NEXT_KEY, PATH_KEY,
    PER_TRY_TIMEOUT_HEADER, PLAN_KEY, PROVIDER_HEADER, RETRY_STATUS, STATUS_KEY, STREAMED_HEADER,
    STREAMED_KEY, TRIED_HEADER,
};
use crate::plan::{self, Plan};
use crate::{body, handoff};

use super::hedging::{self, Hedger};
use super::request::{self, apply_edits, BodyRead, Phase, Request};
use super::unreported::{self, Waiting};

/// Which of Envoy's response flags say the router could not start an attempt at
/// all (no upstream filter saw it): no healthy host, unknown cluster.
const NO_ATTEMPT_FLAGS: u64 = (1 << 1) | (1 << 24);

pub struct Routed {
    req: Request,
    /// The attempt order handed to the router.
    plan: Plan,
    /// This filter writes the first attempt's model into the body.
    rewrite_first_body: bool,
    /// This request's context id (the key of its hedge).
    context_id: u32,
    /// This worker's hedges (see `hedge.rs`), and this request's copy for its hedge
    /// until its body is complete (`hedgeAfter` only).
    hedges: Rc<RefCell<Hedges>>,
    hedge_request: Option<hedge::Request>,
    /// The worker root's hedger, for a host that wakes each request itself
    /// (`Host::wake_at`): this request sends its own hedge and gets its answer.
    hedger: Option<Rc<Hedger>>,
    /// When the answer's last data passed (`streamIdleTimeout`, on a host that does
    /// not report an attempt's end: see `record_open`).
    last_data_ms: u64,
    /// The provider of this request's hedge, when the routed attempt won the race
    /// (the tried header lists it).
    hedge_lost_to: Option<usize>,
}

impl Routed {
    pub fn new(
        req: Request,
        context_id: u32,
        hedges: Rc<RefCell<Hedges>>,
        hedger: Option<Rc<Hedger>>,
    ) -> Self {
        Routed {
            req,
            plan: Plan::default(),
            rewrite_first_body: false,
            context_id,
            hedges,
            hedge_request: None,
            hedger,
            last_data_ms: 0,
            hedge_lost_to: None,
        }
    }

    /// The answer's data passing on to the client.
    pub fn on_response_body(&mut self, h: &impl Host) -> Action {
        if self.req.config.failover.stream_idle_timeout_ms.is_some() && !h.reports_attempt_ends() {
            self.last_data_ms = h.now_ms();
        }
        Action::Continue
    }

    pub fn request(&self) -> &Request {
        &self.req
    }

    pub fn request_mut(&mut self) -> &mut Request {
        &mut self.req
    }

    /// Request headers: plans the attempts, hands the plan over and rewrites the
    /// first attempt.
    pub fn on_request_headers(&mut self, h: &mut impl Host, end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.req.config);
        {
            let clock = || h.now_ms();
            let mut view = LazyHealth::new(&config, &*h, &clock);
            self.plan = attempt::plan_for(&config, &*h, &mut view, self.req.ticket, &self.req.wish);
        }
        let Some(first) = self.plan.first().copied() else {
            self.req.strip_control(h);
            return Action::Continue;
        };
        self.req.current = first.index;
        self.req.current_reset = first.reset_on_success;
        for step in &self.plan.steps {
            if let Some(claim) = step.claim {
                self.req.hold_claim(step.index, claim);
            }
        }
        self.log_plan();
        let hedging = self.req.wish.hedge_after_ms(&config).is_some() && self.plan.len() > 1;
        // A hedge needs the whole body, kept; a streamed request is told by its body
        // (it takes a route of its own).
        self.req.phase = Phase::after_headers(
            end_of_stream,
            config.needs_json_body || hedging || config.failover.routes_streams_apart(),
        );
        self.rewrite_first_body = self.req.phase == Phase::Buffering
            && attempt::downstream_rewrites_first_body(&config, &self.plan);
        self.plan.first_body_rewritten = self.rewrite_first_body;
        h.set_property_str(PLAN_KEY, &self.plan.encode());
        // The first attempt's cluster, for the route's matcher cluster specifier (filter
        // state: no client can set it). Set before the header below, whose change makes
        // Envoy pick the route again.
        h.set_property_str(NEXT_KEY, &config.providers[first.index].cluster);
        self.req.strip_control(h);
        if let Some(ms) = self.req.wish.first_byte_timeout_ms {
            // The request's own firstByteTimeout: the router's per-try timeout, and
            // for the upstream filters, the limit an attempt that timed out had.
            h.set_request_header(PER_TRY_TIMEOUT_HEADER, ms.to_string().as_bytes());
            h.set_property_str(CONTROL_TIMEOUT_KEY, &ms.to_string());
        }
        // Replaces whatever a client sent, so no client can set the retries: one
        // attempt per provider of the plan, and its same-provider retries.
        let attempts = self.plan.len() * (1 + config.failover.retries as usize);
        h.set_request_header("x-envoy-max-retries", (attempts - 1).to_string().as_bytes());
        let headers = self.keep_client_headers(h, hedging);
        self.rewrite_first(h, first.index, headers.as_deref());
        if self.req.phase == Phase::Buffering && self.refuse_length(h, headers.as_deref(), hedging)
        {
            return Action::Pause;
        }
        if let (true, Some(all)) = (hedging, headers) {
            // Kept for a hedge, which waits from when the whole request went on.
            self.hedge_request = Some(hedge::Request {
                headers: all,
                body: None,
            });
            if end_of_stream {
                self.wait_for_hedge(h, None);
            }
        }
        if config.failover.routes_streams_apart() {
            if self.req.phase == Phase::Buffering {
                // Held until the body says whether the answer is streamed, which picks
                // the route (render gives streamed requests their own timeouts). The
                // wiring sets allow_on_headers_stop_iteration, so the body still comes.
                return Action::Pause;
            }
            // No body to read: never the streamed route, whatever a client sent.
            h.remove_request_header(STREAMED_HEADER);
        }
        Action::Continue
    }

    fn log_plan(&self) {
        let config = &self.req.config;
        if self.plan.all_cooling {
            log::info!(
                "llm-failover: every provider is cooling down; trying {}, which recovers first",
                self.req.provider_name()
            );
        }
        for step in self.plan.steps.iter().filter(|s| s.claim.is_some()) {
            log::info!(
                "llm-failover: probing provider {} after its cooldown",
                config.providers[step.index].name
            );
        }
    }

    /// The client's headers before the first attempt's rewrite changes them, read
    /// only when a hedge or a later attempt needs them; the values a provider
    /// rewrites go to filter state for the upstream filters.
    fn keep_client_headers(&self, h: &mut impl Host, hedging: bool) -> Option<HeaderList> {
        let config = &self.req.config;
        if !hedging && (self.plan.len() < 2 || config.rewritten_headers.is_empty()) {
            return None;
        }
        let all = h.request_headers();
        if !config.rewritten_headers.is_empty() {
            h.set_property(
                CLIENT_HEADERS_KEY,
                &handoff::encode_client_headers(&all, &config.rewritten_headers),
            );
        }
        Some(all)
    }

    /// The first attempt is rewritten here rather than in its upstream filter: the
    /// same edits, but one filter instance fewer doing host calls on the common path.
    fn rewrite_first(
        &self,
        h: &mut impl Host,
        index: usize,
        headers: Option<&[(String, Vec<u8>)]>,
    ) {
        let config = &self.req.config;
        let provider = &config.providers[index];
        let original_path = match (provider.rewrites_path(), headers) {
            (false, _) => None,
            (true, Some(all)) => header_value(all, ":path")
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string),
            (true, None) => h
                .request_header(":path")
                .and_then(|v| String::from_utf8(v).ok()),
        };
        apply_edits(h, config, provider, original_path.as_deref());
    }

    /// A body to buffer: refused (413) when its length is over the limit and it must
    /// be read; true when it was.
    fn refuse_length(
        &mut self,
        h: &mut impl Host,
        headers: Option<&[(String, Vec<u8>)]>,
        hedging: bool,
    ) -> bool {
        let config = Rc::clone(&self.req.config);
        let content_length: Option<u64> = match headers {
            Some(all) => parse_number(header_value(all, "content-length")),
            None => parse_number(h.request_header("content-length").as_deref()),
        };
        let only_reads = !config.needs_json_body && !hedging;
        if content_length.is_some_and(|len| len > config.max_body_bytes) {
            if !only_reads {
                self.req.reply_too_large(h);
                return true;
            }
            // Read only to tell a stream, and too large to read: it goes on unread,
            // as a non-streamed request.
            self.req.phase = Phase::Streaming;
        } else if !only_reads {
            // A rewritten body has another length: the upstream gets it chunked.
            h.remove_request_header("content-length");
        }
        false
    }

    pub fn on_request_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        let keeps = self.hedge_request.is_some();
        let body = match self.req.read_body(h, size, end, keeps) {
            BodyRead::Done(action) => return action,
            BodyRead::Whole(body) => body,
        };
        let config = Rc::clone(&self.req.config);
        // The first attempt's model, when the plan lets it be written here (see
        // `attempt::downstream_rewrites_first_body`); the upstream filters of later
        // attempts rewrite the router's copy for their own providers.
        let first = self.plan.first().map(|p| &config.providers[p.index]);
        if let (true, Some(model), Some(slots)) = (
            self.rewrite_first_body,
            first.and_then(|p| p.model_json.as_ref()),
            &self.req.slots,
        ) {
            let (replaced, prefix) = body::model_edit(&body, slots, model);
            h.replace_request_body_prefix(replaced, &prefix);
        }
        let streamed = self.req.slots.as_ref().is_some_and(|s| s.stream);
        if streamed && config.failover.stream_first_byte_timeout_ms.is_some() {
            // Each attempt's upstream filter starts its streamFirstByteTimeout.
            h.set_property_str(STREAMED_KEY, "1");
        }
        if config.failover.routes_streams_apart() {
            if streamed {
                h.set_request_header(STREAMED_HEADER, b"1");
                // For the upstream filters: which timeout abandoned an attempt.
                h.set_property_str(STREAMED_KEY, "1");
            } else {
                h.remove_request_header(STREAMED_HEADER);
            }
        }
        self.req.phase = Phase::Sent;
        if self.hedge_request.is_some() {
            self.wait_for_hedge(h, Some(body));
        }
        Action::Continue
    }

    /// The whole request went to the router: it is hedged if no response headers
    /// come within `hedgeAfter` (see `hedge.rs`).
    fn wait_for_hedge(&mut self, h: &mut impl Host, body: Option<Vec<u8>>) {
        let (Some(after), Some(mut request)) = (
            self.req.wish.hedge_after_ms(&self.req.config),
            self.hedge_request.take(),
        ) else {
            return;
        };
        request.body = body;
        let now = h.now_ms();
        self.hedges.borrow_mut().wait(
            self.context_id,
            now,
            after,
            self.plan.steps.clone(),
            request,
        );
        h.wake_at(now.saturating_add(after));
    }

    /// The hedge's time came (a host that wakes each request itself).
    pub fn on_wake(&mut self, h: &mut impl Host) {
        if let Some(hedger) = &self.hedger {
            let now = h.now_ms();
            hedger.wake(h, self.context_id, now);
        }
    }

    /// The answer to this request's hedge (a host that wakes each request itself).
    /// A reply the filter sends itself does not pass its own response-header hook
    /// natively (Envoy skips a dynamic module's encoder hooks after its local
    /// reply): the hedge's answer is named and counted here.
    pub fn on_call_response(&mut self, h: &mut impl Host, token: u32, size: usize) {
        let Some(hedger) = self.hedger.clone() else {
            return;
        };
        if let Some(status) = hedger.answer_own(h, self.context_id, token, size) {
            if self.req.phase != Phase::Replied {
                self.on_response_headers(h, status);
            }
        }
    }

    /// The routed attempt answered first: hedge `id` (call `token`) is cancelled,
    /// by the host if it can, else through the cancel list.
    fn cancel_hedge(h: &mut impl Host, token: u32, id: u64) {
        if !h.cancel_call(token) {
            hedging::cancel(h, id);
        }
    }

    /// Response headers: either the hedge's answer (the root sent it as this
    /// request's reply) or the router's last attempt's, which cancels a hedge that is
    /// out.
    pub fn on_response_headers(&mut self, h: &mut impl Host, status: u16) -> Action {
        if self.req.config.failover.hedge_after_ms.is_none() {
            return self.route_response(h, status);
        }
        let ending = self.hedges.borrow_mut().end(self.context_id);
        let config = Rc::clone(&self.req.config);
        let name = |i: usize| config.providers[i].name.as_str();
        match ending {
            Ending::HedgeWon { from, to } => {
                self.req.current = to;
                // Where the routed attempts went (for the tried header), then the hedge.
                let (mut asked, mut whys) = if self.req.config.tried_header {
                    request::routed_path(h, &self.plan, true)
                } else {
                    (Vec::new(), Vec::new())
                };
                request::add_hedge(&mut asked, &mut whys, from, to, true);
                self.req.asked = asked;
                self.req.whys = whys;
                let won = metrics::hedges(name(from), name(to), name(to));
                self.req.telemetry.count(h, won);
                self.finish(h, status);
                self.req.phase = Phase::Replied;
                Action::Continue
            }
            Ending::RoutedWon {
                token,
                id,
                from,
                to,
            } => {
                Self::cancel_hedge(h, token, id);
                self.hedge_lost_to = Some(to);
                let action = self.route_response(h, status);
                h.set_property_str(HEDGE_KEY, &format!("{}:lost", name(to)));
                let lost = metrics::hedges(name(from), name(to), self.req.provider_name());
                self.req.telemetry.count(h, lost);
                action
            }
            Ending::None => self.route_response(h, status),
        }
    }

    /// Names the provider that answered (the plan's entry for the router's last
    /// attempt) and counts. An attempt the router could not even start (no healthy
    /// host, unknown cluster) never met an upstream filter: it is recorded here. The
    /// router does not retry it, so that client gets Envoy's 503; the next requests
    /// skip the provider.
    fn route_response(&mut self, h: &mut impl Host, mut status: u16) -> Action {
        // Where the upstream filters moved the request (plan positions).
        let mut positions = plan::path(h.property(&[PATH_KEY]).as_deref());
        if status == RETRY_STATUS {
            // The router did not retry after all (no retry left): the provider's own
            // status, and the attempt the upstream filter named next never happened.
            status = h.property_number(STATUS_KEY).unwrap_or(502);
            h.set_response_header(":status", &status.to_string());
            if positions.len() > 1 {
                positions.pop();
            }
        }
        if !h.reports_attempt_ends() {
            self.record_open(h, false);
        }
        self.req.asked = request::providers_at(&self.plan, &positions);
        // (A provider's own tried header never gets here: render's route removes it.)
        if self.req.config.tried_header
            && (self.req.asked.len() > 1 || self.hedge_lost_to.is_some())
        {
            self.req.whys = request::read_whys(h);
        }
        if let Some(step) = positions.last().and_then(|p| self.plan.get(*p)) {
            self.req.current = step.index;
            self.req.current_reset = step.reset_on_success;
        }
        if status >= 400 {
            self.record_no_attempt(h);
            if let Some(secs) = self.req.all_cooling_retry_after(h) {
                h.set_response_header("retry-after", &secs);
            }
        }
        h.set_response_header(PROVIDER_HEADER, self.req.provider_name());
        self.finish(h, status);
        Action::Continue
    }

    /// (A host that does not report an attempt's end.) The attempt left open, the
    /// provider's failure unless the client went away or the gateway answered itself
    /// (the upstream filter's rule). At the answer's headers (`at_end` false): the last
    /// attempt, which got none (refused, timed out, or held for a first event that
    /// never came). At the end of the request: the answer whose headers went on to the
    /// client and whose body never ended (reset or stalled: the upstream filter's
    /// `broken_stream` when the end is reported).
    fn record_open(&self, h: &mut impl Host, at_end: bool) {
        let Some(open) = unreported::peek(h).filter(|o| (o.waiting == Waiting::Body) == at_end)
        else {
            return;
        };
        unreported::close(h);
        if super::not_the_providers_doing(h) {
            return;
        }
        let Some(step) = self.plan.get(open.at.position) else {
            return;
        };
        let (config, telemetry) = (&self.req.config, &self.req.telemetry);
        if at_end {
            super::record_broken_stream(
                h,
                config,
                telemetry,
                step.index,
                "reset",
                self.last_data_ms,
            );
        } else {
            let now = h.now_ms();
            unreported::record(h, config, telemetry, step.index, open, now);
        }
    }

    /// An answer Envoy gave because it could not start an attempt at all.
    fn record_no_attempt(&self, h: &impl Host) {
        let details = h
            .property(&["response", "code_details"])
            .unwrap_or_default();
        let flags = h.property_u64(&["response", "flags"]).unwrap_or(0);
        if details == b"via_upstream" || flags & NO_ATTEMPT_FLAGS == 0 {
            return;
        }
        let why = if details.starts_with(b"cluster_not_found") {
            format!(
                "Envoy has no cluster {:?} (a typo in `cluster`? `llm-failover check` \
                 compares a configuration with an Envoy bootstrap)",
                self.req.config.providers[self.req.current].cluster
            )
        } else {
            format!(
                "Envoy could not start an attempt: {}",
                String::from_utf8_lossy(&details)
            )
        };
        self.req
            .record_failure(h, self.req.current, Failure::Unreachable, None, &why);
    }

    /// Counts the answer and, after a failover, notes for the access log which
    /// providers were asked and how long the failover took (its reason was set by
    /// the upstream filter of the first attempt).
    fn finish(&mut self, h: &mut impl Host, status: u16) {
        self.req.count_answer(h, status);
        if let Some(tried) = self.req.tried_value(status, self.hedge_lost_to) {
            h.set_response_header(TRIED_HEADER, &tried);
        }
        if self.req.asked.len() > 1 {
            self.req.log_asked(h);
            if let Some(at) = h.property_number::<u64>(FAILED_AT_KEY) {
                let spent = h.now_ms().saturating_sub(at);
                self.req
                    .telemetry
                    .histogram(h, metrics::FAILOVER_TIME_MS, spent);
            }
        }
    }

    /// The stream ended. A probe claim still held (the client went away mid-probe)
    /// is given back rather than block probing for `probeTimeout`; a hedge out for a
    /// client that left before any answer is not wanted either.
    pub fn on_log(&mut self, h: &mut impl Host) {
        self.req.release_claims(h);
        if !h.reports_attempt_ends() {
            self.record_open(h, true);
        }
        if self.req.config.failover.hedge_after_ms.is_some() {
            let ending = self.hedges.borrow_mut().end(self.context_id);
            if let Ending::RoutedWon { token, id, .. } = ending {
                Self::cancel_hedge(h, token, id);
            }
        }
    }
}
