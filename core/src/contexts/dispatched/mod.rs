//! The downstream filter in dispatch mode (Istio's `WasmPlugin`, older Envoys):
//! picks the first provider, rewrites the request for it, and on a failure sends
//! the same request on with a call (`Host::dispatch`), whose answer the client gets
//! whole.
//!
//! Every host call costs, so the normal path makes as few as it can: one health
//! record read when the preferred provider is healthy, headers read individually
//! unless a failover copy is needed, the body buffered only when it must be
//! rewritten, checked or kept.

use std::rc::Rc;

use crate::attempt::{self, Ended, LazyHealth, Verdict};
use crate::body;
use crate::errors::Class;
use crate::health::Failure;
use crate::host::{header_value, parse_number, Action, Call, HeaderList, Host};
use crate::metrics;
use crate::names::{PROVIDER_HEADER, REASON_KEY, TRIED_HEADER};
use crate::outcome::{self, Outcome};
use crate::plan::At;
use crate::reply::{self, Relayed};
use crate::retry_after;
use crate::rewrite;
use crate::select::{self, HealthView};

use super::request::{apply_edits, BodyRead, Phase, Request};

mod failover;

pub struct Dispatched {
    req: Request,
    /// Providers this request has had (or may not have: context length).
    tried: Vec<bool>,
    /// The client's headers as they arrived (kept only when failover is possible), to
    /// build each further attempt from the original, never from another provider's
    /// rewritten copy (so one provider's key cannot leak to the next).
    original_headers: HeaderList,
    original_path: Option<String>,
    /// The client's body as it arrived, kept for further attempts.
    original_body: Option<Vec<u8>>,
    pending_call: Option<u32>,
    /// Why the request failed over (the first failure's kind) and when it began.
    failover_reason: Option<&'static str>,
    failover_started_ms: u64,
    /// How often the provider now serving was asked again (`retries`).
    retried: u32,
}

impl Dispatched {
    pub fn new(req: Request) -> Self {
        Dispatched {
            req,
            tried: Vec::new(),
            original_headers: Vec::new(),
            original_path: None,
            original_body: None,
            pending_call: None,
            failover_reason: None,
            failover_started_ms: 0,
            retried: 0,
        }
    }

    pub fn request(&self) -> &Request {
        &self.req
    }

    pub fn request_mut(&mut self) -> &mut Request {
        &mut self.req
    }

    /// Request headers: the first provider, and the request rewritten for it.
    pub fn on_request_headers(&mut self, h: &mut impl Host, end_of_stream: bool) -> Action {
        // Never to a provider (control is router mode only: configured, it is refused).
        self.req.strip_control(h);
        let config = Rc::clone(&self.req.config);
        self.req.current = match self.choose(h) {
            Some(i) => i,
            None => {
                let clock = || h.now_ms();
                let mut view = LazyHealth::new(&config, &*h, &clock);
                let i = select::soonest(&config, &mut view);
                self.req.current_reset = view.record(i).after_success().is_some();
                log::info!(
                    "llm-failover: every provider is cooling down; trying {}, which recovers first",
                    config.providers[i].name
                );
                i
            }
        };
        self.req.phase = Phase::after_headers(
            end_of_stream,
            config.needs_json_body || config.can_fail_over,
        );
        let provider = &config.providers[self.req.current];
        // One call for all headers when a copy is kept for failover; otherwise only
        // the headers this request needs, one call each.
        let content_length: Option<u64>;
        if config.can_fail_over {
            self.original_headers = h.request_headers();
            content_length = parse_number(header_value(&self.original_headers, "content-length"));
            self.original_path = header_value(&self.original_headers, ":path")
                .and_then(|v| String::from_utf8(v.to_vec()).ok());
        } else {
            content_length = if self.req.phase == Phase::Buffering {
                parse_number(h.request_header("content-length").as_deref())
            } else {
                None
            };
            if provider.rewrites_path() {
                self.original_path = h
                    .request_header(":path")
                    .and_then(|v| String::from_utf8(v).ok());
            }
        }
        if self.req.phase == Phase::Buffering
            && content_length.is_some_and(|len| len > config.max_body_bytes)
        {
            self.req.reply_too_large(h);
            return Action::Pause;
        }
        apply_edits(h, &config, provider, self.original_path.as_deref());
        if self.req.phase != Phase::Sent && provider.model.is_some() {
            // The rewritten body has another length; without this the upstream would
            // get a truncated body or wait for bytes that never come.
            h.remove_request_header("content-length");
        }
        Action::Continue
    }

