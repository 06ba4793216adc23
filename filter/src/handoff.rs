//! What the downstream filter hands to the upstream filter of each attempt (router
//! mode), and to Envoy's router: pure encodings, no host calls.
//!
//! - The plan (`wasm.llm_failover_plan` filter state): provider indices in attempt
//!   order, `!` after one whose health record must be reset by a success, and a
//!   leading `=` when the downstream filter rewrote the first attempt's body itself
//!   (it always rewrites the first attempt's headers).
//! - The cluster order for the router's priority-group cluster specifier: a
//!   `google.protobuf.Value` list of `{name: <cluster>}`, serialized and base64'd,
//!   which `header_to_metadata` turns into dynamic metadata (and removes the header).
//! - The client's own values of the headers a provider rewrites
//!   (`wasm.llm_failover_client` filter state): all attempts share one request
//!   header map, so every attempt after the first starts from these, and one
//!   provider's key never reaches the next.

use crate::attempt::Plan;
use crate::config::Config;

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

/// The router's cluster order for this request (see the module doc).
pub fn cluster_order(config: &Config, plan: &Plan) -> String {
    let mut list = Vec::new();
    for i in plan.indices() {
        let Some(p) = config.providers.get(i) else {
            continue;
        };
        let mut string_value = Vec::new();
        field(3, p.cluster.as_bytes(), &mut string_value); // Value.string_value
        let mut entry = Vec::new();
        field(1, b"name", &mut entry); // map entry key
        field(2, &string_value, &mut entry); // map entry value
        let mut fields = Vec::new();
        field(1, &entry, &mut fields); // Struct.fields
        let mut value = Vec::new();
        field(5, &fields, &mut value); // Value.struct_value
        field(1, &value, &mut list); // ListValue.values
    }
    let mut out = Vec::new();
    field(6, &list, &mut out); // Value.list_value
    base64(&out)
}

/// A length-delimited protobuf field.
fn field(number: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push((number << 3) | 2);
    let mut n = body.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
}

/// Standard base64 with padding (what `header_to_metadata`'s `BASE64` decodes).
fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

    fn config() -> Config {
        let json = r#"{"groups":[{"providers":[{"name":"a","cluster":"ca"}]},
            {"providers":[{"name":"b","cluster":"cb"}]}]}"#;
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

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
    fn cluster_order_is_a_base64_protobuf_list_of_names() {
        let plan = Plan {
            picks: vec![pick(1, 0), pick(0, 0)],
            all_cooling: false,
        };
        // Value{list_value{values:[{struct{"name":"cb"}}, {struct{"name":"ca"}}]}}, made by hand.
        let one = |c: &str| {
            let mut v = vec![0x1a, c.len() as u8];
            v.extend_from_slice(c.as_bytes());
            let mut e = vec![0x0a, 4];
            e.extend_from_slice(b"name");
            e.push(0x12);
            e.push(v.len() as u8);
            e.extend_from_slice(&v);
            let mut s = vec![0x0a, e.len() as u8];
            s.extend_from_slice(&e);
            let mut val = vec![0x2a, s.len() as u8];
            val.extend_from_slice(&s);
            let mut item = vec![0x0a, val.len() as u8];
            item.extend_from_slice(&val);
            item
        };
        let mut list = one("cb");
        list.extend(one("ca"));
        let mut want = vec![0x32, list.len() as u8];
        want.extend_from_slice(&list);
        assert_eq!(cluster_order(&config(), &plan), base64(&want));
    }

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
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
