//! Reading the configuration's JSON: typed access to an object's members, with
//! the path of each field for error messages (built one way, `Obj::at`) and unknown
//! fields refused.

use super::ConfigError;
use crate::json::Value;

/// Joins a field name onto a path (`groups[0].providers` + `name`).
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// An object member list and the path it sits at.
pub(super) struct Obj<'a> {
    pub(super) path: String,
    pub(super) members: &'a [(String, Value)],
}

impl<'a> Obj<'a> {
    pub(super) fn new(value: &'a Value, path: String) -> Result<Self, ConfigError> {
        match value {
            Value::Object(members) => Ok(Obj { path, members }),
            other => Err(ConfigError::new(
                path,
                format!("invalid type: {}, expected an object", other.kind()),
            )),
        }
    }

    /// Refuses members not in `known` and members given twice.
    pub(super) fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        for (key, _) in self.members {
            if !known.contains(&key.as_str()) {
                let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                return Err(ConfigError::new(
                    join(&self.path, key),
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        expected.join(", ")
                    ),
                ));
            }
        }
        self.unique()
    }

    /// Refuses members given twice.
    pub(super) fn unique(&self) -> Result<(), ConfigError> {
        for (i, (key, _)) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|(k, _)| k == key) {
                return Err(ConfigError::new(
                    join(&self.path, key),
                    "given more than once",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(super) fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(super) fn required(&self, key: &str) -> Result<&'a Value, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(self.path.clone(), format!("missing field `{key}`")))
    }

    pub(super) fn wrong_type(&self, key: &str, found: &Value, expected: &str) -> ConfigError {
        ConfigError::new(
            self.at(key),
            format!("invalid type: {}, expected {expected}", found.kind()),
        )
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, other, "a string")),
        }
    }

    pub(super) fn required_string(&self, key: &str) -> Result<&'a str, ConfigError> {
        self.required(key)?;
        self.string(key)?
            .ok_or_else(|| ConfigError::new(self.path.clone(), format!("missing field `{key}`")))
    }

    /// `env`: the name of an environment variable (a key's, the control secret's).
    pub(super) fn env_name(&self) -> Result<&'a str, ConfigError> {
        let var = self.required_string("env")?.trim();
        if var.is_empty() {
            return Err(ConfigError::new(
                self.at("env"),
                "must name an environment variable",
            ));
        }
        Ok(var)
    }

    pub(super) fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(key, other, "a boolean")),
        }
    }

    pub(super) fn whole_number(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(text)) => whole_number(text)
                .map(Some)
                .ok_or_else(|| ConfigError::new(self.at(key), invalid_number(text))),
            Some(other) => Err(self.wrong_type(key, other, "a whole number")),
        }
    }

    pub(super) fn array(&self, key: &str) -> Result<Option<&'a [Value]>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong_type(key, other, "an array")),
        }
    }

    pub(super) fn object(&self, key: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        self.get(key).map(|v| Obj::new(v, self.at(key))).transpose()
    }
}

pub(super) fn whole_number(text: &str) -> Option<u64> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

pub(super) fn invalid_number(text: &str) -> String {
    format!("invalid value: {text}, expected a whole number that is not negative")
}

/// A user-supplied string for an error message, quoted with anything unprintable
/// escaped.
pub(super) fn quoted(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

/// Header names are compared in lower case (Envoy lower-cases them); a name with
/// upper case letters is accepted and normalised, anything not a token is refused.
pub(super) fn validate_header_name(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if lower.is_empty() || !lower.bytes().all(token) {
        return Err(format!("{} is not a valid HTTP header name", quoted(name)));
    }
    Ok(lower)
}
