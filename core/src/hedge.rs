//! Hedging (`failover.hedgeAfter`, router mode): the bookkeeping, pure.
//!
//! A request without response headers `hedgeAfter` after it went to the router is
//! also sent, at most once, to the next provider of its plan that the router has not
//! reached yet and that is not cooling.
//! Envoy's own hedging cannot do this (measured in 1.40: a hedged attempt keeps the
//! first attempt's cluster), so the root context of each worker sends the hedge with
//! `dispatch_http_call` and answers the client with it if it wins:
//! - the routed attempt's response headers come first: it wins; the hedge is put on
//!   the cancel list in shared data, and its upstream filter (which polls that list)
//!   resets it, so the provider sees its connection close;
//! - the hedge's whole answer comes first (a call's answer arrives in one piece):
//!   it wins if it is not a failure; the client gets it as the filter's reply, which
//!   ends the stream, and with it the routed attempt;
//! - the routed attempt fails after the hedge went out and Envoy's retry goes to the
//!   hedge's provider: that retry is held, never sent, and the hedge's answer (good
//!   or not) is the client's (see [`crate::names::HEDGED_TO_KEY`]). No provider is asked twice.
//!
//! `Hedges` is one worker's table of requests that may still be hedged, shared by
//! that worker's root context (which fires hedges on its tick) and its request
//! filters. Times are passed in.

use crate::health::State;
use crate::names::HEDGE_HEADER;
use crate::plan::Step;

/// How many ids the cancel list keeps: the upstream filters poll it every
/// `POLL_MS`, so a cancel is only missed if this many follow within one poll.
const ID_LIST_LEN: usize = 64;

/// The root tick while hedging is configured (how late a hedge may start), and the
/// upstream filters' poll of the cancel list while a hedge is out.
pub const POLL_MS: u64 = 10;

/// What a request keeps so that it can be sent again: the client's headers before
/// any rewrite, and its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Waiting for response headers until `due_ms`.
    Waiting { due_ms: u64 },
    /// The hedge is out: to `to`, while the router's attempt was at `from`.
    Asked {
        token: u32,
        id: u64,
        from: usize,
        to: usize,
    },
    /// The hedge's answer won; the client is being given it.
    Won { from: usize, to: usize },
}

#[derive(Debug, Clone)]
struct Entry {
    /// The attempt order handed to the router.
    plan: Vec<Step>,
    request: Request,
    stage: Stage,
}

/// How a request's hedge ended, as the request's filter learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// No hedge was sent.
    None,
    /// The routed attempt answered first; hedge `id` (call `token`) to `to` is to
    /// be cancelled.
    RoutedWon {
        token: u32,
        id: u64,
        from: usize,
        to: usize,
    },
    /// The client is getting the hedge's answer from `to`.
    HedgeWon { from: usize, to: usize },
}

/// The hedge a call's answer is for: the request's context, the provider the
/// router's attempt was at and the one the hedge went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub context: u32,
    pub from: usize,
    pub to: usize,
}

/// A hedge to send now: the request, and its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub context: u32,
    pub plan: Vec<Step>,
}

/// Where the router stands in `plan` after `attempts` attempts: the provider of the
/// attempt under way, and the providers it has not reached yet (a hedge goes to one
/// of those, never to one the router tried or is trying).
pub fn split(plan: &[Step], attempts: u64) -> Option<(usize, &[Step])> {
    let at = usize::try_from(attempts.max(1) - 1).ok()?;
    let from = plan.get(at)?.index;
    Some((from, plan.get(at + 1..).unwrap_or(&[])))
}

/// A worker has few requests in flight at once, and fewer past `hedgeAfter`: a list
/// searched in order is enough (and smaller in the `.wasm` than a map).
#[derive(Debug, Default)]
pub struct Hedges {
    /// By the request's context id.
    entries: Vec<(u32, Entry)>,
}

impl Hedges {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Request `context` went to the router with `plan` at `now_ms`; hedge it at
    /// `now_ms + after_ms` unless it has its response headers by then.
    pub fn wait(
        &mut self,
        context: u32,
        now_ms: u64,
        after_ms: u64,
        plan: Vec<Step>,
        request: Request,
    ) {
        let due_ms = now_ms.saturating_add(after_ms);
        self.remove(context);
        self.entries.push((
            context,
            Entry {
                plan,
                request,
                stage: Stage::Waiting { due_ms },
            },
        ));
    }

