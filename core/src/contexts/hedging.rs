//! Hedging's host side (what it decides is `hedge.rs`): the root context of each
//! worker sends due hedges from its tick and answers the client with a hedge that
//! won (or with the answer a held retry waits for, see `HEDGED_TO_KEY`); the cancel
//! list in shared data tells a losing hedge's upstream filter to reset it.
//!
//! A hedge is a `dispatch_http_call` to the provider's cluster, so it passes that
//! cluster's upstream filter, which rewrites it like any attempt and records its
//! outcome. That filter must run in a VM of its own: Envoy starts the call's upstream
//! filter inside the dispatch call, and the SDK cannot take a new context while the
//! root's tick is running in the same VM (it would panic). `render` gives the upstream
//! filter its own VM (same `vm_id`, so the same shared data).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::attempt;
use crate::config::Config;
use crate::hedge::{self, Answered, Due, Hedges, Live};
use crate::host::{Call, Host};
use crate::metrics;
use crate::names::{
    CANCEL_KEY, HEDGED_TO_KEY, HEDGE_KEY, HELD_KEY, PLAN_KEY, REFUSED_KEY, SEQUENCE_KEY,
    TRIED_HEADER,
};
use crate::plan::Plan;
use crate::reply::{self, Relayed};
use crate::store;

use super::request;
use super::telemetry::Telemetry;

thread_local! {
    /// Set when this VM also runs the upstream filter (a hand-wired Envoy that gives
    /// both filters one VM): hedges are then not sent (see the module docs).
    static UPSTREAM_IN_THIS_VM: Cell<bool> = const { Cell::new(false) };
}

/// The upstream filter's root calls this when it is configured.
pub fn note_upstream_root() {
    UPSTREAM_IN_THIS_VM.with(|c| c.set(true));
}

/// Creates the shared-data keys hedging uses, so their updates carry a CAS token.
pub fn prepare_store(h: &impl Host) {
    for (key, initial) in [(SEQUENCE_KEY, &b"0"[..]), (CANCEL_KEY, &b""[..])] {
        if let Err(e) = store::ensure_value(h, key, initial) {
            log::warn!("llm-failover: initialising {key}: {e}");
        }
    }
}

/// The downstream root's side: sends hedges, delivers the winners.
pub struct Hedger {
    config: Rc<Config>,
    hedges: Rc<RefCell<Hedges>>,
    telemetry: Rc<Telemetry>,
    /// The one-VM wiring was reported already.
    reported: Cell<bool>,
}

impl Hedger {
    pub fn new(config: Rc<Config>, hedges: Rc<RefCell<Hedges>>, telemetry: Rc<Telemetry>) -> Self {
        Self {
            config,
            hedges,
            telemetry,
            reported: Cell::new(false),
        }
    }

    /// Sends the hedges that are due.
    pub fn tick(&self, h: &mut impl Host, now: u64) {
        let due = self.hedges.borrow().due(now);
        if due.is_empty() {
            return;
        }
        if UPSTREAM_IN_THIS_VM.with(Cell::get) {
            if !self.reported.replace(true) {
                log::error!(
                    "llm-failover: hedgeAfter needs the upstream filter in a VM of its own \
                     (give its vm_config a `configuration` of its own, as `llm-failover render` \
                     does); no hedges are sent"
                );
            }
            for d in due {
                self.hedges.borrow_mut().give_up(d.context);
            }
            return;
        }
        for d in due {
            self.fire(h, d, now);
        }
    }

    /// Sends request `context`'s hedge if it is due, from that request's own hook:
    /// a host without a root tick wakes each request itself (`Host::wake_at`). A
    /// wake that comes a hair early asks again.
    pub fn wake(&self, h: &mut impl Host, context: u32, now: u64) {
        let due = self.hedges.borrow().due_for(context, now);
        match due {
            Some(due) => self.fire(h, due, now),
            None => {
                let until = self.hedges.borrow().waiting_until(context);
                if let Some(at) = until {
                    h.wake_at(at);
                }
            }
        }
    }

