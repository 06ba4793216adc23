//! The downstream filter in router mode.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::health::{HealthRecord, State};
use crate::hedge::{self, Hedges};
use crate::mock_host::pairs;

use super::super::hedging::Hedger;
use crate::host::{Action, Host};
use crate::names::*;

const BODY: &[u8] = br#"{"model":"gpt","messages":[]}"#;

fn planned(failover: &str, h: &mut MockHost, end_of_stream: bool) -> (Downstream, Action) {
    let c = config(failover);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    let action = f.on_request_headers(h, end_of_stream);
    (f, action)
}

fn body(f: &mut Downstream, h: &mut MockHost, bytes: &[u8]) -> Action {
    h.request_body = bytes.to_vec();
    f.on_request_body(h, bytes.len(), true)
}

#[test]
fn the_first_attempt_is_planned_named_and_rewritten_here() {
    let mut h = client(NOW);
    let (_, action) = planned("{}", &mut h, false);
    // Held until the body says whether the answer is streamed (its route).
    assert_eq!(action, Action::Pause);
    // Every provider overrides the model: the first body is rewritten here too.
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=0,1,2"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("ca"));
    assert_eq!(h.header("x-envoy-max-retries").as_deref(), Some("2"));
    assert_eq!(h.header(":authority").as_deref(), Some("a.example"));
    assert_eq!(h.header(":path").as_deref(), Some("/v1/a?x=1"));
    assert_eq!(h.header("authorization").as_deref(), Some("Bearer key-a"));
    // The rewritten body has another length.
    assert_eq!(h.header("content-length"), None);
    // The client's own values, for the later attempts.
    let kept = h.filter_state(CLIENT_HEADERS_KEY).unwrap_or_default();
    assert!(kept.contains("authorization\nBearer client\n"), "{kept}");
    assert!(kept.contains(":path\n/v1/chat/completions?x=1\n"), "{kept}");
}

#[test]
fn a_cooling_provider_is_left_out_of_the_plan() {
    let mut h = client(NOW);
    let c = config("{}");
    cool(&h, &c, 0, NOW + 10_000);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    downstream(&c, &hedges).on_request_headers(&mut h, false);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=1,2"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cb"));
    assert_eq!(h.header("x-envoy-max-retries").as_deref(), Some("1"));
    assert_eq!(h.header("authorization").as_deref(), Some("Bearer key-b"));
}

#[test]
fn the_body_gets_the_first_providers_model_and_goes_on() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, false);
    assert_eq!(body(&mut f, &mut h, BODY), Action::Continue);
    assert_eq!(h.request_body, br#"{"model":"m-a","messages":[]}"#.to_vec());
    // Not streamed: never the streamed route, whatever the client sent.
    assert_eq!(h.header(STREAMED_HEADER), None);
    assert_eq!(h.filter_state(STREAMED_KEY), None);
}

#[test]
fn a_streamed_body_takes_the_streamed_route() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, false);
    body(&mut f, &mut h, br#"{"model":"gpt","stream":true}"#);
    assert_eq!(h.header(STREAMED_HEADER).as_deref(), Some("1"));
    assert_eq!(h.filter_state(STREAMED_KEY).as_deref(), Some("1"));
}

#[test]
fn a_body_that_is_not_json_is_refused_with_400() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, false);
    assert_eq!(body(&mut f, &mut h, b"{not json"), Action::Pause);
    assert_eq!(h.replies.len(), 1);
    assert_eq!(h.replies[0].status, 400);
    assert!(String::from_utf8_lossy(&h.replies[0].body).contains("\"invalid_json\""));
    // The upstream filter must not blame the provider for the reset this causes.
    assert_eq!(h.filter_state(REFUSED_KEY).as_deref(), Some("1"));
}

#[test]
fn a_compressed_body_is_refused_with_415() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, false);
    body(&mut f, &mut h, &[0x1f, 0x8b, 8, 0, 0]);
    assert_eq!(h.replies[0].status, 415);
    assert!(String::from_utf8_lossy(&h.replies[0].body).contains("gzip"));
}

