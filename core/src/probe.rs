//! Background probes (`failover.backgroundProbes`): when a provider's cooldown ends,
//! the root claims its probe and sends it a small chat request of its own, so that no
//! user request pays for finding out it is still down. The request goes through the
//! provider's cluster like any attempt: its upstream filter rewrites it for the
//! provider (model, host, path, key) and records the answer, which closes or reopens
//! the breaker. Each probe is a billed request (a one-word prompt, `max_tokens: 1`).
//! Pure: the request is built here, sent by `contexts/root.rs`.

use crate::config::Config;
use crate::names::PROBE_HEADER;

/// A request's headers and body, as `host::dispatch` takes them.
pub type Request = (Vec<(String, String)>, Vec<u8>);

/// The probe of provider `index`: headers and body. `None` for an unknown index.
pub fn request(config: &Config, index: usize) -> Option<Request> {
    let p = config.providers.get(index)?;
    let header = |n: &str, v: &str| (n.to_string(), v.to_string());
    let headers = vec![
        header(":method", "POST"),
        // The upstream filter puts the provider's own path and host in.
        header(":path", p.path.as_deref().unwrap_or("/v1/chat/completions")),
        header(
            ":authority",
            p.host.as_deref().unwrap_or("llm-failover-probe"),
        ),
        header("content-type", "application/json"),
        header(PROBE_HEADER, &index.to_string()),
    ];
    let model = p.model_json.as_deref().unwrap_or("\"\"");
    let body = format!(
        r#"{{"model":{model},"messages":[{{"role":"user","content":"ping"}}],"max_tokens":1,"stream":false}}"#
    );
    Some((headers, body.into_bytes()))
}

/// The provider a probe mark names, if it is one of `cluster`'s (a forged mark
/// cannot make an attempt carry another provider's key).
pub fn marked(config: &Config, value: &[u8], cluster: &[u8]) -> Option<usize> {
    let index: usize = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (config.providers.get(index)?.cluster.as_bytes() == cluster).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let json = r#"{"groups":[{"providers":[
            {"name":"a","cluster":"ca","openai":{"model":"gpt-4o-mini"},"path":"/v1/chat/completions"},
            {"name":"b","cluster":"cb"}]}],"failover":{"backgroundProbes":true}}"#;
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    #[test]
    fn a_probe_is_a_one_token_chat_request_marked_for_its_provider() {
        let c = config();
        let (headers, body) = request(&c, 0).unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(":method"), Some("POST"));
        assert_eq!(get(":path"), Some("/v1/chat/completions"));
        assert_eq!(get(PROBE_HEADER), Some("0"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["max_tokens"], 1);
        let (_, body) = request(&c, 1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "");
        assert!(request(&c, 2).is_none());
    }

    #[test]
    fn a_mark_counts_only_for_a_provider_of_the_cluster() {
        let c = config();
        assert_eq!(marked(&c, b"0", b"ca"), Some(0));
        assert_eq!(
            marked(&c, b"1", b"ca"),
            None,
            "forged: b's key to a's cluster"
        );
        assert_eq!(marked(&c, b"9", b"ca"), None);
        assert_eq!(marked(&c, b"x", b"ca"), None);
    }
}
