//! One provider of `groups[].providers[]`, validated field by field.

use super::endpoint::parse_endpoint;
use super::reader::{quoted, validate_header_name, Obj};
use super::*;

pub(super) fn validate_provider(
    rp: Obj<'_>,
    group: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    rp.only(&[
        "name",
        "cluster",
        "endpoint",
        "openai",
        "host",
        "path",
        "query",
        "weight",
        "policies",
        "contextWindow",
    ])?;
    let name = provider_name(&rp)?;
    let cluster = provider_cluster(&rp)?;
    let model = provider_model(&rp)?;
    let host = provider_host(&rp)?;
    let path = provider_path(&rp)?;
    let query = provider_query(&rp)?;
    let weight = provider_weight(&rp)?;
    let endpoint = match rp.string("endpoint")? {
        None => None,
        Some(url) => Some(parse_endpoint(url).map_err(|m| ConfigError::new(rp.at("endpoint"), m))?),
    };
    // Without `host`, the provider gets the Host its endpoint names: what a client
    // calling it directly would send (a provider behind a shared front end routes by it).
    let host = host.or_else(|| endpoint.as_ref().map(Endpoint::authority));
    let (auth, auth_env) = provider_auth(&rp, env)?;
    let context_window = context_window(&rp)?;
    let model_json = model.as_deref().map(json::quote);
    let health_key = format!(
        "{HEALTH_KEY_PREFIX}{cluster}|{}",
        model.as_deref().unwrap_or("")
    );
    Ok(Provider {
        name,
        cluster,
        model,
        model_json,
        host,
        path,
        query,
        weight,
        auth,
        auth_env,
        endpoint,
        group,
        health_key,
        context_window,
    })
}

/// A provider's `name`: it becomes a metric name segment and a response header value.
pub(super) fn provider_name(rp: &Obj<'_>) -> Result<String, ConfigError> {
    let name = rp.required_string("name")?.trim().to_string();
    if name.is_empty() {
        return Err(ConfigError::new(rp.at("name"), "must not be empty"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(ConfigError::new(
            rp.at("name"),
            format!(
                "{} may only contain ASCII letters, digits, '-' and '_'",
                quoted(&name)
            ),
        ));
    }
    Ok(name)
}

pub(super) fn provider_cluster(rp: &Obj<'_>) -> Result<String, ConfigError> {
    let cluster = rp.required_string("cluster")?.trim().to_string();
    if cluster.is_empty() {
        return Err(ConfigError::new(rp.at("cluster"), "must not be empty"));
    }
    if cluster.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            rp.at("cluster"),
            "contains control characters",
        ));
    }
    Ok(cluster)
}

/// `openai.model`, when given.
pub(super) fn provider_model(rp: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    let Some(o) = rp.object("openai")? else {
        return Ok(None);
    };
    o.only(&["model"])?;
    let model = o.required_string("model")?;
    if model.trim().is_empty() {
        return Err(ConfigError::new(o.at("model"), "must not be empty"));
    }
    Ok(Some(model.to_string()))
}

pub(super) fn provider_host(rp: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    let Some(h) = rp.string("host")? else {
        return Ok(None);
    };
    let h = h.trim().to_string();
    if h.is_empty()
        || h.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        return Err(ConfigError::new(
            rp.at("host"),
            format!("{} is not a host[:port]", quoted(&h)),
        ));
    }
    Ok(Some(h))
}

pub(super) fn provider_path(rp: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    let Some(p) = rp.string("path")? else {
        return Ok(None);
    };
    if !p.starts_with('/')
        || p.contains('?')
        || p.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ConfigError::new(
            rp.at("path"),
            format!(
                "{} must start with '/' and hold no query or whitespace",
                quoted(p)
            ),
        ));
    }
    Ok(Some(p.to_string()))
}

