//! OpenAI-style error bodies for the replies the filter itself sends.

use crate::json::quote;

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
