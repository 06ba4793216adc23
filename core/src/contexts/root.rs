//! The root context: loads and validates the plugin configuration once per VM,
//! hands it to every request's filter, and on its tick refreshes the health gauges,
//! sends hedges and background probes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::attempt;
use crate::config::Config;
use crate::health::State;
use crate::hedge::{self, Hedges, Live};
use crate::host::{Action, Call, Host};
use crate::metrics;
use crate::names::UPSTREAM_ROOT_ID;
use crate::probe;
use crate::registry;
use crate::store;

use super::downstream::Downstream;
use super::hedging::{self, Hedger};
use super::telemetry::Telemetry;
use super::upstream::AttemptFilter;

/// The filter a new request (or attempt) gets.
pub enum HttpFilter {
    /// The per-request filter on the listener.
    Downstream(Downstream),
    /// The filter on a provider cluster, one per attempt.
    Attempt(AttemptFilter),
}

/// Each callback of the stream, passed to the filter that has it; a callback a
/// filter does not use does what the host's default does.
impl HttpFilter {
    pub fn on_request_headers(&mut self, h: &mut impl Host, end: bool) -> Action {
        match self {
            HttpFilter::Downstream(d) => d.on_request_headers(h, end),
            HttpFilter::Attempt(a) => a.on_request_headers(h, end),
        }
    }

    pub fn on_request_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        match self {
            HttpFilter::Downstream(d) => d.on_request_body(h, size, end),
            HttpFilter::Attempt(a) => a.on_request_body(h, size, end),
        }
    }

    pub fn on_response_headers(&mut self, h: &mut impl Host, end: bool) -> Action {
        match self {
            HttpFilter::Downstream(d) => d.on_response_headers(h),
            HttpFilter::Attempt(a) => a.on_response_headers(h, end),
        }
    }

    pub fn on_response_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        match self {
            HttpFilter::Downstream(d) => d.on_response_body(h),
            HttpFilter::Attempt(a) => a.on_response_body(h, size, end),
        }
    }

    pub fn on_response_trailers(&mut self, h: &mut impl Host) -> Action {
        match self {
            HttpFilter::Downstream(_) => Action::Continue,
            HttpFilter::Attempt(a) => a.on_response_trailers(h),
        }
    }

    /// The answer to a call this request sent (dispatch mode's failover; natively,
    /// a hedge).
    pub fn on_call_response(&mut self, h: &mut impl Host, token: u32, size: usize) {
        if let HttpFilter::Downstream(d) = self {
            d.on_call_response(h, token, size);
        }
    }

    /// The time this request asked to be woken at came (`Host::wake_at`).
    pub fn on_wake(&mut self, h: &mut impl Host) {
        if let HttpFilter::Downstream(d) = self {
            d.on_wake(h);
        }
    }

    pub fn on_log(&mut self, h: &mut impl Host) {
        if let HttpFilter::Downstream(d) = self {
            d.on_log(h);
        }
    }

    /// The stream is over; true lets the host delete the context now.
    pub fn on_done(&mut self, h: &mut impl Host) -> bool {
        match self {
            HttpFilter::Downstream(_) => true,
            HttpFilter::Attempt(a) => a.on_done(h),
        }
    }

    /// Whether this is the per-request filter on the listener.
    pub fn is_downstream(&self) -> bool {
        matches!(self, HttpFilter::Downstream(_))
    }
}

pub struct Root {
    config: Option<Rc<Config>>,
    /// Running as the upstream filter of each attempt (see `upstream.rs`).
    upstream: bool,
    /// Per-VM request counter, spreads a group's traffic by weight.
    tickets: Rc<Cell<u64>>,
    /// Per provider: whether this configuration's provider is the registered one,
    /// i.e. whether this instance publishes its health gauge.
    publishes: Vec<bool>,
    telemetry: Rc<Telemetry>,
    /// With `hedgeAfter`: this worker's requests that may still be hedged (shared
    /// with their filters) and what sends their hedges.
    hedges: Rc<RefCell<Hedges>>,
    hedger: Option<Rc<Hedger>>,
    /// The upstream instance's hedges out (shared with their filters).
    live: Rc<RefCell<Live>>,
    /// When the health gauges were last refreshed.
    gauges_at_ms: u64,
    /// Background probes out (`probe.rs`), by call token.
    probes: Vec<u32>,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            config: None,
            upstream: false,
            tickets: Rc::default(),
            publishes: Vec::new(),
            telemetry: Telemetry::new(),
            hedges: Rc::default(),
            hedger: None,
            live: Rc::default(),
            gauges_at_ms: 0,
            probes: Vec::new(),
        }
    }
}

/// How often the health gauges are refreshed from shared data (a cooldown ends by
/// the clock, with no request to notice it).
const GAUGE_PERIOD_MS: u64 = 1_000;

impl Root {
    /// The answer to a call this root sent came.
    pub fn on_call_response(&mut self, h: &mut impl Host, token_id: u32, body_size: usize) {
        if let Some(at) = self.probes.iter().position(|t| *t == token_id) {
            // Its upstream filter recorded the answer.
            self.probes.swap_remove(at);
            return;
        }
        // The other calls a root sends are hedges.
        if let Some(hedger) = &self.hedger {
            // The reply's own response-header callback names and counts it.
            hedger.answer(h, token_id, body_size);
        }
    }

