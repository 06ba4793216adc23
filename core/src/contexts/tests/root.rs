//! The root context: configuration, publishing, the tick, and the health view.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::health::State;
use crate::hedge::Hedges;
use crate::host::Action;
use crate::names::*;
use crate::registry;

use super::super::root::{HttpFilter, Root};

const PLAIN: &str = r#"{"healthPath":"/health","groups":[
  {"providers":[{"name":"a","cluster":"ca"}]},
  {"providers":[{"name":"b","cluster":"cb"}]}],"failover":{}}"#;

fn configured(json: &str) -> (Root, MockHost, bool) {
    let mut root = Root::default();
    let mut h = MockHost::at(NOW);
    h.configuration = Some(json.as_bytes().to_vec());
    let ok = root.on_configure(&mut h);
    (root, h, ok)
}

#[test]
fn a_configuration_is_accepted_and_its_providers_published() {
    let (root, h, ok) = configured(PLAIN);
    assert!(ok);
    let published = registry::read(&h);
    let names: Vec<&str> = published.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    // The gauges' tick.
    assert_eq!(h.tick_ms, Some(1_000));
    assert!(matches!(
        root.new_filter(1),
        Some(HttpFilter::Downstream(_))
    ));
}

#[test]
fn a_broken_configuration_is_refused() {
    let (root, _, ok) =
        configured(r#"{"groups":[{"providers":[{"name":"a","cluster":"ca","weight":0}]}]}"#);
    assert!(!ok);
    assert!(root.new_filter(1).is_none());
    let (_, _, ok) = configured("");
    assert!(!ok, "an empty configuration");
}

#[test]
fn the_upstream_instance_publishes_nothing_and_serves_attempts() {
    let mut root = Root::default();
    let mut h = MockHost::at(NOW);
    h.configuration = Some(PLAIN.as_bytes().to_vec());
    h.properties.insert(
        "plugin_root_id".into(),
        UPSTREAM_ROOT_ID.as_bytes().to_vec(),
    );
    assert!(root.on_configure(&mut h));
    assert!(registry::read(&h).entries.is_empty());
    assert_eq!(h.tick_ms, None);
    assert!(matches!(root.new_filter(1), Some(HttpFilter::Attempt(_))));
}

#[test]
fn the_tick_refreshes_the_health_gauges() {
    let (mut root, mut h, _) = configured(PLAIN);
    let c = Config::parse(PLAIN.as_bytes(), &|_| None).unwrap();
    cool(&h, &c, 0, NOW + 10_000);
    h.now.set(NOW + 1_000);
    root.on_tick(&mut h);
    assert_eq!(h.metric("llm_failover.health.provider.a"), 1);
    assert_eq!(h.metric("llm_failover.health.provider.b"), 0);
}

#[test]
fn background_probes_claim_and_send_a_probe_when_a_cooldown_ends() {
    let json = PLAIN.replace(
        r#""failover":{}"#,
        r#""failover":{"backgroundProbes":true}"#,
    );
    let (mut root, mut h, ok) = configured(&json);
    assert!(ok);
    let c = Config::parse(json.as_bytes(), &|_| None).unwrap();
    cool(&h, &c, 0, NOW + 500);
    h.now.set(NOW + 1_000);
    root.on_tick(&mut h);
    assert_eq!(h.calls.len(), 1);
    assert_eq!(h.calls[0].cluster, "ca");
    assert!(h.calls[0]
        .headers
        .contains(&(PROBE_HEADER.to_string(), "0".to_string())));
    assert_eq!(record(&h, &c, 0).state(NOW + 1_000), State::Probing);
    // Its answer is the upstream filter's to record.
    root.on_call_response(&mut h, 1, 0);
    assert!(h.replies.is_empty());
}

#[test]
fn hedging_prepares_its_keys_and_a_fast_tick() {
    let json = PLAIN.replace(r#""failover":{}"#, r#""failover":{"hedgeAfter":"1s"}"#);
    let (_, h, ok) = configured(&json);
    assert!(ok);
    assert_eq!(h.tick_ms, Some(crate::hedge::POLL_MS));
    let (seq, _) = crate::store::SharedData::get(&h, SEQUENCE_KEY).unwrap();
    assert_eq!(seq.as_deref(), Some(&b"0"[..]));
}

#[test]
fn the_health_view_shows_what_was_published() {
    let (_, mut h, _) = configured(PLAIN);
    let c = Rc::new(Config::parse(PLAIN.as_bytes(), &|_| None).unwrap());
    cool(&h, &c, 1, NOW + 10_000);
    h.request_headers = crate::mock_host::pairs(&[(":path", "/health?pretty")]);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    assert_eq!(f.on_request_headers(&mut h, true), Action::Pause);
    assert_eq!(h.replies.len(), 1);
    assert_eq!(h.replies[0].status, 200);
    let body = String::from_utf8_lossy(&h.replies[0].body).into_owned();
    assert!(
        body.contains(r#""name":"a""#) && body.contains(r#""name":"b""#),
        "{body}"
    );
    assert!(body.contains("cooling"), "{body}");
    // Nothing else is done for that request.
    h.set_response(&[(":status", "200")]);
    assert_eq!(f.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.response(PROVIDER_HEADER), None);
}

#[test]
fn other_paths_are_routed_as_usual() {
    let (_, mut h, _) = configured(PLAIN);
    let c = Rc::new(Config::parse(PLAIN.as_bytes(), &|_| None).unwrap());
    h.request_headers = crate::mock_host::pairs(&[(":path", "/v1/chat/completions")]);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    downstream(&c, &hedges).on_request_headers(&mut h, true);
    assert!(h.replies.is_empty());
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("ca"));
}
