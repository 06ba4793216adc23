//! Per-provider request header rewrite: the routing header, `:authority`, `:path`
//! and credentials. Pure: produces a list of edits; the contexts apply them to the
//! live request, `apply_to` to a copy for a dispatched failover attempt.

use crate::config::{Auth, Provider};
use crate::names::CLIENT_CREDENTIAL_HEADERS;

/// Headers that describe one hop's connection or framing; a dispatched call frames
/// its own request.
const HOP_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "expect",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    Set(&'a str, String),
    Remove(&'a str),
}

/// The edits that send a request to `provider`. `original_path` is the client's
/// `:path`, whose query string is kept when the provider's path replaces it.
pub fn edits_for<'a>(
    provider: &'a Provider,
    cluster_header: &'a str,
    original_path: Option<&str>,
) -> Vec<Edit<'a>> {
    let mut edits = vec![Edit::Set(cluster_header, provider.cluster.clone())];
    if let Some(host) = &provider.host {
        edits.push(Edit::Set(":authority", host.clone()));
    }
    if provider.rewrites_path() {
        edits.push(Edit::Set(
            ":path",
            provider_path(provider, original_path.unwrap_or("")),
        ));
    }
    if let Auth::Key { header, value } = &provider.auth {
        for h in CLIENT_CREDENTIAL_HEADERS {
            edits.push(Edit::Remove(h));
        }
        edits.push(Edit::Set(header, value.clone()));
    }
    edits
}

/// The `:path` for `provider` from the client's: the provider's path (or the client's),
/// then the client's query parameters except those the provider sets, then the
/// provider's, in configuration order.
fn provider_path(provider: &Provider, original: &str) -> String {
    let (client_path, client_query) = match original.split_once('?') {
        Some((p, q)) => (p, q),
        None => (original, ""),
    };
    let mut out = provider.path.as_deref().unwrap_or(client_path).to_string();
    let sets = |param: &str| {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        provider.query.iter().any(|(n, _)| n == name)
    };
    let mut sep = '?';
    for param in client_query
        .split('&')
        .filter(|p| !p.is_empty() && !sets(p))
    {
        out.push(sep);
        out.push_str(param);
        sep = '&';
    }
    for (name, value) in &provider.query {
        out.push(sep);
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        sep = '&';
    }
    out
}

/// The request for a dispatched attempt: the client's original headers without
/// hop-by-hop ones, with `edits` applied. Values that are not UTF-8 (obs-text) are
/// converted lossily, because the host's dispatch call only takes strings.
pub fn apply_to(original: &[(String, Vec<u8>)], edits: &[Edit<'_>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = original
        .iter()
        .filter(|(name, _)| !HOP_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
        .collect();
    for edit in edits {
        match edit {
            Edit::Remove(name) => out.retain(|(n, _)| n != name),
            Edit::Set(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.to_string(), value.clone()));
            }
        }
    }
    out
}

