//! llm-failover: priority-group failover for OpenAI-style LLM traffic, as a
//! proxy-wasm HTTP filter for Envoy.
//!
//! Two ways to fail over inside a request (`failover.mode`): **router** (default),
//! where Envoy's router retries on the next provider's cluster and the filter runs
//! twice, downstream (`http.rs`: plans the attempts, rewrites the first) and as an
//! upstream filter on each provider cluster (`upstream.rs`: rewrites each later
//! attempt, records every outcome); and **dispatch**, where the downstream filter
//! sends further attempts itself with `dispatch_http_call` (`http.rs`).
//!
//! The decisions live in pure modules that host unit tests exercise: `attempt` (the
//! core both modes share: attempt order, probe claims, the outcome-to-failure table,
//! what each outcome does to a health record), `config`, `health`, `select`,
//! `outcome`, `handoff` (what the downstream filter hands on), `body`, `rewrite`,
//! `retry_after`, `store`, `registry` (the providers the view and the gauges read), `view`,
//! `hedge` (`hedgeAfter`'s bookkeeping). `host.rs` is the only module that calls into
//! Envoy; `root.rs`, `http.rs`, `upstream.rs` and `hedging.rs` (hedges sent from the
//! root's tick) are the thin contexts that gather inputs and apply the decisions.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod attempt;
pub mod body;
pub mod config;
pub mod duration;
pub mod errors;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_checks;
pub mod handoff;
pub mod health;
pub mod hedge;
pub mod hedging;
pub mod host;
pub mod http;
pub mod json;
pub mod metrics;
pub mod names;
pub mod outcome;
pub mod probe;
pub mod registry;
pub mod reply;
pub mod retry_after;
pub mod rewrite;
pub mod root;
pub mod select;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod view;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    host::install_panic_hook();
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::<root::Root>::default()
    });
}}
