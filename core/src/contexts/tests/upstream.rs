//! The upstream filter: one attempt of Envoy's router (or a hedge, or a probe).

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::handoff;
use crate::health::State;
use crate::hedge::{self, Live};
use crate::host::{Action, Host};
use crate::mock_host::pairs;
use crate::names::*;

const CONTEXT_LENGTH: &[u8] = br#"{"error":{"message":"This model's maximum context length is 4097 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;

/// The router's copy of the request at plan position `at` on cluster `cluster`,
/// after the first attempt's rewrite.
fn routed(at: Option<&str>, cluster: &str) -> MockHost {
    let mut h = MockHost::at(NOW).with_request(&[
        (":method", "POST"),
        (":path", "/v1/a?x=1"),
        (":authority", "a.example"),
        ("authorization", "Bearer key-a"),
    ]);
    h.set_property_str(PLAN_KEY, "=0,1,2");
    if let Some(at) = at {
        h.set_property_str(AT_KEY, at);
    }
    let client = pairs(&[
        (":path", "/v1/chat/completions?x=1"),
        (":authority", "gateway"),
        ("authorization", "Bearer client"),
    ]);
    let names = config("{}").rewritten_headers.clone();
    h.set_property(
        CLIENT_HEADERS_KEY,
        &handoff::encode_client_headers(&client, &names),
    );
    h.properties
        .insert("xds.cluster_name".into(), cluster.as_bytes().to_vec());
    h
}

fn started(failover: &str, h: &mut MockHost) -> (AttemptFilter, Rc<RefCell<Live>>) {
    let live: Rc<RefCell<Live>> = Rc::default();
    let mut f = attempt(&config(failover), &live);
    f.on_request_headers(h, false);
    (f, live)
}

/// An answer with `status` and `body` comes back to `f`.
fn answer(f: &mut AttemptFilter, h: &mut MockHost, status: &str, body: &[u8]) -> Action {
    h.set_response(&[(":status", status), ("content-type", "application/json")]);
    assert_eq!(
        f.on_response_headers(h, false),
        Action::Pause,
        "held to read the body"
    );
    h.response_body = body.to_vec();
    f.on_response_body(h, body.len(), true)
}

fn sse(f: &mut AttemptFilter, h: &mut MockHost) -> Action {
    h.set_response(&[(":status", "200"), ("content-type", "text/event-stream")]);
    f.on_response_headers(h, false)
}

#[test]
fn a_later_attempt_starts_from_the_clients_headers() {
    let mut h = routed(Some("1"), "cb");
    let (mut f, _) = started("{}", &mut h);
    assert_eq!(h.header(":authority").as_deref(), Some("b.example"));
    // b keeps the client's path, not a's.
    assert_eq!(
        h.header(":path").as_deref(),
        Some("/v1/chat/completions?x=1")
    );
    assert_eq!(h.header("authorization").as_deref(), Some("Bearer key-b"));
    h.request_body = br#"{"model":"m-a"}"#.to_vec();
    assert_eq!(f.on_request_body(&mut h, 15, true), Action::Continue);
    assert_eq!(h.request_body, br#"{"model":"m-b"}"#.to_vec());
}

#[test]
fn the_first_attempt_was_rewritten_downstream() {
    let mut h = routed(None, "ca");
    let before = h.request_headers.clone();
    let (mut f, _) = started("{}", &mut h);
    assert_eq!(h.request_headers, before);
    h.request_body = br#"{"model":"m-a"}"#.to_vec();
    assert_eq!(f.on_request_body(&mut h, 15, true), Action::Continue);
    assert_eq!(h.request_body, br#"{"model":"m-a"}"#.to_vec());
}

#[test]
fn a_429_is_turned_into_the_retry_status_and_names_the_next_provider() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    h.set_response(&[(":status", "429"), ("retry-after", "30")]);
    assert_eq!(f.on_response_headers(&mut h, false), Action::Pause);
    h.response_body = b"{}".to_vec();
    h.set_response_header("retry-after", "30");
    assert_eq!(f.on_response_body(&mut h, 2, true), Action::Continue);
    assert_eq!(h.response(":status").as_deref(), Some("591"));
    assert_eq!(h.filter_state(STATUS_KEY).as_deref(), Some("429"));
    assert_eq!(h.filter_state(AT_KEY).as_deref(), Some("1"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
    assert_eq!(h.filter_state(PATH_KEY).as_deref(), Some("0,1"));
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("rate_limited"));
    assert_eq!(h.filter_state(FAILED_AT_KEY), Some(NOW.to_string()));
    let c = config("{}");
    assert_eq!(record(&h, &c, 0).cooling_until_ms, NOW + 30_000);
    assert_eq!(
        h.metric("llm_failover.errors.provider.a.class.rate_limited"),
        1
    );
    assert_eq!(
        h.metric("llm_failover.failovers.from.a.to.b.reason.rate_limited"),
        1
    );
}

#[test]
fn a_context_length_error_goes_to_a_larger_window() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    answer(&mut f, &mut h, "400", CONTEXT_LENGTH);
    assert_eq!(h.response(":status").as_deref(), Some("591"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
    // The request was at fault, not the provider.
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Healthy);
}

#[test]
fn a_context_length_error_without_a_larger_window_goes_to_the_client() {
    let mut h = routed(Some("1"), "cb");
    let (mut f, _) = started("{}", &mut h);
    answer(&mut f, &mut h, "400", CONTEXT_LENGTH);
    // c declares no window: nobody can take it.
    assert_eq!(h.response(":status").as_deref(), Some("400"));
    assert_eq!(h.filter_state(NEXT_KEY), None);
}

#[test]
fn a_content_policy_refusal_goes_to_the_client() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    let refusal = br#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","code":"content_policy_violation"}}"#;
    answer(&mut f, &mut h, "400", refusal);
    assert_eq!(h.response(":status").as_deref(), Some("400"));
    assert_eq!(h.filter_state(AT_KEY), None);
    assert_eq!(
        h.metric("llm_failover.errors.provider.a.class.content_policy"),
        1
    );
}

#[test]
fn the_last_provider_of_the_plan_failing_goes_to_the_client() {
    let mut h = routed(Some("2"), "cc");
    let (mut f, _) = started("{}", &mut h);
    answer(&mut f, &mut h, "503", b"{}");
    assert_eq!(h.response(":status").as_deref(), Some("503"));
    assert_eq!(record(&h, &config("{}"), 2).state(NOW), State::Cooling);
}

#[test]
fn a_provider_that_sends_the_retry_status_itself_is_passed_on_as_502() {
    let mut h = routed(Some("2"), "cc");
    let (mut f, _) = started(r#"{"onStatus":[429]}"#, &mut h);
    answer(&mut f, &mut h, "591", b"");
    assert_eq!(h.response(":status").as_deref(), Some("502"));
}

#[test]
fn a_refused_connection_is_recorded_and_the_router_told_where_next() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    h.properties.insert(
        "upstream.transport_failure_reason".into(),
        b"delayed connect error: 111".to_vec(),
    );
    assert!(f.on_done(&mut h));
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Cooling);
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("connection"));
}

