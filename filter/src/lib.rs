//! llm-failover: priority-group failover for OpenAI-style LLM traffic, as a
//! proxy-wasm HTTP filter for Envoy.
//!
//! The decisions live in pure modules (config, health, select, outcome, body,
//! rewrite, retry_after, store) that host unit tests exercise; `host.rs` is the only
//! module that calls into Envoy, and `root.rs`/`http.rs` are the thin contexts that
//! gather inputs and apply the decisions.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod attempt;
pub mod body;
pub mod config;
pub mod duration;
pub mod handoff;
pub mod health;
pub mod host;
pub mod http;
pub mod json;
pub mod metrics;
pub mod outcome;
pub mod reply;
pub mod retry_after;
pub mod rewrite;
pub mod root;
pub mod select;
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