/// One provider with a model to write, and a 10-byte body limit.
fn ten_byte_limit() -> Rc<Config> {
    let json = br#"{"maxBodyBytes":10,"groups":[{"providers":[
        {"name":"a","cluster":"ca","openai":{"model":"m"}}]}]}"#;
    Rc::new(Config::parse(json, &|_| None).unwrap())
}

#[test]
fn a_body_longer_than_the_limit_is_refused_with_413_at_its_headers() {
    let c = ten_byte_limit();
    let mut h = client(NOW);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    assert_eq!(f.on_request_headers(&mut h, false), Action::Pause);
    assert_eq!(h.replies[0].status, 413);
    assert!(String::from_utf8_lossy(&h.replies[0].body).contains("request_too_large"));
    // The reply is the answer: later callbacks let it pass.
    h.set_response(&[(":status", "413")]);
    assert_eq!(f.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.response(PROVIDER_HEADER), None);
}

#[test]
fn a_chunk_longer_than_the_limit_is_refused_with_413() {
    let c = ten_byte_limit();
    let mut h = client(NOW);
    h.remove_request_header("content-length");
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    f.on_request_headers(&mut h, false);
    assert!(h.replies.is_empty());
    assert_eq!(body(&mut f, &mut h, BODY), Action::Pause);
    assert_eq!(h.replies[0].status, 413);
}

#[test]
fn the_answer_names_the_provider_the_upstream_filters_moved_to() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, true);
    h.set_property_str(PATH_KEY, "0,1");
    h.set_response(&[(":status", "200")]);
    assert_eq!(f.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.response(PROVIDER_HEADER).as_deref(), Some("b"));
    assert_eq!(h.filter_state(TRIED_KEY).as_deref(), Some("a,b"));
    assert_eq!(h.filter_state(ATTEMPTS_KEY).as_deref(), Some("2"));
    assert_eq!(h.metric("llm_failover.requests.provider.b.status.2xx"), 1);
}

#[test]
fn the_retry_status_goes_back_to_the_providers_own_when_the_router_stops() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, true);
    h.set_property_str(STATUS_KEY, "429");
    h.set_response(&[(":status", "591")]);
    f.on_response_headers(&mut h);
    assert_eq!(h.response(":status").as_deref(), Some("429"));
    assert_eq!(h.response(PROVIDER_HEADER).as_deref(), Some("a"));
    assert_eq!(h.metric("llm_failover.requests.provider.a.status.4xx"), 1);
}

#[test]
fn an_attempt_envoy_could_not_start_is_recorded_here() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, true);
    h.properties.insert(
        "response.code_details".into(),
        b"cluster_not_found".to_vec(),
    );
    h.properties
        .insert("response.flags".into(), (1u64 << 24).to_le_bytes().to_vec());
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    let c = config("{}");
    assert_eq!(record(&h, &c, 0).state(NOW), State::Cooling);
    assert_eq!(h.response(PROVIDER_HEADER).as_deref(), Some("a"));
}