#[test]
fn no_headers_within_first_byte_timeout_is_a_timeout() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started(r#"{"firstByteTimeout":"2s"}"#, &mut h);
    // Envoy's timer and this filter's clock start a hair apart.
    h.now.set(NOW + 1_960);
    f.on_done(&mut h);
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("timeout"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
}

#[test]
fn a_reset_before_the_timeout_is_the_providers_reset() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started(r#"{"firstByteTimeout":"2s"}"#, &mut h);
    h.now.set(NOW + 500);
    f.on_done(&mut h);
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("connection"));
}

#[test]
fn a_client_that_went_away_is_not_the_providers_failure() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    h.properties.insert(
        "response.code_details".into(),
        b"downstream_remote_disconnect".to_vec(),
    );
    f.on_done(&mut h);
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Healthy);
    assert_eq!(h.filter_state(NEXT_KEY), None);
}

#[test]
fn the_gateways_own_reply_is_not_the_providers_failure() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    h.set_property_str(REFUSED_KEY, "1");
    f.on_done(&mut h);
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Healthy);
}

#[test]
fn the_plan_used_up_sends_further_retries_nowhere() {
    let mut h = routed(Some("2"), "cc");
    let (mut f, _) = started("{}", &mut h);
    f.on_done(&mut h);
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some(EXHAUSTED_CLUSTER));
}

#[test]
fn a_stream_that_ends_without_its_last_event_is_broken() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    assert_eq!(sse(&mut f, &mut h), Action::Continue);
    h.response_body = b"data: {\"choices\":[]}\n\n".to_vec();
    let n = h.response_body.len();
    f.on_response_body(&mut h, n, true);
    let body = String::from_utf8_lossy(&h.response_body).into_owned();
    assert!(
        body.ends_with("\n\n") && body.contains("\"error\""),
        "{body}"
    );
    assert_eq!(h.filter_state(STREAM_KEY).as_deref(), Some("broken"));
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Cooling);
}

#[test]
fn a_finished_stream_is_left_alone() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    sse(&mut f, &mut h);
    h.response_body = b"data: {}\n\ndata: [DONE]\n\n".to_vec();
    let n = h.response_body.len();
    f.on_response_body(&mut h, n, true);
    assert_eq!(h.response_body.len(), n);
    f.on_done(&mut h);
    assert_eq!(h.filter_state(STREAM_KEY), None);
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Healthy);
}

#[test]
fn a_stream_reset_midway_is_the_providers_failure() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started("{}", &mut h);
    sse(&mut f, &mut h);
    h.response_body = b"data: {}\n\n".to_vec();
    f.on_response_body(&mut h, 10, false);
    f.on_done(&mut h);
    assert_eq!(h.filter_state(STREAM_KEY).as_deref(), Some("reset"));
}

