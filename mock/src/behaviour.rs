//! What the mock does with a chat request: answer, or inject a failure. Changeable
//! at run time through `POST /mock/config`.

use serde::Deserialize;

/// The kinds of failure the mock can inject, named as in `llm-d-inference-sim`
/// where it has them.
pub const FAILURE_KINDS: [(&str, u16, &str); 8] = [
    ("rate_limit", 429, "Rate limit reached for requests"),
    (
        "server_error",
        500,
        "The server had an error while processing your request",
    ),
    ("bad_gateway", 502, "Bad gateway"),
    (
        "service_unavailable",
        503,
        "The engine is currently overloaded",
    ),
    ("gateway_timeout", 504, "Gateway timeout"),
    ("invalid_api_key", 401, "Incorrect API key provided"),
    ("invalid_request", 400, "Invalid request"),
    ("model_not_found", 404, "The model does not exist"),
];

#[derive(Debug, Clone)]
pub struct Behaviour {
    pub failure_rate: u8,
    pub failure_types: Vec<String>,
    pub retry_after: Option<String>,
    pub latency_ms: u64,
    pub chunk_delay_ms: u64,
    /// Extra headers on successful answers (e.g. rate-limit headers).
    pub headers: Vec<(String, String)>,
    /// Extra headers on injected failures.
    pub failure_headers: Vec<(String, String)>,
    /// An injected failure's status and raw body instead of the kind's own (a
    /// provider's documented error body, for the error-class tests).
    pub failure_status: Option<u16>,
    pub failure_body: Option<String>,
    /// A streamed answer: the wait between its headers and its first event.
    pub first_event_delay_ms: u64,
    /// A streamed answer falls silent after this many events, for `stall_ms`
    /// (the connection stays open), then goes on.
    pub stall_after: Option<usize>,
    pub stall_ms: u64,
}

/// A partial update, as posted to `/mock/config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    failure_injection_rate: Option<u8>,
    failure_types: Option<Vec<String>>,
    /// `null` removes the header; absent leaves it as it is.
    #[serde(default, deserialize_with = "double")]
    retry_after: Option<Option<String>>,
    latency_ms: Option<u64>,
    chunk_delay_ms: Option<u64>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    failure_headers: Option<std::collections::BTreeMap<String, String>>,
    /// `null` goes back to the kind's own status and body.
    #[serde(default, deserialize_with = "double")]
    failure_status: Option<Option<u16>>,
    #[serde(default, deserialize_with = "double")]
    failure_body: Option<Option<String>>,
    first_event_delay_ms: Option<u64>,
    #[serde(default, deserialize_with = "double")]
    stall_after: Option<Option<usize>>,
    stall_ms: Option<u64>,
}

/// `Some(None)` for an explicit `null`, so a field can be cleared.
fn double<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

impl Behaviour {
    pub fn new(
        failure_rate: u8,
        failure_types: &[String],
        retry_after: Option<String>,
        latency_ms: u64,
        chunk_delay_ms: u64,
    ) -> Result<Self, String> {
        let b = Behaviour {
            failure_rate,
            failure_types: failure_types.to_vec(),
            retry_after,
            latency_ms,
            chunk_delay_ms,
            headers: Vec::new(),
            failure_headers: Vec::new(),
            failure_status: None,
            failure_body: None,
            first_event_delay_ms: 0,
            stall_after: None,
            stall_ms: 0,
        };
        b.validate()?;
        Ok(b)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.failure_status.filter(|s| !(100..=599).contains(s)) {
            return Err(format!("failure status {s} is not an HTTP status"));
        }
        if self.failure_rate > 100 {
            return Err(format!(
                "failure rate {} is not a percentage",
                self.failure_rate
            ));
        }
        if self.failure_types.is_empty() {
            return Err("failure types must not be empty".into());
        }
        for t in &self.failure_types {
            if !FAILURE_KINDS.iter().any(|(k, _, _)| k == t) {
                let known: Vec<&str> = FAILURE_KINDS.iter().map(|(k, _, _)| *k).collect();
                return Err(format!(
                    "unknown failure type {t:?}; known: {}",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub fn apply(&mut self, update: Update) -> Result<(), String> {
        let mut next = self.clone();
        if let Some(r) = update.failure_injection_rate {
            next.failure_rate = r;
        }
        if let Some(t) = update.failure_types {
            next.failure_types = t;
        }
        if let Some(r) = update.retry_after {
            next.retry_after = r;
        }
        if let Some(l) = update.latency_ms {
            next.latency_ms = l;
        }
        if let Some(d) = update.chunk_delay_ms {
            next.chunk_delay_ms = d;
        }
        if let Some(h) = update.headers {
            next.headers = h.into_iter().collect();
        }
        if let Some(h) = update.failure_headers {
            next.failure_headers = h.into_iter().collect();
        }
        if let Some(s) = update.failure_status {
            next.failure_status = s;
        }
        if let Some(b) = update.failure_body {
            next.failure_body = b;
        }
        if let Some(d) = update.first_event_delay_ms {
            next.first_event_delay_ms = d;
        }
        if let Some(n) = update.stall_after {
            next.stall_after = n;
        }
        if let Some(ms) = update.stall_ms {
            next.stall_ms = ms;
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// The failure to inject for a request whose random draw is `roll` (0-99) and
    /// sequence number is `seq`, if any. Kinds rotate so each one is exercised.
    pub fn failure(&self, roll: u8, seq: u64) -> Option<(u16, &'static str, &'static str)> {
        if roll >= self.failure_rate {
            return None;
        }
        let idx = (seq % self.failure_types.len() as u64) as usize;
        let kind = &self.failure_types[idx];
        FAILURE_KINDS
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|(k, status, message)| (*status, *k, *message))
    }
}