#[test]
fn a_whole_request_waits_for_its_hedge() {
    let c = config(r#"{"hedgeAfter":"100ms"}"#);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut h = client(NOW);
    downstream(&c, &hedges).on_request_headers(&mut h, true);
    assert!(hedges.borrow().due(NOW + 99).is_empty());
    let due = hedges.borrow().due(NOW + 100);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].context, 7);
    assert_eq!(
        due[0].plan.iter().map(|s| s.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
}

fn hedged() -> (Rc<RefCell<Hedges>>, Downstream, MockHost) {
    let c = config(r#"{"hedgeAfter":"100ms"}"#);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut h = client(NOW);
    let mut f = downstream(&c, &hedges);
    f.on_request_headers(&mut h, true);
    hedges.borrow_mut().take_request(7);
    hedges.borrow_mut().asked(7, 1, 5, 0, 1);
    (hedges, f, h)
}

#[test]
fn a_hedge_that_won_is_counted_as_the_answer() {
    let (hedges, mut f, mut h) = hedged();
    hedges.borrow_mut().won(7, 0, 1);
    h.set_response(&[(":status", "200")]);
    assert_eq!(f.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.metric("llm_failover.hedges.from.a.to.b.winner.b"), 1);
    assert_eq!(h.metric("llm_failover.requests.provider.b.status.2xx"), 1);
    assert_eq!(h.filter_state(TRIED_KEY).as_deref(), Some("a,b"));
}

#[test]
fn the_routed_answer_first_cancels_the_hedge() {
    let (_, mut f, mut h) = hedged();
    h.set_response(&[(":status", "200")]);
    f.on_response_headers(&mut h);
    let (list, _) = crate::store::SharedData::get(&h, CANCEL_KEY).unwrap();
    assert_eq!(hedge::ids_in(&list.unwrap_or_default()), [5]);
    assert_eq!(h.filter_state(HEDGE_KEY).as_deref(), Some("b:lost"));
    assert_eq!(h.metric("llm_failover.hedges.from.a.to.b.winner.a"), 1);
}

#[test]
fn a_client_that_goes_away_cancels_its_hedge() {
    let (_, mut f, mut h) = hedged();
    f.on_log(&mut h);
    let (list, _) = crate::store::SharedData::get(&h, CANCEL_KEY).unwrap();
    assert_eq!(hedge::ids_in(&list.unwrap_or_default()), [5]);
}

#[test]
fn a_client_that_goes_away_gives_back_its_probe_claim() {
    let c = config("{}");
    let mut h = client(NOW);
    // a's cooldown is over: this request claims its probe.
    cool(&h, &c, 0, NOW - 1);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    f.on_request_headers(&mut h, true);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("0!,1,2"));
    assert_eq!(record(&h, &c, 0).state(NOW), State::Probing);
    f.on_log(&mut h);
    assert_eq!(record(&h, &c, 0).state(NOW), State::HalfOpen);
}

#[test]
fn every_provider_cooling_plans_the_one_back_first_and_says_when() {
    let c = config("{}");
    let mut h = client(NOW);
    cool(&h, &c, 0, NOW + 30_000);
    cool(&h, &c, 1, NOW + 10_000);
    cool(&h, &c, 2, NOW + 20_000);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut f = downstream(&c, &hedges);
    f.on_request_headers(&mut h, true);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("1!"));
    h.set_response(&[(":status", "503")]);
    f.on_response_headers(&mut h);
    assert_eq!(h.response("retry-after").as_deref(), Some("10"));
    let _ = HealthRecord::default();
}

