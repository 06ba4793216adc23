//! The plan: the providers one request tries, in order, the one type every part
//! of the filter uses (the downstream filter makes it, `attempt::plan`; the
//! upstream filters read it from filter state, `wasm.llm_failover_plan`; the
//! hedger picks its hedge's provider from it), and [`At`], where the request
//! stands in it.
//!
//! Encoded as provider indices in attempt order, `!` after one whose health record
//! a success must reset, and a leading `=` when the downstream filter rewrote the
//! first attempt's body itself (it always rewrites the first attempt's headers):
//! `=2,0!,1`. A probe claim stays with the request that holds it and is not
//! encoded.

/// One provider of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub index: usize,
    /// A success must reset the provider's record (it had failures, a cooldown, or
    /// this request's probe claim): usually not, so a success writes nothing.
    pub reset_on_success: bool,
    /// The end of the probe claim this request won on it, when it was half-open
    /// (only in the downstream filter's copy).
    pub claim: Option<u64>,
}

impl Step {
    pub fn new(index: usize, reset_on_success: bool) -> Self {
        Step {
            index,
            reset_on_success,
            claim: None,
        }
    }
}

/// The providers one request will try, in order, at most once each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// No provider was available: the plan holds only the one that can be tried
    /// again first (its failure then goes to the client).
    pub all_cooling: bool,
    /// The first attempt's body already carries its provider's model.
    pub first_body_rewritten: bool,
}

impl Plan {
    /// A plan of one provider (a hedge's or a background probe's attempt), whose
    /// record is unknown: a success reads it and resets it if needed.
    pub fn single(index: usize) -> Self {
        Plan {
            steps: vec![Step::new(index, true)],
            ..Plan::default()
        }
    }

    pub fn first(&self) -> Option<&Step> {
        self.steps.first()
    }

    pub fn get(&self, position: usize) -> Option<&Step> {
        self.steps.get(position)
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.steps.iter().map(|s| s.index)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if self.first_body_rewritten {
            out.push('=');
        }
        for (n, step) in self.steps.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&step.index.to_string());
            if step.reset_on_success {
                out.push('!');
            }
        }
        out
    }

    /// Decodes [`Plan::encode`]'s output; `None` when it is not one (or names a
    /// provider the configuration does not have).
    pub fn decode(bytes: &[u8], providers: usize) -> Option<Plan> {
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
                (index < providers).then_some(Step::new(index, reset))
            })
            .collect::<Option<Vec<Step>>>()?;
        Some(Plan {
            steps,
            all_cooling: false,
            first_body_rewritten,
        })
    }
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
    /// Read from the filter state's bytes; absent or unreadable: the first attempt.
    pub fn from_state(bytes: Option<&[u8]>) -> At {
        bytes.and_then(At::decode).unwrap_or_default()
    }

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

    /// How many attempts the router has made up to this one.
    pub fn attempts(self) -> u64 {
        self.position as u64 + 1
    }
}

/// The plan positions a request went through (`wasm.llm_failover_path`, `0,1,2`,
/// kept by the upstream filters as they move it on); absent means it stayed on the
/// first.
pub fn path(bytes: Option<&[u8]>) -> Vec<usize> {
    match bytes {
        Some(b) => String::from_utf8_lossy(b)
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect(),
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips_with_reset_marks() {
        let mut plan = Plan {
            steps: vec![Step::new(1, false), Step::new(0, true)],
            ..Plan::default()
        };
        assert_eq!(plan.encode(), "1,0!");
        assert_eq!(Plan::decode(b"1,0!", 2), Some(plan.clone()));
        plan.first_body_rewritten = true;
        assert_eq!(plan.encode(), "=1,0!");
        assert_eq!(Plan::decode(b"=1,0!", 2), Some(plan));
    }

    #[test]
    fn a_probe_claim_is_not_handed_on() {
        let plan = Plan {
            steps: vec![Step {
                index: 0,
                reset_on_success: true,
                claim: Some(5),
            }],
            ..Plan::default()
        };
        assert_eq!(
            Plan::decode(plan.encode().as_bytes(), 1),
            Some(Plan::single(0))
        );
    }

    #[test]
    fn a_plan_naming_an_unknown_provider_is_refused() {
        assert_eq!(Plan::decode(b"0,7", 2), None);
        assert_eq!(Plan::decode(b"x", 2), None);
        assert_eq!(Plan::decode(b"", 2), None);
        assert_eq!(Plan::decode(b"=", 2), None);
        assert_eq!(Plan::decode(b"==0", 2), None);
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
        assert_eq!(At::from_state(Some(b"x")), At::default());
        assert_eq!(At::from_state(Some(b"1.2")).attempts(), 2);
    }

    #[test]
    fn the_path_defaults_to_the_first_attempt() {
        assert_eq!(path(None), vec![0]);
        assert_eq!(path(Some(b"0,2,x,3")), vec![0, 2, 3]);
    }
}
