//! Hedges sent from the downstream root's tick, and their cancels.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::hedge::{self, Ending, Hedges, Live};
use crate::host::Host;
use crate::mock_host::pairs;
use crate::names::*;
use crate::plan::{Plan, Step};

use super::super::hedging::{self as hedging_ctx, Hedger};

const HEDGED: &str = r#"{"hedgeAfter":"100ms"}"#;

/// Request 7 waiting for its hedge since `NOW`, and the root's hedger.
fn waiting() -> (Hedger, Rc<RefCell<Hedges>>, MockHost) {
    let c = config(HEDGED);
    let hedges: Rc<RefCell<Hedges>> = Rc::default();
    let hedger = Hedger::new(Rc::clone(&c), Rc::clone(&hedges), Telemetry::new());
    let mut h = MockHost::at(NOW);
    h.live.insert(7);
    hedging_ctx::prepare_store(&h);
    let plan = Plan {
        steps: vec![
            Step::new(0, false),
            Step::new(1, false),
            Step::new(2, false),
        ],
        ..Plan::default()
    };
    let request = hedge::Request {
        headers: pairs(&[
            (":path", "/v1/chat/completions"),
            ("authorization", "Bearer client"),
            (STREAMED_HEADER, "1"),
        ]),
        body: Some(b"{}".to_vec()),
    };
    hedges.borrow_mut().wait(7, NOW, 100, plan.steps, request);
    (hedger, hedges, h)
}

#[test]
fn a_due_hedge_goes_to_the_next_provider_of_the_plan() {
    let (hedger, _, mut h) = waiting();
    hedger.tick(&mut h, NOW + 99);
    assert!(h.calls.is_empty(), "not due yet");
    hedger.tick(&mut h, NOW + 100);
    assert_eq!(h.calls.len(), 1);
    let call = &h.calls[0];
    assert_eq!(call.cluster, "cb");
    assert_eq!(call.body.as_deref(), Some(&b"{}"[..]));
    let mark = hedge::mark(1, 1);
    assert!(call
        .headers
        .contains(&(HEDGE_HEADER.to_string(), mark.clone())));
    // Only the routed attempt needs the route's headers.
    assert!(!call.headers.iter().any(|(n, _)| n == STREAMED_HEADER));
    // A retry the router may still send to b waits for this hedge.
    assert_eq!(h.filter_state(HEDGED_TO_KEY), Some(mark));
}

#[test]
fn a_request_the_router_moved_on_is_hedged_past_its_attempt() {
    let (hedger, _, mut h) = waiting();
    h.set_property_str(AT_KEY, "1");
    hedger.tick(&mut h, NOW + 100);
    assert_eq!(h.calls[0].cluster, "cc");
}

#[test]
fn no_hedge_when_every_later_provider_cools() {
    let (hedger, hedges, mut h) = waiting();
    let c = config(HEDGED);
    cool(&h, &c, 1, NOW + 10_000);
    cool(&h, &c, 2, NOW + 10_000);
    hedger.tick(&mut h, NOW + 100);
    assert!(h.calls.is_empty());
    assert!(hedges.borrow().is_empty());
}

#[test]
fn no_hedge_for_a_request_that_is_gone() {
    let (hedger, hedges, mut h) = waiting();
    h.live.clear();
    hedger.tick(&mut h, NOW + 100);
    assert!(h.calls.is_empty());
    assert!(hedges.borrow().is_empty());
}

fn answered(status: &str, held: bool) -> MockHost {
    let (hedger, _, mut h) = waiting();
    hedger.tick(&mut h, NOW + 100);
    if held {
        h.set_property_str(HELD_KEY, "1");
    }
    h.call_headers = pairs(&[(":status", status)]);
    h.call_body = b"hedged".to_vec();
    h.acting_for = None;
    hedger.answer(&mut h, 1, 6);
    h
}

#[test]
fn a_good_hedge_answer_is_the_clients() {
    let h = answered("200", false);
    assert_eq!(h.replies.len(), 1);
    assert_eq!(h.replies[0].for_context, Some(7));
    assert_eq!(h.replies[0].status, 200);
    assert!(h.replies[0]
        .headers
        .contains(&(PROVIDER_HEADER.to_string(), "b".to_string())));
    // The routed attempt's reset is the gateway's doing, not a's.
    assert_eq!(h.filter_state(REFUSED_KEY).as_deref(), Some("hedge"));
    assert_eq!(h.filter_state(HEDGE_KEY).as_deref(), Some("b:won"));
}