    fn fire(&self, h: &mut impl Host, due: Due, now: u64) {
        let request = self.hedges.borrow_mut().take_request(due.context);
        if !h.act_for(due.context) {
            // The request is gone.
            self.hedges.borrow_mut().give_up(due.context);
            return;
        }
        let Some((from, to, request)) = self.target(h, &due, request, now) else {
            // Every provider the router has not reached yet is cooling (or there is
            // none): the routed attempt goes on alone.
            self.hedges.borrow_mut().give_up(due.context);
            return;
        };
        let Some((id, headers)) = self.mark(h, &request, to) else {
            self.hedges.borrow_mut().give_up(due.context);
            return;
        };
        let config = &self.config;
        let provider = &config.providers[to];
        let call = Call {
            cluster: &provider.cluster,
            headers: &headers,
            body: request.body.as_deref(),
            timeout_ms: config.failover.attempt_timeout_ms,
        };
        match h.dispatch(&call) {
            Ok(token) => {
                log::info!(
                    "llm-failover: no response headers from {} within hedgeAfter; asking {} too",
                    config.providers[from].name,
                    provider.name
                );
                self.hedges
                    .borrow_mut()
                    .asked(due.context, token, id, from, to);
                // For a retry the router may still send to the same provider.
                if h.act_for(due.context) {
                    h.set_property_str(HEDGED_TO_KEY, &hedge::mark(id, to));
                }
            }
            Err(s) => {
                log::warn!(
                    "llm-failover: cannot send a hedge to cluster {}: {s}",
                    provider.cluster
                );
                self.hedges.borrow_mut().give_up(due.context);
            }
        }
    }

    /// Where the request stands (its upstream filters may have moved it past the
    /// first provider) and the provider its hedge goes to: the attempt's provider,
    /// the hedge's, and the request to send.
    fn target(
        &self,
        h: &impl Host,
        due: &Due,
        request: Option<hedge::Request>,
        now: u64,
    ) -> Option<(usize, usize, hedge::Request)> {
        let config = &self.config;
        let state = |i: usize| store::read_health(h, &config.providers[i].health_key).state(now);
        let (from, candidates) = hedge::split(&due.plan, super::attempt_under_way(h).attempts())?;
        let to = hedge::target(candidates, state)?;
        Some((from, to, request?))
    }

    /// A new hedge id (shared data's sequence) and the hedge's headers, marked with
    /// it; `None` when either cannot be had.
    fn mark(
        &self,
        h: &impl Host,
        request: &hedge::Request,
        to: usize,
    ) -> Option<(u64, Vec<(String, String)>)> {
        let written = store::update_value(h, SEQUENCE_KEY, |last| {
            hedge::next_id(last).to_string().into_bytes()
        });
        // What was written is the id handed out.
        let id = match written.map(|v| hedge::parse_id(&v)) {
            Ok(Some(id)) => id,
            Ok(None) => {
                log::warn!("llm-failover: unreadable hedge id; not hedging");
                return None;
            }
            Err(e) => {
                log::warn!("llm-failover: no hedge id ({e}); not hedging");
                return None;
            }
        };
        let drop = self.config.internal_request_headers();
        let headers: Result<Vec<(String, String)>, _> =
            hedge::headers(&request.headers, &drop, id, to)
                .into_iter()
                .map(|(n, v)| String::from_utf8(v).map(|v| (n, v)))
                .collect();
        match headers {
            Ok(headers) => Some((id, headers)),
            Err(_) => {
                // The call API takes text headers; a byte-exact copy cannot be sent.
                log::info!("llm-failover: a request header is not UTF-8; not hedging it");
                None
            }
        }
    }

    /// The answer to call `token` came (whole). A good one wins while its request
    /// still waits: the client gets it, which ends the routed attempt. The status
    /// the client was answered with, if it was.
    pub fn answer(&self, h: &mut impl Host, token: u32, body_size: usize) -> Option<u16> {
        let answered = self.hedges.borrow_mut().answered(token)?;
        self.deliver(h, answered, body_size)
    }

