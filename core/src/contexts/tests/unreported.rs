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
fn routed_request(failover: &str) -> (Rc<Config>, Downstream, MockHost) {
    let c = config(failover);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut h = client(NOW);
    h.unreported = true;
    let mut f = downstream(&c, &hedges);
    f.on_request_headers(&mut h, true);
    (c, f, h)
}

#[test]
fn the_downstream_filter_records_the_last_attempt_left_open() {
    let (c, mut f, mut h) = routed_request("{}");
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
    let (c, mut f, mut h) = routed_request("{}");
    h.set_property_str(OPEN_KEY, &format!("0:{NOW}"));
    h.properties.insert(
        "response.code_details".into(),
        b"downstream_remote_disconnect".to_vec(),
    );
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    assert_eq!(record(&h, &c, 0).state(NOW), State::Healthy);
}

#[test]
fn a_stream_held_for_its_first_event_stays_open_until_it_comes_and_then_until_its_end() {
    let failover = r#"{"firstTokenTimeout":"1s"}"#;
    let mut h = attempt_at(None, "ca");
    let mut f = start(failover, &mut h);
    h.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    f.on_response_headers(&mut h, false);
    assert_eq!(h.filter_state(OPEN_KEY), Some(format!("0:{NOW}:f")));
    h.response_body = b"data: {}\n\n".to_vec();
    h.now.set(NOW + 10);
    f.on_response_body(&mut h, 10, false);
    assert_eq!(h.filter_state(OPEN_KEY), Some(format!("0:{}:b", NOW + 10)));
    h.response_body = b"data: {}\n\ndata: [DONE]\n\n".to_vec();
    f.on_response_body(&mut h, 24, true);
    assert_eq!(h.filter_state(OPEN_KEY).as_deref(), Some("-"));
}

#[test]
fn the_next_attempt_records_a_stream_abandoned_before_its_first_event_as_a_stall() {
    let failover = r#"{"firstTokenTimeout":"1s"}"#;
    let mut h = attempt_at(None, "ca");
    let mut f = start(failover, &mut h);
    h.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    f.on_response_headers(&mut h, false);
    // Envoy's per-try idle timer ends it; the router asks cb.
    h.properties
        .insert("xds.cluster_name".into(), b"cb".to_vec());
    h.now.set(NOW + 1_000);
    start(failover, &mut h);
    let c = config(failover);
    assert_eq!(record(&h, &c, 0).state(NOW + 1_000), State::Cooling);
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("stall"));
    assert_eq!(h.filter_state(PATH_KEY).as_deref(), Some("0,1"));
}

#[test]
fn an_error_answer_closes_the_attempt() {
    let mut h = attempt_at(None, "ca");
    let mut f = start("{}", &mut h);
    h.set_response(&[(":status", "500")]);
    f.on_response_headers(&mut h, false);
    assert_eq!(h.filter_state(OPEN_KEY).as_deref(), Some("-"));
}

/// The downstream filter of a request whose answer from `a` (plan position 0) began
/// passing on to the client.
fn answering(failover: &str) -> (Rc<Config>, Downstream, MockHost) {
    let (c, mut f, mut h) = routed_request(failover);
    h.set_property_str(OPEN_KEY, &format!("0:{NOW}:b"));
    h.set_response(&[(":status", "200")]);
    f.on_response_headers(&mut h);
    // Still passing: not an unanswered attempt.
    assert_eq!(h.filter_state(OPEN_KEY), Some(format!("0:{NOW}:b")));
    (c, f, h)
}

/// `answering`, whose body then stopped coming: its last data at `last_data_at`, the
/// request's end at `now`.
fn cut_answer(failover: &str, last_data_at: u64, now: u64) -> (Rc<Config>, MockHost) {
    let (c, mut f, mut h) = answering(failover);
    h.now.set(last_data_at);
    f.on_response_body(&h);
    h.now.set(now);
    f.on_log(&mut h);
    (c, h)
}

#[test]
fn the_downstream_filter_records_an_answer_reset_after_its_headers() {
    let (c, h) = cut_answer("{}", NOW + 100, NOW + 200);
    assert_eq!(h.filter_state(STREAM_KEY).as_deref(), Some("reset"));
    assert_eq!(h.filter_state(OPEN_KEY).as_deref(), Some("-"));
    let health = record(&h, &c, 0);
    assert_eq!(health.state(NOW + 200), State::Cooling);
    assert_eq!(
        h.metric("llm_failover.cooldowns.provider.a.reason.broken_stream"),
        1
    );
}

#[test]
fn the_downstream_filter_records_an_answer_silent_for_stream_idle_timeout_as_a_stall() {
    let failover = r#"{"streamIdleTimeout":"2s"}"#;
    let (c, h) = cut_answer(failover, NOW + 100, NOW + 2_080);
    assert_eq!(h.filter_state(STREAM_KEY).as_deref(), Some("stall"));
    assert_eq!(record(&h, &c, 0).state(NOW + 2_080), State::Cooling);
    // Cut before streamIdleTimeout: a reset.
    let (_, h) = cut_answer(failover, NOW + 100, NOW + 1_000);
    assert_eq!(h.filter_state(STREAM_KEY).as_deref(), Some("reset"));
}

#[test]
fn an_answer_the_client_walked_away_from_is_not_the_providers_failure() {
    let (c, mut f, mut h) = answering("{}");
    h.properties.insert(
        "response.code_details".into(),
        b"downstream_remote_disconnect".to_vec(),
    );
    f.on_log(&mut h);
    assert_eq!(record(&h, &c, 0).state(NOW), State::Healthy);
    assert_eq!(h.filter_state(STREAM_KEY), None);
}
