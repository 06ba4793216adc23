//! What the downstream filter does the same in both modes: the request's phase,
//! the body check, the filter's own error replies, the count of the answer, and a
//! provider's failure recorded. `routed.rs` and `dispatched.rs` build on it.

use std::rc::Rc;

use crate::attempt::{self, LazyHealth};
use crate::body::{self, ModelSlots};
use crate::config::{Config, Mode, Provider};
use crate::control::{self, Screened, Wish};
use crate::health::Failure;
use crate::host::{Action, Host};
use crate::metrics;
use crate::names::{
    ATTEMPTS_KEY, CONTROL_HEADERS, CONTROL_KEY, PATH_KEY, REFUSED_KEY, ROUTER_REQUEST_HEADERS,
    TRIED_KEY, WHYS_KEY,
};
use crate::plan::{self, Plan};
use crate::reply::error_body;
use crate::rewrite::{self, Edit};
use crate::select;

use super::telemetry::Telemetry;

/// Where a request stands in the downstream filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
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
    /// The filter answered the client itself (400, 413, or a call's answer).
    Replied,
}

impl Phase {
    /// The phase a request enters once its headers are handled.
    pub fn after_headers(end_of_stream: bool, buffer: bool) -> Phase {
        match (end_of_stream, buffer) {
            (true, _) => Phase::Sent,
            (false, true) => Phase::Buffering,
            (false, false) => Phase::Streaming,
        }
    }
}

/// What reading a request body chunk came to.
pub enum BodyRead {
    /// Nothing more to do with this chunk: tell Envoy this.
    Done(Action),
    /// The whole body, checked when it had to be (its model slots, if read).
    Whole(Vec<u8>),
}

/// One request in the downstream filter, whatever the mode.
pub struct Request {
    pub config: Rc<Config>,
    pub telemetry: Rc<Telemetry>,
    /// This request's turn in the weight rotation.
    pub ticket: u64,
    /// The provider now serving the request.
    pub current: usize,
    /// Whether a success of `current` must reset its record (see `plan::Step`).
    pub current_reset: bool,
    pub phase: Phase,
    pub slots: Option<ModelSlots>,
    /// Providers asked, in order, once the request failed over (for the access log;
    /// left empty on the normal path so it costs nothing there).
    pub asked: Vec<usize>,
    /// The probe claims this request holds (provider, claim's end): given back if it
    /// ends without using them, so probing is not blocked for `probeTimeout`.
    claims: Vec<(usize, u64)>,
    /// Why each provider asked before the last failed (error classes, the order of
    /// `asked`), for the tried header.
    pub whys: Vec<String>,
    /// What a trusted request asked for (`control.rs`); the default otherwise.
    pub wish: Wish,
    /// The control headers (and a client's router headers) on the request, to be
    /// removed before it goes on (`strip_control`).
    strip: Vec<&'static str>,
}

impl Request {
    pub fn new(config: Rc<Config>, telemetry: Rc<Telemetry>, ticket: u64) -> Self {
        Request {
            config,
            telemetry,
            ticket,
            current: 0,
            current_reset: false,
            phase: Phase::Start,
            slots: None,
            asked: Vec::new(),
            claims: Vec::new(),
            wish: Wish::default(),
            strip: Vec::new(),
            whys: Vec::new(),
        }
    }

    /// Reads the request's control headers (README "Per-request control") and
    /// judges them: a trusted request's wish is kept in `wish`, and the access log
    /// notes what became of them. A trusted request with a bad value is refused
    /// here (400, true). The headers stay until `strip_control`.
    pub fn screen_control(&mut self, h: &mut impl Host) -> bool {
        // One host call for every header, whatever the request carries.
        let all = h.request_headers();
        let mut values: [Option<&[u8]>; 5] = [None; 5];
        for (name, value) in &all {
            if let Some(i) = CONTROL_HEADERS.iter().position(|c| c == name) {
                if let Some(slot) = values.get_mut(i) {
                    *slot = Some(value.as_slice());
                }
                self.strip.push(CONTROL_HEADERS[i]);
            } else if let Some(known) = ROUTER_REQUEST_HEADERS.iter().find(|r| *r == name) {
                self.strip.push(known);
            }
        }
        let screened = control::screen(&self.config, &values);
        if let Some(line) = screened.log() {
            h.set_property_str(CONTROL_KEY, &line);
        }
        match screened {
            Screened::Absent | Screened::Ignored(_) => false,
            Screened::Applied(wish, _) => {
                self.wish = wish;
                false
            }
            Screened::Refused(why) => {
                self.reply_error(
                    h,
                    400,
                    &why,
                    "invalid_request_error",
                    "invalid_control_header",
                );
                true
            }
        }
    }

    /// Removes the request's control headers and a client's headers that steer Envoy's
    /// router (`ROUTER_REQUEST_HEADERS`): none of them reaches a provider or the router. (Router mode calls this after
    /// naming the first cluster: a header change makes Envoy pick the route again.)
    pub fn strip_control(&mut self, h: &mut impl Host) {
        for name in std::mem::take(&mut self.strip) {
            h.remove_request_header(name);
        }
    }