    /// [`Hedger::answer`] from request `context`'s own filter, on a host whose call
    /// tokens are per request (native: Envoy numbers each stream's calls).
    pub fn answer_own(
        &self,
        h: &mut impl Host,
        context: u32,
        token: u32,
        body_size: usize,
    ) -> Option<u16> {
        let answered = self.hedges.borrow_mut().answered_for(context, token)?;
        self.deliver(h, answered, body_size)
    }

    fn deliver(&self, h: &mut impl Host, answered: Answered, body_size: usize) -> Option<u16> {
        let Answered { context, from, to } = answered;
        // The call's answer is the root's to read; the reply is the request's.
        let headers = h.call_response_headers();
        let status = reply::status_of(&headers);
        let body = h.call_response_body(body_size);
        let config = &self.config;
        let (from_name, to_name) = (&config.providers[from].name, &config.providers[to].name);
        if !h.act_for(context) {
            self.hedges.borrow_mut().give_up(context);
            return None;
        }
        if status.is_none() && !h.reports_attempt_ends() {
            // The hedge ended without an answer; its upstream filter, destroyed
            // without its end on such a host, could not record it.
            let (failure, _) = attempt::unreachable();
            let why = "the hedge got no response: refused, reset or timed out";
            let _ = super::record_failure(&*h, config, &self.telemetry, to, failure, None, why);
        }
        let good = status.is_some_and(|s| (200..300).contains(&s));
        // A routed retry to this same provider waits for this answer (HEDGED_TO_KEY):
        // it is the answer that retry would have got, so the client gets it.
        let held = h.property(&[HELD_KEY]).is_some();
        if !good && !held {
            // The hedge's upstream filter recorded the provider's failure; the routed
            // attempt goes on alone, and a later retry to this provider need not wait.
            self.hedges.borrow_mut().give_up(context);
            h.set_property_str(HEDGE_KEY, &format!("{to_name}:failed"));
            h.set_property_str(HEDGED_TO_KEY, "");
            let lost = metrics::hedges(from_name, to_name, from_name);
            self.telemetry.count(h, lost);
            return None;
        }
        self.hedges.borrow_mut().won(context, from, to);
        // The routed attempt is reset by this reply; its upstream filter must not
        // blame that provider for it.
        h.set_property_str(REFUSED_KEY, "hedge");
        let how = if good { "won" } else { "failed" };
        h.set_property_str(HEDGE_KEY, &format!("{to_name}:{how}"));
        let mut reply = Relayed::new(&headers, body, to_name);
        if config.tried_header {
            // In the reply itself: natively Envoy runs no encoder hook of the module
            // after its own reply. The routed attempts' path (the request's filter
            // state), the provider the hedge overtook, then the hedge's.
            let plan = h
                .property(&[PLAN_KEY])
                .and_then(|p| Plan::decode(&p, config.providers.len()));
            let (mut asked, mut whys) = match &plan {
                Some(plan) => request::routed_path(&*h, plan, true),
                None => (Vec::new(), Vec::new()),
            };
            request::add_hedge(&mut asked, &mut whys, from, to, true);
            if let Some(tried) = request::tried_value(config, &asked, &whys, reply.status) {
                reply.set_header(TRIED_HEADER, &tried);
            }
        }
        h.send_response(reply.status, &reply.headers, &reply.body);
        Some(reply.status)
    }
}

/// The routed attempt won: hedge `id` goes on the cancel list.
pub fn cancel(h: &impl Host, id: u64) {
    if let Err(e) = store::update_value(h, CANCEL_KEY, |list| hedge::with_id(list, id)) {
        log::warn!("llm-failover: cannot cancel hedge {id}: {e}; it runs to its end");
    }
}

/// The upstream root's tick: resets the hedges the cancel list names.
pub fn poll_cancels(h: &mut impl Host, live: &RefCell<Live>) {
    if !live.borrow().has_hedges_out() {
        return;
    }
    let list = match h.get(CANCEL_KEY) {
        Ok((Some(list), _)) => list,
        _ => return,
    };
    // Not borrowed across the resets: a reset may run the context's on_done at once.
    let contexts = live.borrow_mut().to_cancel(&list);
    for context in contexts {
        if h.act_for(context) {
            h.reset_stream();
        }
    }
}
