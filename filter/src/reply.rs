//! OpenAI-style error bodies for the replies the filter itself sends.

/// `{"error": {"message": ..., "type": ..., "code": ...}}`, as OpenAI's API answers
/// errors, so SDKs surface the message.
pub fn error_body(message: &str, kind: &str, code: &str) -> String {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_body_is_openai_shaped_json() {
        let body = super::error_body("bad \"x\"", "invalid_request_error", "invalid_json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], "bad \"x\"");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_json");
    }
}