#[test]
fn a_request_asks_to_be_woken_when_its_hedge_is_due() {
    let c = config(r#"{"hedgeAfter":"100ms"}"#);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut h = client(NOW);
    downstream(&c, &hedges).on_request_headers(&mut h, true);
    assert_eq!(h.wakes, [NOW + 100]);
}

#[test]
fn a_host_that_cancels_calls_cancels_the_losing_hedge_itself() {
    let (_, mut f, mut h) = hedged();
    h.cancels_calls = true;
    h.set_response(&[(":status", "200")]);
    f.on_response_headers(&mut h);
    assert_eq!(h.cancelled_calls, [1]);
    let (list, _) = crate::store::SharedData::get(&h, CANCEL_KEY).unwrap();
    assert!(hedge::ids_in(&list.unwrap_or_default()).is_empty());
    assert_eq!(h.filter_state(HEDGE_KEY).as_deref(), Some("b:lost"));
}

/// A request on a host that wakes each request itself (native): it sends its own
/// hedge when woken and gets the answer in its own filter.
#[test]
fn a_woken_request_sends_its_hedge_and_takes_its_answer() {
    let c = config(r#"{"hedgeAfter":"100ms"}"#);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let telemetry = Telemetry::new();
    let hedger = Rc::new(Hedger::new(
        Rc::clone(&c),
        Rc::clone(&hedges),
        Rc::clone(&telemetry),
    ));
    let mut f = Downstream::new(
        Rc::clone(&c),
        telemetry,
        0,
        7,
        Rc::clone(&hedges),
        Some(hedger),
    );
    let mut h = client(NOW);
    h.live.insert(7);
    crate::contexts::hedging::prepare_store(&h);
    f.on_request_headers(&mut h, true);
    h.now.set(NOW + 100);
    f.on_wake(&mut h);
    assert_eq!(h.calls.len(), 1);
    assert_eq!(h.calls[0].cluster, "cb");
    h.call_headers = pairs(&[(":status", "200")]);
    h.call_body = b"hedged".to_vec();
    f.on_call_response(&mut h, 1, 6);
    assert_eq!(h.replies.len(), 1);
    assert_eq!(h.replies[0].status, 200);
    // Its own reply does not pass its response-header hook natively: named and
    // counted when it is sent.
    assert_eq!(h.metric("llm_failover.hedges.from.a.to.b.winner.b"), 1);
    assert_eq!(h.metric("llm_failover.requests.provider.b.status.2xx"), 1);
    assert_eq!(h.filter_state(TRIED_KEY).as_deref(), Some("a,b"));
    // And if the hook runs after all, nothing is counted twice.
    h.set_response(&[(":status", "200")]);
    f.on_response_headers(&mut h);
    assert_eq!(h.metric("llm_failover.requests.provider.b.status.2xx"), 1);
}

/// `failover` plus per-request control (its secret is `CONTROL_SECRET`).
const CONTROLLED: &str = r#"{"hedgeAfter": "2s"}, "control": {"secret": {"env": "CONTROL"},
    "firstByteTimeout": {"min": "1s", "max": "10s"}}"#;

fn with_headers(extra: &[(&str, &str)]) -> MockHost {
    let mut h = client(NOW);
    for (name, value) in extra {
        h.request_headers
            .push((name.to_string(), value.as_bytes().to_vec()));
    }
    h
}

#[test]
fn a_trusted_request_plans_its_own_order_and_timeout_and_its_headers_go() {
    let mut h = with_headers(&[
        (CONTROL_SECRET_HEADER, CONTROL_SECRET),
        (CONTROL_PROVIDERS_HEADER, "c,a"),
        (CONTROL_FIRST_BYTE_HEADER, "3s"),
        (CONTROL_HEDGE_HEADER, "off"),
    ]);
    let (_, action) = planned(CONTROLLED, &mut h, false);
    assert_eq!(action, Action::Pause);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=2,0"));
    assert_eq!(h.filter_state(NEXT_KEY).as_deref(), Some("cc"));
    assert_eq!(h.header("x-envoy-max-retries").as_deref(), Some("1"));
    assert_eq!(h.header(PER_TRY_TIMEOUT_HEADER).as_deref(), Some("3000"));
    assert_eq!(h.filter_state(CONTROL_TIMEOUT_KEY).as_deref(), Some("3000"));
    assert_eq!(
        h.filter_state(CONTROL_KEY).as_deref(),
        Some("applied: providers=c,a first-byte-timeout=3000ms hedge-after=off")
    );
    for name in CONTROL_HEADERS {
        assert_eq!(h.header(name), None, "{name}");
    }
}

#[test]
fn fallback_off_plans_one_provider() {
    let mut h = with_headers(&[
        (CONTROL_SECRET_HEADER, CONTROL_SECRET),
        (CONTROL_FALLBACK_HEADER, "off"),
    ]);
    planned(CONTROLLED, &mut h, false);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=0"));
    assert_eq!(h.header("x-envoy-max-retries").as_deref(), Some("0"));
}

#[test]
fn a_named_provider_that_cools_is_skipped_and_all_cooling_takes_the_soonest_named() {
    let c = config(CONTROLLED);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let mut h = with_headers(&[
        (CONTROL_SECRET_HEADER, CONTROL_SECRET),
        (CONTROL_PROVIDERS_HEADER, "b,c"),
    ]);
    cool(&h, &c, 1, NOW + 10_000);
    downstream(&c, &hedges).on_request_headers(&mut h, false);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=2"));
    let mut h = with_headers(&[
        (CONTROL_SECRET_HEADER, CONTROL_SECRET),
        (CONTROL_PROVIDERS_HEADER, "b,c"),
    ]);
    cool(&h, &c, 1, NOW + 10_000);
    cool(&h, &c, 2, NOW + 5_000);
    downstream(&c, &hedges).on_request_headers(&mut h, false);
    // Never `a`, which the request did not name, though it is healthy.
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=2!"));
}

#[test]
fn untrusted_control_headers_and_a_clients_per_try_timeout_are_removed_and_ignored() {
    let mut h = with_headers(&[
        (CONTROL_SECRET_HEADER, "control-secret-for-unit-testz"),
        (CONTROL_PROVIDERS_HEADER, "c"),
        (PER_TRY_TIMEOUT_HEADER, "1"),
    ]);
    planned(CONTROLLED, &mut h, false);
    assert_eq!(h.filter_state(PLAN_KEY).as_deref(), Some("=0,1,2"));
    assert_eq!(
        h.filter_state(CONTROL_KEY).as_deref(),
        Some("ignored: wrong secret (x-llm-failover-secret, x-llm-failover-providers)")
    );
    assert_eq!(h.header(CONTROL_SECRET_HEADER), None);
    assert_eq!(h.header(CONTROL_PROVIDERS_HEADER), None);
    assert_eq!(h.header(PER_TRY_TIMEOUT_HEADER), None);
    assert_eq!(h.filter_state(CONTROL_TIMEOUT_KEY), None);
}

#[test]
fn a_request_without_control_headers_leaves_no_trace() {
    let mut h = client(NOW);
    planned(CONTROLLED, &mut h, false);
    assert_eq!(h.filter_state(CONTROL_KEY), None);
    assert_eq!(h.header(PER_TRY_TIMEOUT_HEADER), None);
}

#[test]
fn a_trusted_request_with_a_bad_value_gets_a_400_and_no_attempt() {
    let mut h = with_headers(&[
        (CONTROL_SECRET_HEADER, CONTROL_SECRET),
        (CONTROL_FIRST_BYTE_HEADER, "20s"),
    ]);
    let (_, action) = planned(CONTROLLED, &mut h, false);
    assert_eq!(action, Action::Pause);
    assert_eq!(h.replies.len(), 1);
    assert_eq!(h.replies[0].status, 400);
    let body = String::from_utf8_lossy(&h.replies[0].body).to_string();
    assert!(
        body.contains("outside the bounds") && body.contains("invalid_control_header"),
        "{body}"
    );
    assert_eq!(h.filter_state(PLAN_KEY), None);
    assert!(h
        .filter_state(CONTROL_KEY)
        .unwrap_or_default()
        .starts_with("refused: "));
}

#[test]
fn the_tried_header_names_each_provider_and_why() {
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, true);
    h.set_property_str(PATH_KEY, "0,0,1");
    h.set_property_str(WHYS_KEY, "server_error,overloaded");
    h.response_headers = pairs(&[(":status", "200")]);
    f.on_response_headers(&mut h);
    assert_eq!(
        h.response_header(TRIED_HEADER)
            .as_deref()
            .map(String::from_utf8_lossy)
            .as_deref(),
        Some("a=server_error, a=overloaded, b=200")
    );
}

#[test]
fn an_attempt_the_router_never_made_is_not_named() {
    // The upstream filter named b next and turned a's 429 into the retry status, but
    // the router had no retry left: a's own status goes back, named after a.
    let mut h = client(NOW);
    let (mut f, _) = planned("{}", &mut h, true);
    h.set_property_str(PATH_KEY, "0,1");
    h.set_property_str(WHYS_KEY, "rate_limited");
    h.set_property_str(STATUS_KEY, "429");
    h.response_headers = pairs(&[(":status", "591")]);
    f.on_response_headers(&mut h);
    let header = |name: &str| {
        h.response_header(name)
            .map(|v| String::from_utf8_lossy(&v).to_string())
    };
    assert_eq!(header(":status").as_deref(), Some("429"));
    assert_eq!(header(PROVIDER_HEADER).as_deref(), Some("a"));
    assert_eq!(header(TRIED_HEADER), None);
}
