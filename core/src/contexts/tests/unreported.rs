//! A host that does not report an attempt that ends without an answer (Envoy's
//! dynamic modules): each attempt names the next in advance, and the next attempt's
//! filter, or the downstream filter for the last, records an attempt left open.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::health::State;
use crate::hedge::{Hedges, Live};
use crate::host::Host;
use crate::names::*;

/// The router's copy of the request at plan position `at` on `cluster`, on a host
/// that does not report attempts' ends.
fn attempt_at(at: Option<&str>, cluster: &str) -> MockHost {
    let mut h = MockHost::at(NOW).with_request(&[(":path", "/v1/chat/completions")]);
    h.unreported = true;
    h.set_property_str(PLAN_KEY, "=0,1,2");
    if let Some(at) = at {
        h.set_property_str(AT_KEY, at);
    }
    h.properties
        .insert("xds.cluster_name".into(), cluster.as_bytes().to_vec());
    h
}

fn start(failover: &str, h: &mut MockHost) -> AttemptFilter {
    let live: Rc<RefCell<Live>> = Rc::default();
    let mut f = attempt(&config(failover), &live);
    f.on_request_headers(h, true);
    f
}

#[test]
fn an_attempt_names_the_next_in_advance_and_is_marked_open() {
    let mut h = attempt_at(None, "ca");
    start("{}", &mut h);
    assert_eq!(h.filter_state(AT_KEY).as_deref(), Some("1"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
    assert_eq!(h.filter_state(OPEN_KEY), Some(format!("0:{NOW}")));
    // Nothing is recorded yet: the attempt may still answer.
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Healthy);
}

#[test]
fn the_next_attempt_records_the_one_left_open_as_a_connection_failure() {
    let mut h = attempt_at(None, "ca");
    start("{}", &mut h);
    // Refused: no answer, no end reported; the router retries on cb.
    h.properties
        .insert("xds.cluster_name".into(), b"cb".to_vec());
    h.now.set(NOW + 5);
    start("{}", &mut h);
    let c = config("{}");
    assert_eq!(record(&h, &c, 0).state(NOW + 5), State::Cooling);
    assert_eq!(h.filter_state(PATH_KEY).as_deref(), Some("0,1"));
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("connection"));
    assert_eq!(h.filter_state(AT_KEY).as_deref(), Some("2"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cc"));
    assert_eq!(
        h.metric("llm_failover.failovers.from.a.to.b.reason.connection"),
        1
    );
}

#[test]
fn an_attempt_left_open_for_its_per_try_limit_timed_out() {
    let failover = r#"{"firstByteTimeout":"2s"}"#;
    let mut h = attempt_at(None, "ca");
    start(failover, &mut h);
    h.properties
        .insert("xds.cluster_name".into(), b"cb".to_vec());
    h.now.set(NOW + 1_960);
    start(failover, &mut h);
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("timeout"));
}

#[test]
fn an_answer_closes_the_attempt_and_names_its_own_next() {
    let mut h = attempt_at(None, "ca");
    let mut f = start("{}", &mut h);
    h.set_response(&[(":status", "200")]);
    f.on_response_headers(&mut h, true);
    assert_eq!(h.filter_state(OPEN_KEY).as_deref(), Some("-"));
    // The next attempt (none here) would find nothing to record.
    h.properties
        .insert("xds.cluster_name".into(), b"cb".to_vec());
    start("{}", &mut h);
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Healthy);
    assert_eq!(h.filter_state(PATH_KEY), None);
}

#[test]
fn the_last_provider_of_the_plan_names_no_provider_next() {
    let mut h = attempt_at(Some("2"), "cc");
    start("{}", &mut h);
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some(EXHAUSTED_CLUSTER));
}

/// A whole request through the downstream filter's request headers, on a host that
/// does not report attempts' ends.
fn routed_request() -> (Rc<Config>, Downstream, MockHost) {
    let c = config("{}");
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut h = client(NOW);
    h.unreported = true;
    let mut f = downstream(&c, &hedges);
    f.on_request_headers(&mut h, true);
    (c, f, h)
}

#[test]
fn the_downstream_filter_records_the_last_attempt_left_open() {
    let (c, mut f, mut h) = routed_request();
    // The upstream filters moved the request to c, whose attempt got no answer.
    h.set_property_str(PATH_KEY, "0,1,2");
    h.set_property_str(OPEN_KEY, &format!("2:{NOW}"));
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    assert_eq!(record(&h, &c, 2).state(NOW), State::Cooling);
    assert_eq!(h.response(PROVIDER_HEADER).as_deref(), Some("c"));
}

#[test]
fn a_client_that_went_away_leaves_the_open_attempt_unblamed() {
    let (c, mut f, mut h) = routed_request();
    h.set_property_str(OPEN_KEY, &format!("0:{NOW}"));
    h.properties.insert(
        "response.code_details".into(),
        b"downstream_remote_disconnect".to_vec(),
    );
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    assert_eq!(record(&h, &c, 0).state(NOW), State::Healthy);
}
