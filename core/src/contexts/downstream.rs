//! The per-request (downstream) filter, by what it serves: the health view, a
//! request in router mode (`routed.rs`), or in dispatch mode (`dispatched.rs`).
//! Which one is known when the request headers arrive.

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::{Config, Mode};
use crate::hedge::Hedges;
use crate::host::{parse_number, Action, Host};

use super::dispatched::Dispatched;
use super::health_view;
use super::hedging::Hedger;
use super::request::{Phase, Request};
use super::routed::Routed;
use super::telemetry::Telemetry;

pub enum Downstream {
    Routed(Routed),
    Dispatched(Dispatched),
    /// The health view was served; or a configuration without providers (a
    /// health-view-only one): everything else passes untouched.
    Passing,
}

impl Downstream {
    pub fn new(
        config: Rc<Config>,
        telemetry: Rc<Telemetry>,
        ticket: u64,
        context_id: u32,
        hedges: Rc<RefCell<Hedges>>,
        hedger: Option<Rc<Hedger>>,
    ) -> Self {
        if config.providers.is_empty() && config.health_path.is_none() {
            return Downstream::Passing;
        }
        let mode = config.failover.mode;
        let req = Request::new(config, telemetry, ticket);
        match mode {
            Mode::Router => Downstream::Routed(Routed::new(req, context_id, hedges, hedger)),
            Mode::Dispatch => Downstream::Dispatched(Dispatched::new(req)),
        }
    }

    /// The request in either mode; `None` when everything passes.
    fn request(&self) -> Option<&Request> {
        match self {
            Downstream::Routed(r) => Some(r.request()),
            Downstream::Dispatched(d) => Some(d.request()),
            Downstream::Passing => None,
        }
    }

    pub fn on_request_headers(&mut self, h: &mut impl Host, end_of_stream: bool) -> Action {
        let Some(config) = self.request().map(|r| &r.config) else {
            return Action::Continue;
        };
        if config.health_path.is_some()
            && health_view::asked_for(config, h.request_header(":path").as_deref())
        {
            health_view::serve(h);
            *self = Downstream::Passing;
            return Action::Pause;
        }
        if config.providers.is_empty() {
            *self = Downstream::Passing;
            return Action::Continue;
        }
        let refused = match self {
            Downstream::Routed(r) => r.request_mut().screen_control(h),
            Downstream::Dispatched(d) => d.request_mut().screen_control(h),
            Downstream::Passing => false,
        };
        if refused {
            return Action::Pause;
        }
        match self {
            Downstream::Routed(r) => r.on_request_headers(h, end_of_stream),
            Downstream::Dispatched(d) => d.on_request_headers(h, end_of_stream),
            Downstream::Passing => Action::Continue,
        }
    }

    pub fn on_request_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        match self {
            Downstream::Routed(r) => r.on_request_body(h, size, end),
            Downstream::Dispatched(d) => d.on_request_body(h, size, end),
            Downstream::Passing => Action::Continue,
        }
    }

    pub fn on_response_headers(&mut self, h: &mut impl Host) -> Action {
        if self.request().is_none_or(|r| r.phase == Phase::Replied) {
            return Action::Continue;
        }
        let Some(status) = parse_number::<u16>(h.response_header(":status").as_deref()) else {
            return Action::Continue;
        };
        match self {
            Downstream::Routed(r) => r.on_response_headers(h, status),
            Downstream::Dispatched(d) => d.on_response_headers(h, status),
            Downstream::Passing => Action::Continue,
        }
    }

    pub fn on_response_body(&mut self, h: &impl Host) -> Action {
        match self {
            Downstream::Routed(r) => r.on_response_body(h),
            Downstream::Dispatched(d) => d.on_response_body(),
            Downstream::Passing => Action::Continue,
        }
    }

    /// The answer to a call this request sent: a failover (dispatch mode), or its
    /// hedge on a host that wakes each request itself (`Host::wake_at`).
    pub fn on_call_response(&mut self, h: &mut impl Host, token: u32, body_size: usize) {
        match self {
            Downstream::Routed(r) => r.on_call_response(h, token, body_size),
            Downstream::Dispatched(d) => d.on_call_response(h, token, body_size),
            Downstream::Passing => {}
        }
    }

    /// The time this request asked to be woken at came (`Host::wake_at`).
    pub fn on_wake(&mut self, h: &mut impl Host) {
        if let Downstream::Routed(r) = self {
            r.on_wake(h);
        }
    }

    pub fn on_log(&mut self, h: &mut impl Host) {
        match self {
            Downstream::Routed(r) => r.on_log(h),
            Downstream::Dispatched(d) => d.on_log(h),
            Downstream::Passing => {}
        }
    }
}