#[test]
fn a_stream_silent_for_stream_idle_timeout_stalled() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started(r#"{"streamIdleTimeout":"1s"}"#, &mut h);
    sse(&mut f, &mut h);
    h.response_body = b"data: {}\n\n".to_vec();
    f.on_response_body(&mut h, 10, false);
    h.now.set(NOW + 1_000);
    f.on_done(&mut h);
    assert_eq!(h.filter_state(STREAM_KEY).as_deref(), Some("stall"));
}

#[test]
fn with_first_token_timeout_a_stream_is_held_until_its_first_event() {
    let mut h = routed(None, "ca");
    let (mut f, _) = started(r#"{"firstTokenTimeout":"1s"}"#, &mut h);
    assert_eq!(sse(&mut f, &mut h), Action::Pause);
    // No first event: abandoned, and the router goes on to the next provider.
    f.on_done(&mut h);
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("stall"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
}

#[test]
fn the_first_event_records_the_success() {
    let mut h = routed(None, "ca");
    let c = config(r#"{"firstTokenTimeout":"1s"}"#);
    // a had a failure: its plan entry says a success resets it.
    let failed = crate::health::HealthRecord {
        failures: 1,
        ..Default::default()
    };
    crate::store::SharedData::set(&h, &c.providers[0].health_key, &failed.encode(), None).unwrap();
    h.set_property_str(PLAN_KEY, "=0!,1,2");
    let (mut f, _) = started(r#"{"firstTokenTimeout":"1s"}"#, &mut h);
    sse(&mut f, &mut h);
    assert_eq!(record(&h, &c, 0).failures, 1);
    h.response_body = b"data: {}\n\n".to_vec();
    assert_eq!(f.on_response_body(&mut h, 10, false), Action::Continue);
    assert_eq!(record(&h, &c, 0).failures, 0);
}

#[test]
fn a_retry_to_the_provider_a_hedge_is_out_to_is_held() {
    let mut h = routed(Some("1"), "cb");
    h.set_property_str(HEDGED_TO_KEY, &hedge::mark(5, 1));
    let live: Rc<RefCell<Live>> = Rc::default();
    let mut f = attempt(&config(r#"{"hedgeAfter":"100ms"}"#), &live);
    assert_eq!(f.on_request_headers(&mut h, false), Action::Pause);
    assert_eq!(h.filter_state(HELD_KEY).as_deref(), Some("1"));
    h.request_body = b"{}".to_vec();
    assert_eq!(f.on_request_body(&mut h, 2, true), Action::Pause);
    // Never sent: nobody's failure.
    f.on_done(&mut h);
    assert_eq!(record(&h, &config("{}"), 1).state(NOW), State::Healthy);
    assert_eq!(h.filter_state(NEXT_KEY), None);
}

fn hedge_attempt(mark: &str) -> (AttemptFilter, MockHost, Rc<RefCell<Live>>) {
    let mut h = MockHost::at(NOW).with_request(&[(":path", "/v1/chat"), (HEDGE_HEADER, mark)]);
    h.properties
        .insert("xds.cluster_name".into(), b"cb".to_vec());
    let (f, live) = started("{}", &mut h);
    (f, h, live)
}

#[test]
fn a_hedge_finds_its_provider_in_its_mark() {
    let (_, h, live) = hedge_attempt(&hedge::mark(5, 1));
    assert_eq!(h.header(HEDGE_HEADER), None);
    assert_eq!(h.header(":authority").as_deref(), Some("b.example"));
    assert!(live.borrow().has_hedges_out());
}

#[test]
fn a_cancelled_hedge_is_not_the_providers_failure() {
    let (mut f, mut h, live) = hedge_attempt(&hedge::mark(5, 1));
    assert_eq!(live.borrow_mut().to_cancel(&hedge::with_id(None, 5)), [9]);
    f.on_done(&mut h);
    assert_eq!(record(&h, &config("{}"), 1).state(NOW), State::Healthy);
}

#[test]
fn a_forged_hedge_mark_for_another_cluster_is_ignored() {
    let (_, h, live) = hedge_attempt(&hedge::mark(5, 0));
    assert_eq!(h.header(HEDGE_HEADER), None);
    assert!(!live.borrow().has_hedges_out());
    // The cluster's own provider, not the one the mark named (a's key).
    assert_eq!(h.header("authorization").as_deref(), Some("Bearer key-b"));
}

#[test]
fn a_probe_is_its_own_one_step_plan() {
    let mut h = MockHost::at(NOW).with_request(&[
        (":path", "/v1/chat"),
        ("content-length", "20"),
        (PROBE_HEADER, "0"),
    ]);
    h.properties
        .insert("xds.cluster_name".into(), b"ca".to_vec());
    let (mut f, _) = started("{}", &mut h);
    assert_eq!(h.header(PROBE_HEADER), None);
    assert_eq!(h.header("authorization").as_deref(), Some("Bearer key-a"));
    // Its body gets a's model: the call's length no longer holds.
    assert_eq!(h.header("content-length"), None);
    // It fails: recorded, and nothing else to name.
    f.on_done(&mut h);
    assert_eq!(record(&h, &config("{}"), 0).state(NOW), State::Cooling);
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some(EXHAUSTED_CLUSTER));
}
