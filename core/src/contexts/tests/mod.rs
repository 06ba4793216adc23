//! The contexts' decisions, through the in-memory host (`mock_host.rs`): one
//! scenario per test. Each test drives a context's handlers the way Envoy's
//! callbacks would and reads what it asked of the host.

mod dispatched;
mod hedging;
mod root;
mod routed;
mod unreported;
mod upstream;

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::Config;
use crate::health::HealthRecord;
use crate::hedge::{Hedges, Live};
use crate::mock_host::MockHost;
use crate::store;

use super::downstream::Downstream;
use super::telemetry::Telemetry;
use super::upstream::AttemptFilter;

pub const NOW: u64 = 1_000_000_000;

/// The per-request control secret of configurations with `control`.
pub const CONTROL_SECRET: &str = "control-secret-for-unit-tests";

/// Three providers in three groups: `a` (key from `A_KEY`, host and path rewritten,
/// model `m-a`), `b` (key from `B_KEY`, model `m-b`), `c` (passthrough, model `m-c`).
pub fn providers(failover: &str) -> String {
    format!(
        r#"{{"groups":[
          {{"providers":[{{"name":"a","cluster":"ca","host":"a.example","path":"/v1/a",
             "openai":{{"model":"m-a"}},"contextWindow":1000,
             "policies":{{"auth":{{"key":{{"env":"A_KEY"}}}}}}}}]}},
          {{"providers":[{{"name":"b","cluster":"cb","host":"b.example",
             "openai":{{"model":"m-b"}},"contextWindow":2000,
             "policies":{{"auth":{{"key":{{"env":"B_KEY"}}}}}}}}]}},
          {{"providers":[{{"name":"c","cluster":"cc","openai":{{"model":"m-c"}}}}]}}],
          "failover":{failover}}}"#
    )
}

pub fn config(failover: &str) -> Rc<Config> {
    let env = |name: &str| match name {
        "A_KEY" => Some("key-a".to_string()),
        "B_KEY" => Some("key-b".to_string()),
        "CONTROL" => Some(CONTROL_SECRET.to_string()),
        _ => None,
    };
    Rc::new(Config::parse(providers(failover).as_bytes(), &env).expect("test configuration"))
}

/// A client's chat request to the gateway.
pub fn client(now: u64) -> MockHost {
    MockHost::at(now).with_request(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions?x=1"),
        (":authority", "gateway"),
        ("authorization", "Bearer client"),
        ("content-type", "application/json"),
        ("content-length", "40"),
    ])
}

pub fn downstream(config: &Rc<Config>, hedges: &Rc<RefCell<Hedges>>) -> Downstream {
    Downstream::new(
        Rc::clone(config),
        Telemetry::new(),
        0,
        7,
        Rc::clone(hedges),
        None,
    )
}

pub fn attempt(config: &Rc<Config>, live: &Rc<RefCell<Live>>) -> AttemptFilter {
    AttemptFilter::new(Rc::clone(config), Telemetry::new(), 9, Rc::clone(live))
}

pub fn record(h: &MockHost, config: &Config, index: usize) -> HealthRecord {
    store::read_health(h, &config.providers[index].health_key)
}

/// Puts provider `index` in a cooldown until `until`.
pub fn cool(h: &MockHost, config: &Config, index: usize, until: u64) {
    let r = HealthRecord {
        cooling_until_ms: until,
        cooldowns: 1,
        ..HealthRecord::default()
    };
    crate::store::SharedData::set(h, &config.providers[index].health_key, &r.encode(), None)
        .expect("memory store");
}
