//! Telling a provider's failure from its ordinary answer, and both from Envoy's
//! own local replies. Pure: the status, the reply details and the response flags
//! come in as arguments.

/// What an upstream response means for the provider that was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider answered: a 400 and up is judged by its error class
    /// (`attempt::judge`).
    Answer,
    /// The provider could not be reached or did not answer: refused or reset
    /// connection, timeout, no healthy host. Always a failure, whatever `onStatus` says.
    Unreachable,
    /// Envoy answered for a reason that says nothing about the provider (a local
    /// rate limit, a fault filter): passed through, health untouched.
    LocalReply,
}

// Envoy's response flags (the legacy bitmask in the `response.flags` property)
// that mean the upstream could not give an answer.
const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
const UPSTREAM_REMOTE_RESET: u64 = 1 << 4;
const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
const UPSTREAM_OVERFLOW: u64 = 1 << 7;
const UPSTREAM_MAX_STREAM_DURATION: u64 = 1 << 19;
const UPSTREAM_PROTOCOL_ERROR: u64 = 1 << 23;
const NO_CLUSTER_FOUND: u64 = 1 << 24;
const DNS_RESOLUTION_FAILED: u64 = 1 << 26;
const UNREACHABLE_FLAGS: u64 = NO_HEALTHY_UPSTREAM
    | UPSTREAM_REQUEST_TIMEOUT
    | UPSTREAM_REMOTE_RESET
    | UPSTREAM_CONNECTION_FAILURE
    | UPSTREAM_CONNECTION_TERMINATION
    | UPSTREAM_OVERFLOW
    | UPSTREAM_MAX_STREAM_DURATION
    | UPSTREAM_PROTOCOL_ERROR
    | NO_CLUSTER_FOUND
    | DNS_RESOLUTION_FAILED;

/// Classifies the response of the routed (main) request.
///
/// `code_details` is Envoy's `response.code_details` (`via_upstream` when the
/// provider sent the status); `None` when the host could not say, in which case the
/// status is taken as the provider's. `flags` is `response.flags`.
pub fn classify_routed(code_details: Option<&str>, flags: u64) -> Outcome {
    let via_upstream = code_details.is_none_or(|d| d == "via_upstream");
    if via_upstream {
        return Outcome::Answer;
    }
    if flags & UNREACHABLE_FLAGS != 0 {
        Outcome::Unreachable
    } else {
        Outcome::LocalReply
    }
}

/// Envoy's own bodies for a dispatched call that reached no provider. A callout's
/// response carries no reply details, so its body is the only evidence.
const LOCAL_REPLY_PREFIXES: [&[u8]; 3] = [
    b"upstream connect error or disconnect/reset before headers",
    b"no healthy upstream",
    b"upstream request timeout",
];

/// Classifies the response of a call dispatched during within-request failover.
/// `status` is `None` when the call got no response at all (timeout, reset).
pub fn classify_callout(status: Option<u16>, body: &[u8]) -> Outcome {
    let Some(status) = status else {
        return Outcome::Unreachable;
    };
    if matches!(status, 503 | 504) && LOCAL_REPLY_PREFIXES.iter().any(|p| body.starts_with(p)) {
        return Outcome::Unreachable;
    }
    Outcome::Answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_provider_sent_is_its_answer() {
        assert_eq!(classify_routed(Some("via_upstream"), 0), Outcome::Answer);
        assert_eq!(classify_routed(None, 0), Outcome::Answer);
    }

    #[test]
    fn envoy_connection_failures_are_unreachable() {
        let refused = "upstream_reset_before_response_started{remote_connection_failure}";
        assert_eq!(classify_routed(Some(refused), 0x20), Outcome::Unreachable);
        assert_eq!(
            classify_routed(Some("upstream_response_timeout"), 0x4),
            Outcome::Unreachable
        );
        assert_eq!(
            classify_routed(Some("no_healthy_upstream"), 0x2),
            Outcome::Unreachable
        );
        assert_eq!(
            classify_routed(Some("cluster_not_found"), 1 << 24),
            Outcome::Unreachable
        );
    }

    #[test]
    fn envoy_local_replies_are_not_the_providers_answer() {
        // A local rate limit's 429 (flag RL) must not put the provider into cooldown.
        assert_eq!(
            classify_routed(Some("local_rate_limited"), 1 << 11),
            Outcome::LocalReply
        );
        assert_eq!(
            classify_routed(Some("fault_filter_abort"), 1 << 10),
            Outcome::LocalReply
        );
    }

    #[test]
    fn callout_failures_are_recognised_by_envoy_body() {
        assert_eq!(classify_callout(None, b""), Outcome::Unreachable);
        assert_eq!(
            classify_callout(Some(503), b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
            Outcome::Unreachable
        );
        assert_eq!(
            classify_callout(Some(504), b"upstream request timeout"),
            Outcome::Unreachable
        );
        assert_eq!(
            classify_callout(Some(503), b"{\"error\":{}}"),
            Outcome::Answer
        );
        assert_eq!(classify_callout(Some(429), b"{}"), Outcome::Answer);
        assert_eq!(
            classify_callout(Some(200), b"upstream request timeout"),
            Outcome::Answer
        );
    }
}
