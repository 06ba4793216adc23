//! The replies the filter itself sends: OpenAI-style error bodies, and a call's
//! answer passed on to the client.

use crate::json::quote;
use crate::names::PROVIDER_HEADER;
use crate::rewrite;

/// `{"error": {"message": ..., "type": ..., "code": ...}}`, as OpenAI's API answers
/// errors, so SDKs surface the message.
pub fn error_body(message: &str, kind: &str, code: &str) -> String {
    format!(
        r#"{{"error":{{"message":{},"type":{},"param":null,"code":{}}}}}"#,
        quote(message),
        quote(kind),
        quote(code)
    )
}

/// The `:status` of a call's answer, if it had one.
pub fn status_of(headers: &[(String, Vec<u8>)]) -> Option<u16> {
    let (_, value) = headers.iter().find(|(n, _)| n == ":status")?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A call's answer (a dispatched attempt's or a hedge's) as the client's reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Relayed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Relayed {
    /// The answer of `provider`'s call: its status, headers and body, named after the
    /// provider. A call without an answer (refused, reset, timed out) becomes a 503
    /// with an OpenAI-style error that says so.
    pub fn new(headers: &[(String, Vec<u8>)], body: Vec<u8>, provider: &str) -> Self {
        let mut relayed = Relayed {
            status: 503,
            headers: rewrite::response_headers_to_forward(headers),
            body,
        };
        relayed.set_header(PROVIDER_HEADER, provider);
        match status_of(headers) {
            Some(status) => relayed.status = status,
            None => {
                let message = format!(
                    "provider {provider} did not answer (connection failed, reset or timed out)"
                );
                relayed.body =
                    error_body(&message, "api_error", "provider_unreachable").into_bytes();
                relayed.set_header("content-type", "application/json");
            }
        }
        relayed
    }

    /// Sets header `name` to `value`, replacing what the answer had.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_calls_answer_is_passed_on_under_its_providers_name() {
        let got = Relayed::new(
            &headers(&[
                (":status", "429"),
                ("content-type", "application/json"),
                ("retry-after", "3"),
                (PROVIDER_HEADER, "forged"),
            ]),
            b"{}".to_vec(),
            "fallback",
        );
        assert_eq!(got.status, 429);
        assert_eq!(got.body, b"{}");
        assert_eq!(
            got.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("retry-after".to_string(), "3".to_string()),
                (PROVIDER_HEADER.to_string(), "fallback".to_string()),
            ]
        );
    }

    #[test]
    fn a_call_without_an_answer_becomes_a_503_that_says_so() {
        let mut got = Relayed::new(
            &headers(&[("content-type", "text/plain")]),
            b"upstream reset".to_vec(),
            "fallback",
        );
        assert_eq!(got.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["error"]["code"], "provider_unreachable");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider fallback"));
        got.set_header("retry-after", "7");
        assert_eq!(
            got.headers,
            vec![
                (PROVIDER_HEADER.to_string(), "fallback".to_string()),
                ("content-type".to_string(), "application/json".to_string()),
                ("retry-after".to_string(), "7".to_string()),
            ]
        );
        assert_eq!(status_of(&headers(&[(":status", " 200 ")])), Some(200));
        assert_eq!(status_of(&headers(&[(":status", "x")])), None);
    }

    #[test]
    fn error_body_is_openai_shaped_json() {
        let body = super::error_body("bad \"x\"", "invalid_request_error", "invalid_json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], "bad \"x\"");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_json");
    }
}