#[test]
fn a_failing_hedge_leaves_the_routed_attempt_alone() {
    let h = answered("503", false);
    assert!(h.replies.is_empty());
    assert_eq!(h.filter_state(HEDGE_KEY).as_deref(), Some("b:failed"));
    assert_eq!(h.filter_state(HEDGED_TO_KEY).as_deref(), Some(""));
    assert_eq!(h.metric("llm_failover.hedges.from.a.to.b.winner.a"), 1);
}

#[test]
fn a_failing_hedge_a_retry_waits_for_is_the_clients() {
    let h = answered("503", true);
    assert_eq!(h.replies.len(), 1);
    assert_eq!(h.replies[0].status, 503);
    assert_eq!(h.filter_state(HEDGE_KEY).as_deref(), Some("b:failed"));
}

#[test]
fn the_upstream_root_resets_the_hedges_on_the_cancel_list() {
    let mut h = MockHost::at(NOW);
    h.live.insert(9);
    let live: RefCell<Live> = RefCell::default();
    live.borrow_mut().started(5, 9);
    live.borrow_mut().started(6, 10);
    hedging_ctx::cancel(&h, 5);
    hedging_ctx::poll_cancels(&mut h, &live);
    assert_eq!(h.resets, [Some(9)]);
    assert!(live.borrow().has_hedges_out(), "hedge 6 goes on");
}

#[test]
fn a_request_woken_early_asks_again_and_is_hedged_when_due() {
    let (hedger, _, mut h) = waiting();
    hedger.wake(&mut h, 7, NOW + 99);
    assert!(h.calls.is_empty());
    assert_eq!(h.wakes, [NOW + 100]);
    hedger.wake(&mut h, 8, NOW + 100);
    assert!(h.calls.is_empty(), "another request's wake sends nothing");
    hedger.wake(&mut h, 7, NOW + 100);
    assert_eq!(h.calls.len(), 1);
}

#[test]
fn an_answer_goes_to_its_own_request_when_tokens_repeat() {
    // Natively each stream numbers its own calls: requests 7 and 8 both sent call 1.
    let (hedger, hedges, mut h) = waiting();
    hedger.tick(&mut h, NOW + 100);
    hedges.borrow_mut().wait(
        8,
        NOW,
        100,
        vec![Step::new(0, false), Step::new(1, false)],
        hedge::Request::default(),
    );
    hedges.borrow_mut().asked(8, 1, 9, 0, 1);
    h.live.insert(8);
    h.call_headers = pairs(&[(":status", "200")]);
    h.call_body = b"hedged".to_vec();
    assert_eq!(hedger.answer_own(&mut h, 8, 1, 6), Some(200));
    assert_eq!(h.replies[0].for_context, Some(8));
    assert_eq!(
        hedges.borrow_mut().end(7),
        Ending::RoutedWon {
            token: 1,
            id: 1,
            from: 0,
            to: 1
        }
    );
}

#[test]
fn a_hedge_without_an_answer_is_its_providers_failure_where_ends_go_unreported() {
    for unreported in [false, true] {
        let (hedger, _, mut h) = waiting();
        h.unreported = unreported;
        hedger.tick(&mut h, NOW + 100);
        h.acting_for = None;
        assert_eq!(hedger.answer(&mut h, 1, 0), None);
        let c = config(HEDGED);
        // Reported: the hedge's upstream filter recorded it.
        let recorded = record(&h, &c, 1).last_failure_ms != 0;
        assert_eq!(recorded, unreported, "unreported: {unreported}");
    }
}

#[test]
fn natively_the_attempt_under_way_is_the_open_one() {
    // The upstream filter named the next attempt (c) in advance while a's attempt
    // is still open: the hedge goes to b, past a.
    let (hedger, _, mut h) = waiting();
    h.unreported = true;
    h.set_property_str(AT_KEY, "1");
    crate::contexts::unreported::mark(&mut h, crate::plan::At::default(), NOW);
    hedger.tick(&mut h, NOW + 100);
    assert_eq!(h.calls[0].cluster, "cb");
}
