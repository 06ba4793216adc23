//! A provider's `endpoint` (render builds its cluster from it).

use super::reader::quoted;
use super::Endpoint;

/// `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed; a path
/// is not: the provider's `path` says where requests go).
pub(super) fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{} must start with http:// or https://",
            quoted(url)
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.bytes().any(|b| {
            matches!(b, b'/' | b'?' | b'#' | b'@')
                || b.is_ascii_whitespace()
                || b.is_ascii_control()
        })
    {
        return Err(format!(
            "{} must be a scheme and host[:port], with no path, query or user",
            quoted(url)
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{} has an invalid port {}", quoted(url), quoted(p)))?;
            (h, port)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{} has no host", quoted(url)));
    }
    Ok(Endpoint {
        tls,
        host: host.to_string(),
        port,
    })
}