    pub fn hold_claim(&mut self, index: usize, claim: u64) {
        self.claims.push((index, claim));
    }

    /// Provider `index`'s outcome was recorded: its claim is spent.
    pub fn drop_claim(&mut self, index: usize) {
        self.claims.retain(|(i, _)| *i != index);
    }

    /// Gives back the claims not used (a claim whose record moved on is not
    /// touched, see `HealthRecord::release_probe`).
    pub fn release_claims(&mut self, h: &impl Host) {
        for (index, claim) in std::mem::take(&mut self.claims) {
            attempt::release(&self.config, h, index, claim);
        }
    }

    pub fn provider_name(&self) -> &str {
        self.config
            .providers
            .get(self.current)
            .map(|p| p.name.as_str())
            .unwrap_or("")
    }

    /// Counts the answer the client gets, by the provider that gave it. The provider
    /// itself reaches the access log as the `x-llm-provider` response header: no
    /// extra host call on the normal path.
    pub fn count_answer(&self, h: &impl Host, status: u16) {
        self.telemetry.count_request(h, self.current, status, || {
            metrics::requests(self.provider_name(), status)
        });
    }

    /// The providers asked, in order, and how many, for the access log.
    pub fn log_asked(&self, h: &mut impl Host) {
        let asked: Vec<&str> = self
            .asked
            .iter()
            .filter_map(|i| self.config.providers.get(*i).map(|p| p.name.as_str()))
            .collect();
        h.set_property_str(TRIED_KEY, &asked.join(","));
        h.set_property_str(ATTEMPTS_KEY, &asked.len().to_string());
    }

    /// The tried header's value (`triedHeader`, on by default) after more than one
    /// attempt: see [`tried_value`]. `extra` is a hedge that lost the race, listed
    /// before the provider that answered.
    pub fn tried_value(&self, status: u16, extra: Option<usize>) -> Option<String> {
        if !self.config.tried_header {
            return None;
        }
        let (mut asked, mut whys) = (self.asked.clone(), self.whys.clone());
        if let Some(hedge) = extra {
            add_hedge(&mut asked, &mut whys, self.current, hedge, false);
        }
        tried_value(&self.config, &asked, &whys, status)
    }

    /// Reads a request body chunk while the body is buffered here. The body is
    /// checked when it must be JSON (a model rewrite) or read to tell a stream;
    /// `keeps` says the whole body is kept (for a hedge or a failover), so it may
    /// not be passed on unread when too large.
    pub fn read_body(
        &mut self,
        h: &mut impl Host,
        size: usize,
        end: bool,
        keeps: bool,
    ) -> BodyRead {
        match self.phase {
            Phase::Replied => return BodyRead::Done(Action::Pause),
            Phase::Buffering => {}
            _ => return BodyRead::Done(Action::Continue),
        }
        let config = Rc::clone(&self.config);
        if size as u64 > config.max_body_bytes {
            if config.needs_json_body || keeps {
                self.reply_too_large(h);
                return BodyRead::Done(Action::Pause);
            }
            // Read only to tell a stream (no model to rewrite, nothing kept), and too
            // large to read: it goes on unread, as a non-streamed request, with the
            // held headers.
            h.remove_request_header(crate::names::STREAMED_HEADER);
            self.phase = Phase::Streaming;
            return BodyRead::Done(Action::Continue);
        }
        if !end {
            // Buffer until the whole body is here: it is checked, rewritten and kept whole.
            return BodyRead::Done(Action::Pause);
        }
        let body = h.request_body(size).unwrap_or_default();
        if config.needs_json_body || config.failover.routes_streams_apart() {
            match body::inspect(&body) {
                Ok(slots) => self.slots = Some(slots),
                // Only a model rewrite needs JSON; without one the body goes on as it is.
                Err(_) if !config.needs_json_body => {}
                Err(e) => {
                    self.refuse_body(h, &body, &e.to_string());
                    return BodyRead::Done(Action::Pause);
                }
            }
        }
        BodyRead::Whole(body)
    }

    /// A body that must be JSON and is not: 415 for a compressed one (told by its
    /// first bytes: the request headers cannot be read here, the SDK panics on the
    /// status Envoy gives once they went on), 400 otherwise.
    fn refuse_body(&mut self, h: &mut impl Host, body: &[u8], error: &str) {
        match body::compression_of(body) {
            Some(kind) => self.reply_error(
                h,
                415,
                &format!(
                    "the request body is {kind}-compressed; compressed request \
                     bodies are not supported: send the JSON uncompressed"
                ),
                "invalid_request_error",
                "unsupported_content_encoding",
            ),
            None => self.reply_error(h, 400, error, "invalid_request_error", "invalid_json"),
        }
    }