    fn get_mut(&mut self, context: u32) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|(c, _)| *c == context)
            .map(|(_, e)| e)
    }

    fn remove(&mut self, context: u32) -> Option<Entry> {
        let at = self.entries.iter().position(|(c, _)| *c == context)?;
        Some(self.entries.swap_remove(at).1)
    }

    /// The requests whose wait is over; they stay listed until [`Hedges::asked`] or
    /// [`Hedges::give_up`].
    pub fn due(&self, now_ms: u64) -> Vec<Due> {
        self.entries
            .iter()
            .filter_map(|(context, e)| match e.stage {
                Stage::Waiting { due_ms } if due_ms <= now_ms => Some(Due {
                    context: *context,
                    plan: e.plan.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Whether request `context`'s wait is over (a host that wakes each request
    /// itself asks for that request only).
    pub fn due_for(&self, context: u32, now_ms: u64) -> Option<Due> {
        self.entries.iter().find_map(|(c, e)| match e.stage {
            Stage::Waiting { due_ms } if *c == context && due_ms <= now_ms => Some(Due {
                context,
                plan: e.plan.clone(),
            }),
            _ => None,
        })
    }

    /// When request `context`'s hedge is due, while it still waits.
    pub fn waiting_until(&self, context: u32) -> Option<u64> {
        self.entries.iter().find_map(|(c, e)| match e.stage {
            Stage::Waiting { due_ms } if *c == context => Some(due_ms),
            _ => None,
        })
    }

    /// The request kept for `context`, to build its hedge from (taken: it is sent
    /// at most once).
    pub fn take_request(&mut self, context: u32) -> Option<Request> {
        self.get_mut(context)
            .map(|e| std::mem::take(&mut e.request))
    }

    /// The hedge of `context` went out to provider `to` as call `token`, while the
    /// router's attempt was at provider `from`.
    pub fn asked(&mut self, context: u32, token: u32, id: u64, from: usize, to: usize) {
        if let Some(e) = self.get_mut(context) {
            e.stage = Stage::Asked {
                token,
                id,
                from,
                to,
            };
        }
    }

    /// `context` will not be hedged (no provider to ask, or the call failed), or its
    /// hedge's answer was a failure: the routed attempt goes on alone.
    pub fn give_up(&mut self, context: u32) {
        self.remove(context);
    }

    /// The answer to call `token` came: which request it was for, while that request
    /// still waits for it. A late answer (the routed attempt won, or the client left)
    /// gives `None`.
    pub fn answered(&mut self, token: u32) -> Option<Answered> {
        self.answered_where(token, |_| true)
    }

    /// [`Hedges::answered`] for a host whose call tokens are the request's own
    /// (two requests' calls may share one): the hedge of request `context`.
    pub fn answered_for(&mut self, context: u32, token: u32) -> Option<Answered> {
        self.answered_where(token, |c| c == context)
    }

    fn answered_where(&self, token: u32, whose: impl Fn(u32) -> bool) -> Option<Answered> {
        self.entries.iter().find_map(|(context, e)| match e.stage {
            Stage::Asked {
                token: t, from, to, ..
            } if t == token && whose(*context) => Some(Answered {
                context: *context,
                from,
                to,
            }),
            _ => None,
        })
    }

    /// The hedge's answer wins: the request's response is about to be it.
    pub fn won(&mut self, context: u32, from: usize, to: usize) {
        if let Some(e) = self.get_mut(context) {
            e.stage = Stage::Won { from, to };
        }
    }

    /// Response headers reached request `context`, or it ended: how its hedge ended.
    /// The entry is gone afterwards.
    pub fn end(&mut self, context: u32) -> Ending {
        let Some(e) = self.remove(context) else {
            return Ending::None;
        };
        match e.stage {
            Stage::Waiting { .. } => Ending::None,
            Stage::Asked {
                token,
                id,
                from,
                to,
            } => Ending::RoutedWon {
                token,
                id,
                from,
                to,
            },
            Stage::Won { from, to } => Ending::HedgeWon { from, to },
        }
    }
}

/// One worker's hedges as their upstream filters see them (the upstream side):
/// which are out, and which the cancel list ended.
#[derive(Debug, Default)]
pub struct Live {
    /// Hedge id and the context id of its upstream filter.
    out: Vec<(u64, u32)>,
    /// Upstream filter contexts reset because the routed attempt won.
    cancelled: Vec<u32>,
}

impl Live {
    pub fn has_hedges_out(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn started(&mut self, id: u64, context: u32) {
        self.out.push((id, context));
    }

    /// The hedge's attempt ended (answered, failed or cancelled): whether it was
    /// cancelled here, so the provider is not blamed for the reset.
    pub fn ended(&mut self, id: u64, context: u32) -> bool {
        self.out.retain(|(i, _)| *i != id);
        let before = self.cancelled.len();
        self.cancelled.retain(|c| *c != context);
        self.cancelled.len() != before
    }

    /// The contexts of the hedges out that `list` (the cancel list) names; they are
    /// marked cancelled.
    pub fn to_cancel(&mut self, list: &[u8]) -> Vec<u32> {
        let ids = ids_in(list);
        let mut contexts = Vec::new();
        self.out.retain(|(id, context)| {
            let cancel = ids.contains(id);
            if cancel {
                contexts.push(*context);
            }
            !cancel
        });
        self.cancelled.extend_from_slice(&contexts);
        contexts
    }
}

/// The provider a hedge goes to: the first candidate that is not cooling (healthy,
/// or half-open under this request's own probe claim).
pub fn target(candidates: &[Step], state: impl Fn(usize) -> State) -> Option<usize> {
    candidates
        .iter()
        .find(|c| match state(c.index) {
            State::Healthy => true,
            State::HalfOpen | State::Probing => c.claim.is_some(),
            State::Cooling => false,
        })
        .map(|c| c.index)
}

/// The headers of the hedge to provider `to`: the client's own, without what only
/// the routed attempt needs, marked with the hedge's id.
pub fn headers(
    client: &[(String, Vec<u8>)],
    drop: &[&str],
    id: u64,
    to: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = client
        .iter()
        .filter(|(n, _)| {
            // The hedge's body may be rewritten (another length); Envoy frames it.
            n != "content-length"
                && n != "transfer-encoding"
                && n != HEDGE_HEADER
                && !n.starts_with("x-envoy-")
                && !drop.contains(&n.as_str())
        })
        .cloned()
        .collect();
    out.push((HEDGE_HEADER.to_string(), mark(id, to).into_bytes()));
    out
}

/// The value of [`HEDGE_HEADER`].
pub fn mark(id: u64, to: usize) -> String {
    format!("{id}.{to}")
}

/// Reads [`HEDGE_HEADER`]: the hedge's id and provider index.
pub fn parse_mark(value: &[u8]) -> Option<(u64, usize)> {
    let text = std::str::from_utf8(value).ok()?;
    let (id, to) = text.split_once('.')?;
    Some((id.parse().ok()?, to.parse().ok()?))
}

/// The cancel list with `id` added, keeping the most recent ids.
pub fn with_id(list: Option<&[u8]>, id: u64) -> Vec<u8> {
    let mut ids: Vec<u64> = list.map(ids_in).unwrap_or_default();
    ids.push(id);
    let skip = ids.len().saturating_sub(ID_LIST_LEN);
    ids[skip..]
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// The ids in the cancel list (unreadable entries are skipped).
pub fn ids_in(list: &[u8]) -> Vec<u64> {
    std::str::from_utf8(list)
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A hedge id as the sequence stores it.
pub fn parse_id(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The next hedge id after `last` (the sequence as stored; absent or unreadable: 0).
pub fn next_id(last: Option<&[u8]>) -> u64 {
    last.and_then(parse_id).unwrap_or(0).wrapping_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(list: &[(usize, bool)]) -> Vec<Step> {
        list.iter()
            .map(|&(index, claimed)| Step {
                index,
                reset_on_success: claimed,
                claim: claimed.then_some(1),
            })
            .collect()
    }

    fn request() -> Request {
        Request {
            headers: vec![(":path".into(), b"/v1/chat/completions".to_vec())],
            body: Some(b"{}".to_vec()),
        }
    }

    #[test]
    fn a_request_is_due_only_once_its_wait_is_over() {
        let mut h = Hedges::default();
        h.wait(7, 1_000, 200, cands(&[(0, false), (1, false)]), request());
        h.wait(8, 1_050, 200, cands(&[(0, false), (1, false)]), request());
        assert!(h.due(1_199).is_empty());
        let mut due = h.due(1_250);
        due.sort_by_key(|d| d.context);
        assert_eq!(
            due.iter().map(|d| d.context).collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert_eq!(due[0].plan, cands(&[(0, false), (1, false)]));
        // Still due until it is asked or given up.
        assert_eq!(h.due(1_300).len(), 2);
        assert_eq!(h.take_request(7), Some(request()));
        assert_eq!(h.take_request(7), Some(Request::default()), "taken once");
        h.asked(7, 41, 5, 0, 1);
        h.give_up(8);
        assert!(h.due(9_999).is_empty());
    }

    #[test]
    fn a_hedge_goes_past_the_providers_the_router_reached() {
        let plan = cands(&[(4, false), (2, false), (7, true)]);
        assert_eq!(split(&plan, 1), Some((4, &plan[1..])));
        assert_eq!(
            split(&plan, 0),
            Some((4, &plan[1..])),
            "no attempt counted yet: the first"
        );
        assert_eq!(split(&plan, 2), Some((2, &plan[2..])));
        assert_eq!(split(&plan, 3), Some((7, &plan[3..])));
        assert_eq!(split(&plan, 3).map(|(_, c)| c.len()), Some(0));
        assert_eq!(split(&plan, 4), None);
        assert_eq!(split(&[], 1), None);
    }

    #[test]
    fn routed_headers_first_cancel_the_hedge_and_a_late_answer_is_ignored() {
        let mut h = Hedges::default();
        h.wait(7, 0, 100, cands(&[(0, false), (1, false)]), request());
        assert_eq!(
            h.end(7),
            Ending::None,
            "answered before the hedge: nothing to cancel"
        );
        h.wait(7, 0, 100, cands(&[(0, false), (1, false)]), request());
        h.asked(7, 41, 5, 0, 1);
        assert_eq!(
            h.end(7),
            Ending::RoutedWon {
                token: 41,
                id: 5,
                from: 0,
                to: 1
            }
        );
        assert_eq!(h.answered(41), None);
        assert!(h.is_empty());
    }

    #[test]
    fn a_hedge_answer_wins_or_fails() {
        let mut h = Hedges::default();
        h.wait(
            7,
            0,
            100,
            cands(&[(0, false), (1, false), (2, false)]),
            request(),
        );
        // The router had moved on to provider 1 when the hedge went to 2.
        h.asked(7, 41, 5, 1, 2);
        assert_eq!(h.answered(99), None);
        assert_eq!(
            h.answered(41),
            Some(Answered {
                context: 7,
                from: 1,
                to: 2
            })
        );
        h.won(7, 1, 2);
        assert_eq!(h.end(7), Ending::HedgeWon { from: 1, to: 2 });

        h.wait(8, 0, 100, cands(&[(0, false), (1, false)]), request());
        h.asked(8, 42, 6, 0, 1);
        assert_eq!(h.answered(42).map(|a| a.context), Some(8));
        h.give_up(8);
        assert_eq!(
            h.end(8),
            Ending::None,
            "a failed hedge leaves the routed attempt alone"
        );
    }

    #[test]
    fn the_target_is_the_first_provider_not_cooling() {
        let states = |i: usize| match i {
            1 => State::Cooling,
            2 => State::HalfOpen,
            _ => State::Healthy,
        };
        assert_eq!(
            target(&cands(&[(1, false), (2, false), (3, false)]), states),
            Some(3)
        );
        assert_eq!(
            target(&cands(&[(1, false), (2, true), (3, false)]), states),
            Some(2)
        );
        assert_eq!(target(&cands(&[(1, false), (2, false)]), states), None);
        assert_eq!(target(&[], states), None);
    }

    #[test]
    fn hedge_headers_are_the_clients_without_routing_and_framing() {
        let client = vec![
            (":method".to_string(), b"POST".to_vec()),
            (":path".to_string(), b"/v1/chat/completions".to_vec()),
            ("content-length".to_string(), b"42".to_vec()),
            ("x-envoy-max-retries".to_string(), b"3".to_vec()),
            ("x-llm-failover-order".to_string(), b"abc".to_vec()),
            (HEDGE_HEADER.to_string(), b"1.0".to_vec()),
            ("authorization".to_string(), b"Bearer client".to_vec()),
        ];
        let out = headers(&client, &["x-llm-failover-order"], 12, 3);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![":method", ":path", "authorization", HEDGE_HEADER]
        );
        assert_eq!(out[3].1, b"12.3");
        assert_eq!(parse_mark(&out[3].1), Some((12, 3)));
        assert_eq!(parse_mark(b"12"), None);
        assert_eq!(parse_mark(b"x.1"), None);
    }

    #[test]
    fn the_upstream_side_cancels_only_the_hedges_listed() {
        let mut live = Live::default();
        live.started(5, 100);
        live.started(6, 101);
        assert!(live.has_hedges_out());
        assert!(live.to_cancel(b"1,2,3").is_empty());
        assert_eq!(live.to_cancel(b"4,6"), vec![101]);
        assert!(live.to_cancel(b"4,6").is_empty(), "once");
        assert!(live.ended(6, 101), "cancelled: not the provider's failure");
        assert!(!live.ended(5, 100), "ended by itself");
        assert!(!live.has_hedges_out());
    }

    #[test]
    fn the_cancel_list_keeps_the_most_recent_ids() {
        let mut list = with_id(None, 1);
        assert_eq!(ids_in(&list), vec![1]);
        for id in 2..=100 {
            list = with_id(Some(&list), id);
        }
        let ids = ids_in(&list);
        assert_eq!(ids.len(), ID_LIST_LEN);
        assert_eq!(ids.first(), Some(&(100 - ID_LIST_LEN as u64 + 1)));
        assert_eq!(ids.last(), Some(&100));
        assert_eq!(ids_in(b"3,x,,4"), vec![3, 4]);
        assert_eq!(next_id(None), 1);
        assert_eq!(next_id(Some(b"41")), 42);
        assert_eq!(next_id(Some(b"junk")), 1);
        assert_eq!(parse_id(b"42"), Some(42));
        assert_eq!(parse_id(b"-1"), None);
    }
}
