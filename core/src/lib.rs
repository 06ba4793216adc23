//! llm-failover's core: priority-group failover for OpenAI-style LLM traffic, with
//! no dependency on the host it runs in (see ARCHITECTURE.md).
//!
//! - Pure decisions, time passed in: `config` (the plugin configuration, validated
//!   into typed structs), `plan` (the attempt order, one type for every filter),
//!   `control` (what a trusted request's control headers ask for),
//!   `attempt` (planning, probe claims, the verdict on a failing answer, what each
//!   outcome does to health), `errors`, `health`, `select`, `retry_after`, `body`,
//!   `rewrite`, `handoff`, `hedge`, `probe`, `sse`, `store`, `registry`, `view`,
//!   `outcome`, `reply`, `metrics`.
//! - `names`: every name shared with Envoy and `render`.
//! - `host`: the one trait every call into Envoy goes through.
//! - `contexts`: the filters' logic (the root, the downstream filter by what it
//!   serves, the upstream filter, hedging), written against `host::Host`; a host
//!   crate (the proxy-wasm `.wasm`) adapts its callbacks to them.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod attempt;
pub mod body;
pub mod config;
pub mod contexts;
pub mod control;
pub mod duration;
pub mod errors;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_checks;
pub mod handoff;
pub mod health;
pub mod hedge;
pub mod host;
pub mod json;
pub mod metrics;
#[cfg(test)]
pub mod mock_host;
pub mod names;
pub mod outcome;
pub mod plan;
pub mod probe;
pub mod registry;
pub mod reply;
pub mod retry_after;
pub mod rewrite;
pub mod select;
pub mod sse;
pub mod store;
pub mod view;
