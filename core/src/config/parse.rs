//! `Config::parse`: the document's top level, its groups and the health view.

use super::control;
use super::failover::validate_failover;
use super::provider::validate_provider;
use super::reader::{quoted, validate_header_name, Obj};
use super::*;

impl Config {
    /// Parses and validates the plugin configuration. `env` looks up environment
    /// variables (passed in so that this stays pure and testable).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let value =
            json::parse(json).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        let root = Obj::new(&value, String::new())?;
        root.only(&[
            "groups",
            "failover",
            "clusterHeader",
            "maxBodyBytes",
            "healthPath",
            "control",
            "triedHeader",
        ])?;
        if root.get("groups").is_none() && root.get("healthPath").is_some() {
            return view_only(&root);
        }
        let (providers, ranges) = read_groups(&root, env)?;
        let failover = validate_failover(root.object("failover")?)?;
        let cluster_header = match root.string("clusterHeader")? {
            None => DEFAULT_CLUSTER_HEADER.to_string(),
            Some(h) => validate_header_name(h).map_err(|m| ConfigError::new("clusterHeader", m))?,
        };
        let max_body_bytes = root
            .whole_number("maxBodyBytes")?
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(ConfigError::new(
                "maxBodyBytes",
                "must be a positive number of bytes",
            ));
        }
        let health_path = health_path(&root)?;
        let tried_header = root.boolean("triedHeader")?.unwrap_or(true);
        let context = control::Context {
            mode: failover.mode,
            hedge_after_ms: failover.hedge_after_ms,
            attempt_timeout_ms: failover.attempt_timeout_ms,
        };
        let control = control::validate_control(root.object("control")?, context, env)?;
        let needs_json_body = providers.iter().any(|p| p.model.is_some());
        let can_fail_over = failover.within_request && providers.len() > 1;
        let rewritten_headers = rewritten_headers(&providers);
        Ok(Config {
            control,
            tried_header,
            rewritten_headers,
            health_path,
            providers,
            groups: ranges,
            failover,
            cluster_header,
            max_body_bytes,
            needs_json_body,
            can_fail_over,
        })
    }
}

/// `groups`: every provider, validated, in priority order, and each group's range
/// of them. Provider names are unique across groups.
fn read_groups(
    root: &Obj<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Provider>, Vec<std::ops::Range<usize>>), ConfigError> {
    let groups = root.required("groups")?;
    let Value::Array(groups) = groups else {
        return Err(root.wrong_type("groups", groups, "an array"));
    };
    if groups.is_empty() {
        return Err(ConfigError::new(
            "groups",
            "at least one priority group is required",
        ));
    }
    let mut providers = Vec::new();
    let mut ranges = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (g, group) in groups.iter().enumerate() {
        let group = Obj::new(group, format!("groups[{g}]"))?;
        group.only(&["providers"])?;
        group.required("providers")?;
        let list = group.array("providers")?.unwrap_or_default();
        let field = group.at("providers");
        if list.is_empty() {
            return Err(ConfigError::new(
                field,
                "a group needs at least one provider",
            ));
        }
        if list.len() > MAX_GROUP_SIZE {
            return Err(ConfigError::new(
                field,
                format!("a group holds at most {MAX_GROUP_SIZE} providers"),
            ));
        }
        let start = providers.len();
        for (p, raw) in list.iter().enumerate() {
            let at = format!("{field}[{p}]");
            let provider = validate_provider(Obj::new(raw, at.clone())?, g, env)?;
            if let Some(first) = names.insert(provider.name.clone(), at.clone()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "duplicate provider name \"{}\" (also at {first})",
                        provider.name
                    ),
                ));
            }
            providers.push(provider);
        }
        ranges.push(start..providers.len());
    }
    Ok((providers, ranges))
}

/// `healthPath`, when given.
fn health_path(root: &Obj<'_>) -> Result<Option<String>, ConfigError> {
    match root.string("healthPath")? {
        None => Ok(None),
        Some(p)
            if p.starts_with('/')
                && !p.contains('?')
                && !p
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
        {
            Ok(Some(p.to_string()))
        }
        Some(p) => Err(ConfigError::new(
            "healthPath",
            format!(
                "{} must start with '/' and hold no query or whitespace",
                quoted(p)
            ),
        )),
    }
}

/// `{"healthPath": ...}` alone: an instance that only serves the health view, of the
/// providers the routing configurations publish (`registry.rs`), and passes every
/// other request through untouched. No copy of the providers to get wrong.
fn view_only(root: &Obj<'_>) -> Result<Config, ConfigError> {
    if let Some((key, _)) = root.members.iter().find(|(k, _)| k != "healthPath") {
        return Err(ConfigError::new(
            root.at(key),
            "a health-view-only configuration (no `groups`) takes only `healthPath`",
        ));
    }
    Ok(Config {
        control: None,
        tried_header: true,
        rewritten_headers: Vec::new(),
        health_path: health_path(root)?,
        providers: Vec::new(),
        groups: Vec::new(),
        failover: validate_failover(None)?,
        cluster_header: DEFAULT_CLUSTER_HEADER.to_string(),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        needs_json_body: false,
        can_fail_over: false,
    })
}

/// The request headers some provider's edits change: in router mode their client
/// values are kept for the attempts after the first (see `handoff.rs`).
fn rewritten_headers(providers: &[Provider]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !names.iter().any(|have| have == n) {
            names.push(n.to_string());
        }
    };
    for p in providers {
        if p.host.is_some() {
            add(":authority");
        }
        if p.rewrites_path() {
            add(":path");
        }
        if let Auth::Key { header, .. } = &p.auth {
            for h in CLIENT_CREDENTIAL_HEADERS {
                add(h);
            }
            add(header);
        }
    }
    names
}