    pub fn on_request_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        let body = match self.req.read_body(h, size, end, false) {
            BodyRead::Done(action) => return action,
            BodyRead::Whole(body) => body,
        };
        let config = Rc::clone(&self.req.config);
        let provider = &config.providers[self.req.current];
        if let (Some(model), Some(slots)) = (&provider.model_json, &self.req.slots) {
            let (replaced, prefix) = body::model_edit(&body, slots, model);
            h.replace_request_body_prefix(replaced, &prefix);
        }
        if config.can_fail_over {
            self.original_body = Some(body);
        }
        self.req.phase = Phase::Sent;
        Action::Continue
    }

    /// The routed attempt's response headers. Dispatch mode cannot hold them to read
    /// the body (no `allow_on_headers_stop_iteration` in a `WasmPlugin`): the attempt
    /// is judged by its status and headers alone.
    pub fn on_response_headers(&mut self, h: &mut impl Host, status: u16) -> Action {
        if status < 400 {
            self.record_success(h, None);
        } else {
            let details = h
                .property(&["response", "code_details"])
                .and_then(|v| String::from_utf8(v).ok());
            let flags = h.property_u64(&["response", "flags"]).unwrap_or(0);
            match outcome::classify_routed(details.as_deref(), flags) {
                Outcome::Unreachable => {
                    let (failure, reason) = attempt::unreachable();
                    let why = format!("unreachable, Envoy answered {status}");
                    self.mark_failed(h, self.req.current, failure, None, &why);
                    if self.req.config.can_fail_over && self.try_next(h, reason) {
                        self.req.phase = Phase::FailingOver;
                        return Action::Pause;
                    }
                    self.pass_failed_answer(h, status);
                    return Action::Continue;
                }
                Outcome::LocalReply => {}
                Outcome::Answer => {
                    let headers = h.response_headers();
                    let config = Rc::clone(&self.req.config);
                    let now = h.now_ms();
                    let verdict =
                        attempt::judge(&config, self.req.current, status, &headers, b"", now);
                    if self.failed_answer(h, status, &verdict) {
                        self.req.phase = Phase::FailingOver;
                        return Action::Pause;
                    }
                    if verdict.failure.is_some() {
                        self.pass_failed_answer(h, status);
                        return Action::Continue;
                    }
                }
            }
        }
        h.set_response_header(PROVIDER_HEADER, self.req.provider_name());
        self.name_tried(h, status);
        self.finish(h, status);
        Action::Continue
    }

    /// The failed provider's body is held back while a call is out; the call's
    /// answer replaces it.
    pub fn on_response_body(&self) -> Action {
        if self.req.phase == Phase::FailingOver {
            return Action::Pause;
        }
        Action::Continue
    }

    /// The answer to call `token` came (whole): judged like the routed attempt's,
    /// and either sent on again or given to the client.
    pub fn on_call_response(&mut self, h: &mut impl Host, token: u32, body_size: usize) {
        if self.pending_call != Some(token) {
            return;
        }
        self.pending_call = None;
        let headers = h.call_response_headers();
        let status = reply::status_of(&headers);
        let body = h.call_response_body(body_size);
        let config = Rc::clone(&self.req.config);
        let failed = match (outcome::classify_callout(status, &body), status) {
            (Outcome::Unreachable, _) => {
                let (failure, reason) = attempt::unreachable();
                self.mark_failed(h, self.req.current, failure, None, "no response");
                if self.try_next(h, reason) {
                    return;
                }
                true
            }
            (_, Some(s)) if s >= 400 => {
                let now = h.now_ms();
                let verdict = attempt::judge(&config, self.req.current, s, &headers, &body, now);
                if self.failed_answer(h, s, &verdict) {
                    return;
                }
                verdict.failure.is_some()
            }
            _ => {
                self.record_success(h, Some(&headers));
                false
            }
        };
        self.finish(h, status.unwrap_or(503));
        let mut reply = Relayed::new(&headers, body, self.req.provider_name());
        // A dispatched call is a failover: more than one provider was asked.
        if let Some(tried) = self.req.tried_value(reply.status, None) {
            reply.set_header(TRIED_HEADER, &tried);
        }
        if failed {
            if let Some(secs) = self.req.all_cooling_retry_after(h) {
                reply.set_header("retry-after", &secs);
            }
        }
        h.send_response(reply.status, &reply.headers, &reply.body);
        self.req.phase = Phase::Replied;
    }

    /// The stream ended while this request still held a probe claim (the client
    /// went away mid-probe): give it back rather than block probing for
    /// `probeTimeout`.
    pub fn on_log(&mut self, h: &impl Host) {
        self.req.release_claims(h);
    }

    /// Counts the answer and, after a failover, notes for the access log which
    /// providers were asked, why and how long it took.
    fn finish(&mut self, h: &mut impl Host, status: u16) {
        self.req.count_answer(h, status);
        if let Some(reason) = self.failover_reason {
            self.req.log_asked(h);
            h.set_property_str(REASON_KEY, reason);
            let spent = h.now_ms().saturating_sub(self.failover_started_ms);
            self.req
                .telemetry
                .histogram(h, metrics::FAILOVER_TIME_MS, spent);
        }
    }

    /// Picks the provider to try next (the first one when nothing was tried yet): a
    /// healthy one, or a half-open one whose probe this request manages to claim.
    /// `None` when nothing is available.
    fn choose(&mut self, h: &impl Host) -> Option<usize> {
        let config = Rc::clone(&self.req.config);
        let clock = || h.now_ms();
        let mut view = LazyHealth::new(&config, h, &clock);
        let step = attempt::choose(&config, h, &mut view, &self.tried, self.req.ticket)?;
        if step.claim.is_some() {
            log::info!(
                "llm-failover: probing provider {} after its cooldown",
                config.providers[step.index].name
            );
        }
        self.req.current_reset = step.reset_on_success;
        if let Some(claim) = step.claim {
            self.req.hold_claim(step.index, claim);
        }
        Some(step.index)
    }

    /// Records a good answer: resets the provider's breaker when it had anything to
    /// reset, and with `proactive` cools it down when the answer says its quota is spent.
    fn record_success(&mut self, h: &impl Host, headers: Option<&retry_after::Headers>) {
        let config = Rc::clone(&self.req.config);
        if config.failover.proactive {
            let owned;
            let headers = match headers {
                Some(list) => list,
                None => {
                    owned = h.response_headers();
                    &owned
                }
            };
            if let Some(delay) = retry_after::quota_spent(headers, h.now_ms()) {
                let current = self.req.current;
                self.mark_failed(h, current, Failure::QuotaSpent, delay, "quota spent");
                return;
            }
        }
        attempt::record_success(&config, h, self.req.current, self.req.current_reset);
        self.req.drop_claim(self.req.current);
    }

    /// Records a failure of provider `index` and marks it tried.
    fn mark_failed(
        &mut self,
        h: &impl Host,
        index: usize,
        failure: Failure,
        evidence_ms: Option<u64>,
        why: &str,
    ) {
        self.mark_tried(index);
        self.req.drop_claim(index);
        self.req.record_failure(h, index, failure, evidence_ms, why);
    }

    fn mark_tried(&mut self, index: usize) {
        if self.tried.is_empty() {
            self.tried = vec![false; self.req.config.providers.len()];
        }
        if let Some(t) = self.tried.get_mut(index) {
            *t = true;
        }
    }

    /// Lets the routed attempt's failed answer (still in Envoy's response headers) go
    /// to the client: nobody is left to ask.
    fn pass_failed_answer(&mut self, h: &mut impl Host, status: u16) {
        if let Some(secs) = self.req.all_cooling_retry_after(h) {
            h.set_response_header("retry-after", &secs);
        }
        h.set_response_header(PROVIDER_HEADER, self.req.provider_name());
        self.name_tried(h, status);
        self.finish(h, status);
    }

    /// The tried header on the routed attempt's answer: set after a failover, and a
    /// provider's own header of that name removed (only the gateway says what it tried).
    fn name_tried(&self, h: &mut impl Host, status: u16) {
        match self.req.tried_value(status, None) {
            Some(tried) => h.set_response_header(TRIED_HEADER, &tried),
            None if self.req.config.tried_header => h.remove_response_header(TRIED_HEADER),
            None => {}
        }
    }
}
