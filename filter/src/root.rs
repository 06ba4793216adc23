//! The root context: loads and validates the plugin configuration once per VM and
//! hands it to every request's filter.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::attempt;
use crate::config::Config;
use crate::health::State;
use crate::hedge::{self, Hedges, Live};
use crate::hedging::{self, Hedger};
use crate::host::{self, HostSharedData};
use crate::http::FailoverFilter;
use crate::metrics;
use crate::names::UPSTREAM_ROOT_ID;
use crate::probe;
use crate::registry;
use crate::store;
use crate::telemetry::Telemetry;
use crate::upstream::AttemptFilter;

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
    hedger: Option<Hedger>,
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

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(at) = self.probes.iter().position(|t| *t == token_id) {
            // Its upstream filter recorded the answer.
            self.probes.swap_remove(at);
            return;
        }
        // The other calls a root sends are hedges.
        if let Some(hedger) = &self.hedger {
            hedger.answer(token_id, body_size);
        }
    }
}

impl Root {
    /// Background probes: claims the probe of every provider whose cooldown is over
    /// (one worker wins each) and sends it (see `probe.rs`).
    fn probe(&mut self, config: &Config, now: u64) {
        for (index, p) in config.providers.iter().enumerate() {
            if store::read_health(&HostSharedData, &p.health_key).state(now) != State::HalfOpen {
                continue;
            }
            let claimed = store::update_health_if(&HostSharedData, &p.health_key, |h| {
                h.claim_probe(now, &config.failover)
            });
            let Ok(Some(claim)) = claimed else { continue };
            let Some((headers, body)) = probe::request(config, index) else {
                continue;
            };
            match host::dispatch(
                &p.cluster,
                &headers,
                Some(&body),
                config.failover.probe_timeout_ms,
            ) {
                Ok(token) => {
                    log::info!(
                        "llm-failover: probing provider {} in the background",
                        p.name
                    );
                    self.probes.push(token);
                }
                Err(e) => {
                    log::warn!(
                        "llm-failover: cannot probe provider {} (cluster {}): {e:?}",
                        p.name,
                        p.cluster
                    );
                    attempt::release(config, &HostSharedData, index, claim.probe_until_ms);
                }
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(raw) = host::plugin_configuration() else {
            log::error!("invalid llm-failover configuration: the plugin configuration is empty");
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
            if let Err(e) = store::ensure_exists(&HostSharedData, &p.health_key) {
                log::warn!("llm-failover: initialising health of {}: {e}", p.name);
            }
        }
        // Start each VM's weight rotation at a different point so that workers do not
        // all send their first request to the same provider.
        self.tickets.set(host::now_ms());
        log::info!(
            "llm-failover: configured {} providers in {} groups (withinRequest: {})",
            config.providers.len(),
            config.groups.len(),
            config.failover.within_request
        );
        self.upstream =
            host::property(&["plugin_root_id"]).as_deref() == Some(UPSTREAM_ROOT_ID.as_bytes());
        // The downstream routing instances publish the providers (for the health view)
        // and the health gauges; the upstream and the view-only instances neither.
        if !self.upstream && !config.providers.is_empty() {
            match registry::publish(&HostSharedData, &config) {
                Ok((own, conflicts)) => {
                    for c in &conflicts {
                        log::error!("llm-failover: {c}; the health view and gauges show the first");
                    }
                    self.publishes = own;
                }
                Err(e) => {
                    log::warn!("llm-failover: publishing the providers for the health view: {e}")
                }
            }
            host::set_tick_period_ms(GAUGE_PERIOD_MS);
        }
        let config = Rc::new(config);
        if config.failover.hedge_after_ms.is_some() && !config.providers.is_empty() {
            hedging::prepare_store();
            if self.upstream {
                hedging::note_upstream_root();
            } else {
                self.hedger = Some(Hedger::new(
                    Rc::clone(&config),
                    Rc::clone(&self.hedges),
                    Rc::clone(&self.telemetry),
                ));
            }
            // Both instances watch their hedges on this tick (see hedge.rs).
            host::set_tick_period_ms(hedge::POLL_MS);
        }
        self.config = Some(config);
        true
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let config = &config;
        let now = host::now_ms();
        if self.upstream {
            hedging::poll_cancels(&self.live);
            return;
        }
        if let Some(hedger) = &self.hedger {
            hedger.tick(now);
        }
        // A tick may come a hair early; the gauges are refreshed about once a period.
        if now.saturating_sub(self.gauges_at_ms) + hedge::POLL_MS < GAUGE_PERIOD_MS {
            return;
        }
        self.gauges_at_ms = now;
        if config.failover.background_probes {
            self.probe(config, now);
        }
        for (p, _) in config
            .providers
            .iter()
            .zip(&self.publishes)
            .filter(|(_, own)| **own)
        {
            let state = store::read_health(&HostSharedData, &p.health_key).state(now);
            self.telemetry
                .gauge(metrics::health(&p.name), metrics::health_value(state));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        if self.upstream {
            return Some(Box::new(AttemptFilter::new(
                config,
                Rc::clone(&self.telemetry),
                context_id,
                Rc::clone(&self.live),
            )));
        }
        let ticket = self.tickets.get();
        self.tickets.set(ticket.wrapping_add(1));
        Some(Box::new(FailoverFilter::new(
            config,
            ticket,
            Rc::clone(&self.telemetry),
            context_id,
            Rc::clone(&self.hedges),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