/// Response headers to copy from a dispatched call's answer into the local reply
/// the client gets: no pseudo headers, no framing (the host frames the reply).
pub fn response_headers_to_forward(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !name.starts_with(':') && !HOP_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn providers() -> Vec<Provider> {
        let json = r#"{"groups":[{"providers":[
            {"name":"p","cluster":"mock","host":"mock:8000","path":"/v1/chat/completions"},
            {"name":"k","cluster":"openai","host":"api.openai.com","policies":{"auth":{"key":{"env":"K"}}}},
            {"name":"az","cluster":"azure","policies":{"auth":{"key":{"env":"K","header":"api-key"}}}}]}]}"#;
        let env = |n: &str| (n == "K").then(|| "sk-secret".to_string());
        Config::parse(json.as_bytes(), &env).unwrap().providers
    }

    fn original() -> Vec<(String, Vec<u8>)> {
        [
            (":method", "POST"),
            (":path", "/openai?api-version=2024&x=1"),
            (":authority", "gateway:10000"),
            (":scheme", "http"),
            ("content-type", "application/json"),
            ("content-length", "42"),
            ("authorization", "Bearer client-token"),
            ("x-api-key", "client-anthropic"),
            ("x-llm-failover-cluster", "forged"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
    }

    fn get<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn passthrough_provider_keeps_client_credentials_and_rewrites_host_and_path() {
        let p = &providers()[0];
        let h = apply_to(
            &original(),
            &edits_for(
                p,
                "x-llm-failover-cluster",
                Some("/openai?api-version=2024&x=1"),
            ),
        );
        assert_eq!(get(&h, "x-llm-failover-cluster"), ["mock"]);
        assert_eq!(get(&h, ":authority"), ["mock:8000"]);
        assert_eq!(
            get(&h, ":path"),
            ["/v1/chat/completions?api-version=2024&x=1"]
        );
        assert_eq!(get(&h, "authorization"), ["Bearer client-token"]);
        assert!(get(&h, "content-length").is_empty());
    }

    #[test]
    fn key_provider_replaces_every_client_credential() {
        let p = &providers()[1];
        let h = apply_to(
            &original(),
            &edits_for(p, "x-llm-failover-cluster", Some("/openai")),
        );
        assert_eq!(get(&h, "authorization"), ["Bearer sk-secret"]);
        assert!(get(&h, "x-api-key").is_empty());
        assert_eq!(
            get(&h, ":path"),
            ["/openai?api-version=2024&x=1"],
            "no path override keeps the client's"
        );
        let az = &providers()[2];
        let h = apply_to(&original(), &edits_for(az, "x-llm-failover-cluster", None));
        assert_eq!(get(&h, "api-key"), ["sk-secret"]);
        assert!(get(&h, "authorization").is_empty());
        assert_eq!(get(&h, ":authority"), ["gateway:10000"]);
    }

    fn one(provider: &str) -> Provider {
        let json = format!(r#"{{"groups":[{{"providers":[{provider}]}}]}}"#);
        Config::parse(json.as_bytes(), &|_| None)
            .unwrap()
            .providers
            .remove(0)
    }

    #[test]
    fn path_without_query_stays_bare() {
        let p = one(r#"{"name":"a","cluster":"c","path":"/v1/x"}"#);
        assert_eq!(provider_path(&p, "/openai"), "/v1/x");
        assert_eq!(provider_path(&p, "/openai?"), "/v1/x");
        assert_eq!(provider_path(&p, "/openai?a=1&b"), "/v1/x?a=1&b");
    }

    #[test]
    fn provider_query_replaces_the_clients_parameter_of_that_name_and_keeps_the_rest() {
        let p = one(
            r#"{"name":"az","cluster":"c","path":"/openai/deployments/d/chat/completions",
                "query":{"api-version":"2024-10-21"}}"#,
        );
        assert_eq!(
            provider_path(&p, "/v1/chat/completions"),
            "/openai/deployments/d/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            provider_path(&p, "/v1/chat?api-version=old&tag=1&api-version=older"),
            "/openai/deployments/d/chat/completions?tag=1&api-version=2024-10-21"
        );
        // Without a path of its own, the client's path gets the provider's query.
        let q = one(r#"{"name":"q","cluster":"c","query":{"v":"a b&c=d"}}"#);
        assert!(q.rewrites_path());
        assert_eq!(provider_path(&q, "/x?y=1"), "/x?y=1&v=a%20b%26c%3Dd");
    }

    #[test]
    fn query_parameters_are_validated() {
        let bad = r#"{"groups":[{"providers":[{"name":"a","cluster":"c","query":{"v":1}}]}]}"#;
        let e = Config::parse(bad.as_bytes(), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("groups[0].providers[0].query.v"), "{e}");
        let dup =
            r#"{"groups":[{"providers":[{"name":"a","cluster":"c","query":{"v":"1","v":"2"}}]}]}"#;
        let e = Config::parse(dup.as_bytes(), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("given more than once"), "{e}");
    }

    #[test]
    fn forwarded_response_headers_drop_pseudo_and_framing() {
        let headers: Vec<(String, Vec<u8>)> = [
            (":status", "200"),
            ("content-length", "5"),
            ("content-type", "text/event-stream"),
            ("x-request-id", "r"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        let out = response_headers_to_forward(&headers);
        assert_eq!(
            out,
            vec![
                ("content-type".to_string(), "text/event-stream".to_string()),
                ("x-request-id".to_string(), "r".to_string())
            ]
        );
    }
}