/// `query`: parameter names and values, percent-encoded, in configuration order.
pub(super) fn provider_query(rp: &Obj<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(q) = rp.object("query")? else {
        return Ok(Vec::new());
    };
    let mut pairs = Vec::new();
    q.unique()?;
    for (key, _) in q.members {
        if key.is_empty() {
            return Err(ConfigError::new(q.at(key), "a parameter needs a name"));
        }
        let value = q.required_string(key)?;
        pairs.push((percent_encode(key), percent_encode(value)));
    }
    Ok(pairs)
}

pub(super) fn provider_weight(rp: &Obj<'_>) -> Result<u32, ConfigError> {
    match rp.whole_number("weight")? {
        None => Ok(1),
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w as u32),
        Some(w) => Err(ConfigError::new(
            rp.at("weight"),
            format!("{w} is out of range; a weight is an integer from 1 to {MAX_WEIGHT}"),
        )),
    }
}

/// `policies.auth`: passthrough, or a key from an environment variable (and that
/// variable's name, for render).
pub(super) fn provider_auth(
    rp: &Obj<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Auth, Option<String>), ConfigError> {
    let Some(k) = auth_kind(rp)? else {
        return Ok((Auth::Passthrough, None));
    };
    let var = k.env_name()?;
    // What is wrong in the file first; the environment is looked at last.
    let header = match k.string("header")? {
        None => "authorization".to_string(),
        Some(h) => validate_header_name(h).map_err(|m| ConfigError::new(k.at("header"), m))?,
    };
    let prefix = k.string("prefix")?.map(str::to_string).unwrap_or_else(|| {
        if header == "authorization" {
            "Bearer ".into()
        } else {
            String::new()
        }
    });
    if prefix.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            k.at("prefix"),
            "contains control characters",
        ));
    }
    let key = env(var).unwrap_or_default();
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::new(
            k.at("env"),
            format!(
                "environment variable {var} is not set or empty in the Wasm VM: it \
                 must be exported in Envoy's own environment and listed in \
                 vm_config.environment_variables.host_env_keys (render lists it)"
            ),
        ));
    }
    if key.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::new(
            k.at("env"),
            format!("environment variable {var} holds control characters"),
        ));
    }
    let auth = Auth::Key {
        header,
        value: format!("{prefix}{key}"),
    };
    Ok((auth, Some(var.to_string())))
}

/// `contextWindow`, when given.
pub(super) fn context_window(rp: &Obj<'_>) -> Result<Option<u64>, ConfigError> {
    match rp.whole_number("contextWindow")? {
        None => Ok(None),
        Some(n) if (1..=MAX_CONTEXT_WINDOW).contains(&n) => Ok(Some(n)),
        Some(n) => Err(ConfigError::new(
            rp.at("contextWindow"),
            format!("{n} is out of range; it is a number of tokens from 1 to {MAX_CONTEXT_WINDOW}"),
        )),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a configured
/// query parameter can never end or split the query it is put into.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The provider's `policies.auth`: `None` for passthrough (or nothing set), the
/// `key` object otherwise. Exactly one kind may be given.
pub(super) fn auth_kind<'a>(provider: &Obj<'a>) -> Result<Option<Obj<'a>>, ConfigError> {
    let Some(policies) = provider.object("policies")? else {
        return Ok(None);
    };
    policies.only(&["auth"])?;
    let Some(auth) = policies.object("auth")? else {
        return Ok(None);
    };
    match auth.members {
        [(kind, value)] if kind == "passthrough" => {
            Obj::new(value, auth.at(kind))?.only(&[])?;
            Ok(None)
        }
        [(kind, value)] if kind == "key" => {
            let key = Obj::new(value, auth.at(kind))?;
            key.only(&["env", "header", "prefix"])?;
            Ok(Some(key))
        }
        [(kind, _)] => Err(ConfigError::new(
            auth.path.clone(),
            format!("unknown auth kind `{kind}`, expected `passthrough` or `key`"),
        )),
        members => Err(ConfigError::new(
            auth.path.clone(),
            format!(
                "exactly one auth kind (`passthrough` or `key`) is required, found {}",
                members.len()
            ),
        )),
    }
}
