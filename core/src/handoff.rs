//! The client's own values of the headers a provider rewrites, handed from the
//! downstream filter to the upstream filter of each attempt (router mode) as
//! filter state (`wasm.llm_failover_client`): all attempts share one request
//! header map, so every attempt after the first starts from these, and one
//! provider's key never reaches the next. (The plan itself is `plan.rs`.)

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