    /// Background probes: claims the probe of every provider whose cooldown is over
    /// (one worker wins each) and sends it (see `probe.rs`).
    fn probe(&mut self, h: &mut impl Host, config: &Config, now: u64) {
        for (index, p) in config.providers.iter().enumerate() {
            if store::read_health(&*h, &p.health_key).state(now) != State::HalfOpen {
                continue;
            }
            let claimed = store::update_health_if(&*h, &p.health_key, |r| {
                r.claim_probe(now, &config.failover)
            });
            let Ok(Some(claim)) = claimed else { continue };
            let Some((headers, body)) = probe::request(config, index) else {
                continue;
            };
            let call = Call {
                cluster: &p.cluster,
                headers: &headers,
                body: Some(&body),
                timeout_ms: config.failover.probe_timeout_ms,
            };
            match h.dispatch(&call) {
                Ok(token) => {
                    log::info!(
                        "llm-failover: probing provider {} in the background",
                        p.name
                    );
                    self.probes.push(token);
                }
                Err(e) => {
                    log::warn!(
                        "llm-failover: cannot probe provider {} (cluster {}): {e}",
                        p.name,
                        p.cluster
                    );
                    attempt::release(config, &*h, index, claim.probe_until_ms);
                }
            }
        }
    }

    /// Reads and validates the plugin configuration; false refuses it (Envoy then
    /// refuses the listener or the cluster).
    pub fn on_configure(&mut self, h: &mut impl Host) -> bool {
        let Some(raw) = h.plugin_configuration() else {
            log::error!("{}", crate::config::EMPTY_CONFIGURATION);
            return false;
        };
        let config = match Config::parse(&raw, &|name| std::env::var(name).ok()) {
            Ok(c) => c,
            Err(e) => {
                // One line that names the field; on_configure's false makes Envoy refuse it.
                log::error!("{e}");
                return false;
            }
        };
        for p in &config.providers {
            if let Err(e) = store::ensure_exists(&*h, &p.health_key) {
                log::warn!("llm-failover: initialising health of {}: {e}", p.name);
            }
        }
        // Start each VM's weight rotation at a different point so that workers do not
        // all send their first request to the same provider.
        self.tickets.set(h.now_ms());
        log::info!(
            "llm-failover: configured {} providers in {} groups (withinRequest: {})",
            config.providers.len(),
            config.groups.len(),
            config.failover.within_request
        );
        self.upstream =
            h.property(&["plugin_root_id"]).as_deref() == Some(UPSTREAM_ROOT_ID.as_bytes());
        // The downstream routing instances publish the providers (for the health view)
        // and the health gauges; the upstream and the view-only instances neither.
        if !self.upstream && !config.providers.is_empty() {
            self.publish(h, &config, true);
            h.set_tick_period_ms(GAUGE_PERIOD_MS);
        }
        let config = Rc::new(config);
        if config.failover.hedge_after_ms.is_some() && !config.providers.is_empty() {
            hedging::prepare_store(&*h);
            if self.upstream {
                hedging::note_upstream_root();
            } else {
                self.hedger = Some(Rc::new(Hedger::new(
                    Rc::clone(&config),
                    Rc::clone(&self.hedges),
                    Rc::clone(&self.telemetry),
                )));
            }
            // Both instances watch their hedges on this tick (see hedge.rs).
            h.set_tick_period_ms(hedge::POLL_MS);
        }
        self.config = Some(config);
        true
    }

    pub fn on_tick(&mut self, h: &mut impl Host) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let config = &config;
        let now = h.now_ms();
        if self.upstream {
            hedging::poll_cancels(h, &self.live);
            return;
        }
        if let Some(hedger) = &self.hedger {
            hedger.tick(h, now);
        }
        // A tick may come a hair early; the gauges are refreshed about once a period.
        if now.saturating_sub(self.gauges_at_ms) + hedge::POLL_MS < GAUGE_PERIOD_MS {
            return;
        }
        self.gauges_at_ms = now;
        // Still this VM's configuration: its providers stay in the view (`registry.rs`).
        self.publish(h, config, false);
        if config.failover.background_probes {
            self.probe(h, config, now);
        }
        for (p, _) in config
            .providers
            .iter()
            .zip(&self.publishes)
            .filter(|(_, own)| **own)
        {
            let state = store::read_health(&*h, &p.health_key).state(now);
            let value = metrics::health_value(state);
            self.telemetry.gauge(&*h, metrics::health(&p.name), value);
        }
    }

    /// Publishes this configuration's providers for the health view and the gauges;
    /// conflicts are logged when it is first configured. The providers a reload
    /// dropped, which this publication removed, get the `removed` gauge value.
    fn publish(&mut self, h: &impl Host, config: &Config, first: bool) {
        match registry::publish(h, config, h.now_ms()) {
            Ok(published) => {
                if first {
                    for c in &published.conflicts {
                        log::error!("llm-failover: {c}; the health view and gauges show the first");
                    }
                }
                for name in &published.dropped {
                    log::info!(
                        "llm-failover: provider {name} is in no configuration any more; it \
                         leaves the health view"
                    );
                    let gauge = metrics::health(name);
                    self.telemetry.gauge(h, gauge, metrics::HEALTH_REMOVED);
                }
                self.publishes = published.own;
            }
            Err(e) => {
                log::warn!("llm-failover: publishing the providers for the health view: {e}")
            }
        }
    }

    /// The filter for new request (or attempt) `context_id`; `None` before a
    /// configuration was accepted.
    pub fn new_filter(&self, context_id: u32) -> Option<HttpFilter> {
        let config = self.config.clone()?;
        if self.upstream {
            return Some(HttpFilter::Attempt(AttemptFilter::new(
                config,
                Rc::clone(&self.telemetry),
                context_id,
                Rc::clone(&self.live),
            )));
        }
        let ticket = self.tickets.get();
        self.tickets.set(ticket.wrapping_add(1));
        Some(HttpFilter::Downstream(Downstream::new(
            config,
            Rc::clone(&self.telemetry),
            ticket,
            context_id,
            Rc::clone(&self.hedges),
            self.hedger.clone(),
        )))
    }
}
