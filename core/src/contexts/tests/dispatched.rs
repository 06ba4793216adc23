//! The downstream filter in dispatch mode.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::health::State;
use crate::hedge::Hedges;
use crate::host::Action;
use crate::names::*;

const DISPATCH: &str = r#"{"mode":"dispatch"}"#;

/// A request through its headers and body, sent to the first provider.
fn sent() -> (Downstream, MockHost) {
    let c = config(DISPATCH);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    let mut h = client(NOW);
    assert_eq!(f.on_request_headers(&mut h, false), Action::Continue);
    h.request_body = br#"{"model":"gpt"}"#.to_vec();
    assert_eq!(f.on_request_body(&mut h, 15, true), Action::Continue);
    (f, h)
}

#[test]
fn the_first_provider_gets_the_rewritten_request() {
    let (_, h) = sent();
    assert_eq!(h.header(":authority").as_deref(), Some("a.example"));
    assert_eq!(h.header("authorization").as_deref(), Some("Bearer key-a"));
    assert_eq!(h.header(DEFAULT_CLUSTER_HEADER).as_deref(), Some("ca"));
    assert_eq!(h.header("content-length"), None);
    assert_eq!(h.request_body, br#"{"model":"m-a"}"#.to_vec());
}

#[test]
fn a_429_sends_the_clients_own_request_to_the_next_provider() {
    let (mut f, mut h) = sent();
    h.set_response(&[(":status", "429")]);
    assert_eq!(f.on_response_headers(&mut h), Action::Pause);
    // The failed answer's body is held back.
    assert_eq!(f.on_response_body(&h), Action::Pause);
    assert_eq!(h.calls.len(), 1);
    let call = &h.calls[0];
    assert_eq!(call.cluster, "cb");
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    // Built from the client's headers, never from a's rewritten copy.
    assert_eq!(header("authorization"), Some("Bearer key-b"));
    assert_eq!(header(":authority"), Some("b.example"));
    assert_eq!(header(":path"), Some("/v1/chat/completions?x=1"));
    assert_eq!(header(DEFAULT_CLUSTER_HEADER), None);
    assert_eq!(call.body.as_deref(), Some(&br#"{"model":"m-b"}"#[..]));
    assert_eq!(record(&h, &config(DISPATCH), 0).state(NOW), State::Cooling);
}

#[test]
fn the_calls_good_answer_is_the_clients() {
    let (mut f, mut h) = sent();
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    h.call_headers = crate::mock_host::pairs(&[(":status", "200"), ("x-from", "b")]);
    h.call_body = b"answer".to_vec();
    f.on_call_response(&mut h, 1, 6);
    assert_eq!(h.replies.len(), 1);
    let reply = &h.replies[0];
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"answer"[..]));
    assert!(reply
        .headers
        .contains(&(PROVIDER_HEADER.to_string(), "b".to_string())));
    assert_eq!(h.filter_state(TRIED_KEY).as_deref(), Some("a,b"));
    assert_eq!(h.filter_state(REASON_KEY).as_deref(), Some("server_error"));
    assert_eq!(h.metric("llm_failover.requests.provider.b.status.2xx"), 1);
}

#[test]
fn an_answer_to_another_call_is_ignored() {
    let (mut f, mut h) = sent();
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    f.on_call_response(&mut h, 99, 0);
    assert!(h.replies.is_empty());
}

#[test]
fn a_call_without_an_answer_goes_on_to_the_next() {
    let (mut f, mut h) = sent();
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    // The call to b was reset: no headers.
    f.on_call_response(&mut h, 1, 0);
    assert_eq!(h.calls.len(), 2);
    assert_eq!(h.calls[1].cluster, "cc");
    assert_eq!(record(&h, &config(DISPATCH), 1).state(NOW), State::Cooling);
}

#[test]
fn a_cluster_envoy_does_not_have_is_skipped() {
    let (mut f, mut h) = sent();
    h.dispatch_refused = true;
    h.set_response(&[(":status", "503")]);
    // Nobody left to ask: the routed answer goes to the client.
    assert_eq!(f.on_response_headers(&mut h), Action::Continue);
    let c = config(DISPATCH);
    assert_eq!(record(&h, &c, 1).state(NOW), State::Cooling);
    assert_eq!(record(&h, &c, 2).state(NOW), State::Cooling);
    // The answer is a's, and says so.
    assert_eq!(h.response(PROVIDER_HEADER).as_deref(), Some("a"));
    // Every provider cools: the client is told when one is back.
    assert!(h.response("retry-after").is_some());
}

#[test]
fn a_good_answer_passes_and_is_named() {
    let (mut f, mut h) = sent();
    h.set_response(&[(":status", "200")]);
    assert_eq!(f.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.response(PROVIDER_HEADER).as_deref(), Some("a"));
    assert_eq!(f.on_response_body(&h), Action::Continue);
    assert!(h.calls.is_empty());
}
