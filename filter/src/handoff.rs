//! What the downstream filter hands to the upstream filter of each attempt (router
//! mode), and to Envoy's router: pure encodings, no host calls.
//!
//! - The plan (`wasm.llm_failover_plan` filter state): provider indices in attempt
//!   order, `!` after one whose health record must be reset by a success, and a
//!   leading `=` when the downstream filter rewrote the first attempt's body itself
//!   (it always rewrites the first attempt's headers).
//! - Where the request stands (`At`): which plan position the attempt in flight is
//!   for, set by the upstream filter that moves the request on; the cluster of that
//!   attempt goes in `wasm.llm_failover_next`, which the route's matcher cluster
//!   specifier reads (see ARCHITECTURE.md).
//! - The client's own values of the headers a provider rewrites
//!   (`wasm.llm_failover_client` filter state): all attempts share one request
//!   header map, so every attempt after the first starts from these, and one
//!   provider's key never reaches the next.

use crate::attempt::Plan;

/// Encodes the plan as `2,0!,1` (`=2,0!,1` with `first_body_rewritten`).
pub fn encode_plan(plan: &Plan, first_body_rewritten: bool) -> String {
    let mut out = String::new();
    if first_body_rewritten {
        out.push('=');
    }
    for (n, pick) in plan.picks.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&pick.index.to_string());
        if pick.record.after_success().is_some() {
            out.push('!');
        }
    }
    out
}

/// One entry of a decoded plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub index: usize,
    /// A success must reset the provider's record (it had failures or a cooldown).
    pub reset_on_success: bool,
}

/// A decoded plan, as the upstream filter uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub steps: Vec<Step>,
    /// The first attempt's body already carries its provider's model.
    pub first_body_rewritten: bool,
}

/// Decodes `encode_plan`'s output; `None` when it is not one (or names a provider
/// the configuration does not have).
pub fn decode_plan(bytes: &[u8], providers: usize) -> Option<Handoff> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (text, first_body_rewritten) = match text.strip_prefix('=') {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let steps = text
        .split(',')
        .map(|item| {
            let (num, reset) = match item.strip_suffix('!') {
                Some(n) => (n, true),
                None => (item, false),
            };
            let index: usize = num.parse().ok()?;
            (index < providers).then_some(Step {
                index,
                reset_on_success: reset,
            })
        })
        .collect::<Option<Vec<Step>>>()?;
    Some(Handoff {
        steps,
        first_body_rewritten,
    })
}

/// Where a request stands: the plan position of the attempt in flight (or next),
/// and how many times that provider was tried before in this request (same-provider
/// retries). Set by the upstream filter that moves the request on
/// (`wasm.llm_failover_at`, as `2` or `2.1`); absent means the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    pub position: usize,
    pub retry: u32,
}

impl At {
    pub fn encode(self) -> String {
        if self.retry == 0 {
            self.position.to_string()
        } else {
            format!("{}.{}", self.position, self.retry)
        }
    }

    /// `None` when `bytes` is not `encode`'s output.
    pub fn decode(bytes: &[u8]) -> Option<At> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (position, retry) = text.split_once('.').unwrap_or((text, "0"));
        Some(At {
            position: position.parse().ok()?,
            retry: retry.parse().ok()?,
        })
    }
}

/// Encodes the client's values of the rewritten headers: `name\nvalue\n` pairs
/// (header values cannot hold a newline).
pub fn encode_client_headers(headers: &[(String, Vec<u8>)], names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if names.iter().any(|n| n == name) {
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(value);
            out.push(b'\n');
        }
    }
    out
}

pub fn decode_client_headers(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut parts = bytes.split(|b| *b == b'\n');
    let mut out = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        if name.is_empty() {
            break;
        }
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::Pick;
    use crate::health::HealthRecord;

    fn pick(index: usize, failures: u32) -> Pick {
        Pick {
            index,
            record: HealthRecord {
                failures,
                ..HealthRecord::default()
            },
            claim: None,
        }
    }

    #[test]
    fn plan_round_trips_with_reset_marks() {
        let plan = Plan {
            picks: vec![pick(1, 0), pick(0, 2)],
            all_cooling: false,
        };
        let text = encode_plan(&plan, false);
        assert_eq!(text, "1,0!");
        let steps = vec![
            Step {
                index: 1,
                reset_on_success: false,
            },
            Step {
                index: 0,
                reset_on_success: true,
            },
        ];
        assert_eq!(
            decode_plan(text.as_bytes(), 2),
            Some(Handoff {
                steps: steps.clone(),
                first_body_rewritten: false
            })
        );
        let text = encode_plan(&plan, true);
        assert_eq!(text, "=1,0!");
        assert_eq!(
            decode_plan(text.as_bytes(), 2),
            Some(Handoff {
                steps,
                first_body_rewritten: true
            })
        );
    }

    #[test]
    fn a_plan_naming_an_unknown_provider_is_refused() {
        assert_eq!(decode_plan(b"0,7", 2), None);
        assert_eq!(decode_plan(b"x", 2), None);
        assert_eq!(decode_plan(b"", 2), None);
        assert_eq!(decode_plan(b"=", 2), None);
        assert_eq!(decode_plan(b"==0", 2), None);
    }

    #[test]
    fn where_a_request_stands_round_trips() {
        for at in [
            At::default(),
            At {
                position: 2,
                retry: 0,
            },
            At {
                position: 1,
                retry: 3,
            },
        ] {
            assert_eq!(At::decode(at.encode().as_bytes()), Some(at));
        }
        assert_eq!(At::default().encode(), "0");
        assert_eq!(
            At::decode(b"2.1").map(|a| (a.position, a.retry)),
            Some((2, 1))
        );
        for bad in [&b""[..], b"x", b"1.", b".1", b"-1", b"1.2.3", b"\xff"] {
            assert_eq!(At::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn client_headers_round_trip_only_the_named_ones() {
        let headers = vec![
            ("authorization".to_string(), b"Bearer client".to_vec()),
            ("content-type".to_string(), b"application/json".to_vec()),
            (":path".to_string(), b"/v1/chat?x=1".to_vec()),
        ];
        let names = vec!["authorization".to_string(), ":path".to_string()];
        let encoded = encode_client_headers(&headers, &names);
        assert_eq!(
            decode_client_headers(&encoded),
            vec![
                ("authorization".to_string(), b"Bearer client".to_vec()),
                (":path".to_string(), b"/v1/chat?x=1".to_vec()),
            ]
        );
    }
}