    /// The filter's own OpenAI-style error reply; the request's probe claims go back.
    /// In router mode the router may have started the attempt already; its upstream
    /// filter must not blame the provider for the reset this reply causes.
    pub fn reply_error(
        &mut self,
        h: &mut impl Host,
        status: u16,
        message: &str,
        kind: &str,
        code: &str,
    ) {
        self.release_claims(h);
        if self.config.failover.mode == Mode::Router {
            h.set_property_str(REFUSED_KEY, "1");
        }
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        h.send_response(status, &headers, error_body(message, kind, code).as_bytes());
        self.phase = Phase::Replied;
    }

    pub fn reply_too_large(&mut self, h: &mut impl Host) {
        let message = format!(
            "request body is larger than the gateway's limit of {} bytes",
            self.config.max_body_bytes
        );
        self.reply_error(
            h,
            413,
            &message,
            "invalid_request_error",
            "request_too_large",
        );
    }

    /// Records a failure of provider `index`: counts it or opens its cooldown (see
    /// `health.rs`). `evidence_ms` is the delay the provider asked for, if it said.
    pub fn record_failure(
        &self,
        h: &impl Host,
        index: usize,
        failure: Failure,
        evidence_ms: Option<u64>,
        why: &str,
    ) {
        let _ = super::record_failure(
            h,
            &self.config,
            &self.telemetry,
            index,
            failure,
            evidence_ms,
            why,
        );
    }

    /// `Retry-After` for a failure the client gets while every provider cools down.
    pub fn all_cooling_retry_after(&self, h: &impl Host) -> Option<String> {
        let clock = || h.now_ms();
        let mut view = LazyHealth::new(&self.config, h, &clock);
        select::retry_after_secs(&self.config, &mut view).map(|s| s.to_string())
    }
}

/// Sends the live request to `provider` (`rewrite::edits_for`); in router mode
/// without the routing header, since the router routes by the cluster the filter
/// names.
pub fn apply_edits(
    h: &mut impl Host,
    config: &Config,
    provider: &Provider,
    original_path: Option<&str>,
) {
    let router = config.failover.mode == Mode::Router;
    for edit in rewrite::edits_for(provider, &config.cluster_header, original_path) {
        match edit {
            Edit::Set(name, _) if router && name == config.cluster_header => {}
            Edit::Set(name, value) => h.set_request_header(name, value.as_bytes()),
            Edit::Remove(name) => h.remove_request_header(name),
        }
    }
}

/// The tried header's value after more than one attempt (`None` otherwise): each
/// provider asked, in order, with why it was left (`whys[k]`, an error class, or
/// `slow` for one another provider answered before), and the last with the status it
/// answered (`primary=rate_limited, fallback=200`). Provider names and error classes
/// only, never an error body or a header of the provider's.
pub fn tried_value(
    config: &Config,
    asked: &[usize],
    whys: &[String],
    status: u16,
) -> Option<String> {
    if asked.len() < 2 {
        return None;
    }
    let last = asked.len() - 1;
    let parts: Vec<String> = asked
        .iter()
        .enumerate()
        .filter_map(|(k, i)| {
            let name = &config.providers.get(*i)?.name;
            Some(if k == last {
                format!("{name}={status}")
            } else {
                let why = whys.get(k).map_or("failed", String::as_str);
                format!("{name}={why}")
            })
        })
        .collect();
    Some(parts.join(", "))
}

/// Plan positions as the providers at them.
pub fn providers_at(plan: &Plan, positions: &[usize]) -> Vec<usize> {
    positions
        .iter()
        .filter_map(|p| plan.get(*p).map(|step| step.index))
        .collect()
}

/// Where the upstream filters moved a routed request (`PATH_KEY`, plan positions) as
/// providers, and, when `whys`, why each move was made (`WHYS_KEY`).
pub fn routed_path(h: &impl Host, plan: &Plan, whys: bool) -> (Vec<usize>, Vec<String>) {
    let positions = plan::path(h.property(&[PATH_KEY]).as_deref());
    let whys = if whys { read_whys(h) } else { Vec::new() };
    (providers_at(plan, &positions), whys)
}

/// Adds to a routed request's providers asked (and why each was left) the hedge that
/// raced its last attempt (`routed`'s, when nothing moved it). The one of the two that
/// had not answered when the other did is `slow`: the routed one when the hedge `won`
/// (the hedge is then last), else the hedge (listed before the routed one).
pub fn add_hedge(
    asked: &mut Vec<usize>,
    whys: &mut Vec<String>,
    routed: usize,
    hedge: usize,
    won: bool,
) {
    if asked.is_empty() {
        asked.push(routed);
    }
    let last = asked.len() - 1;
    whys.truncate(last);
    whys.push("slow".to_string());
    if won {
        asked.push(hedge);
    } else {
        asked.insert(last, hedge);
    }
}

/// Why each move of a routed request was made (`WHYS_KEY`, written by the upstream
/// filters along with `PATH_KEY`).
pub fn read_whys(h: &impl Host) -> Vec<String> {
    h.property(&[WHYS_KEY])
        .map(|v| {
            String::from_utf8_lossy(&v)
                .split(',')
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
