//! Per-request control (README "Per-request control"): what a request's control
//! headers ask for, and whether they count. Pure: the downstream filter reads the
//! headers, hands their values in, and removes every one of them from the request
//! whatever this says, so no control header ever reaches a provider.
//!
//! Trust is a shared secret (`control.secret`) in `x-llm-failover-secret`, compared
//! in constant time. Why not a header an auth filter sets: this filter cannot tell
//! whether the operator's auth filter ran before it and removed a client's own copy
//! of that header; a secret is checked here, whatever else the chain does.

use subtle::ConstantTimeEq;

use crate::config::{Bounds, Config};
use crate::duration::parse_duration_ms;
use crate::names::{
    CONTROL_FALLBACK_HEADER, CONTROL_FIRST_BYTE_HEADER, CONTROL_HEADERS, CONTROL_HEDGE_HEADER,
    CONTROL_PROVIDERS_HEADER,
};

/// What a trusted request asked for. The default asks for nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wish {
    /// Only these providers (configuration indices), in this order.
    pub order: Option<Vec<usize>>,
    /// False: no provider after the first (`x-llm-failover-fallback: off`).
    pub fallback: bool,
    /// This request's `firstByteTimeout` (ms).
    pub first_byte_timeout_ms: Option<u64>,
    /// This request's `hedgeAfter`: `Some(None)` switches hedging off.
    pub hedge_after_ms: Option<Option<u64>>,
}

impl Default for Wish {
    fn default() -> Self {
        Wish {
            order: None,
            fallback: true,
            first_byte_timeout_ms: None,
            hedge_after_ms: None,
        }
    }
}

impl Wish {
    /// The request's `hedgeAfter`: its own, else the configured one.
    pub fn hedge_after_ms(&self, config: &Config) -> Option<u64> {
        match self.hedge_after_ms {
            Some(own) => own,
            None => config.failover.hedge_after_ms,
        }
    }
}

/// What became of a request's control headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// None on the request: nothing to remove, nothing to log.
    Absent,
    /// Headers from a caller without the secret (or with control off): removed and
    /// ignored; the access log says why.
    Ignored(String),
    /// A trusted request: what it asked for, and the access log's account of it.
    Applied(Wish, String),
    /// A trusted request with a value that cannot be honoured: answered 400 with this.
    Refused(String),
}

impl Screened {
    /// The access log's `control` field, if any.
    pub fn log(&self) -> Option<String> {
        match self {
            Screened::Absent => None,
            Screened::Ignored(why) => Some(format!("ignored: {why}")),
            Screened::Applied(_, what) => Some(format!("applied: {what}")),
            Screened::Refused(why) => Some(format!("refused: {why}")),
        }
    }
}

/// Judges a request's control headers: `values[i]` is the value of
/// `CONTROL_HEADERS[i]` on the request, if present (the secret first).
pub fn screen(config: &Config, values: &[Option<&[u8]>; 5]) -> Screened {
    let present: Vec<&str> = CONTROL_HEADERS
        .iter()
        .zip(values)
        .filter(|(_, v)| v.is_some())
        .map(|(name, _)| *name)
        .collect();
    if present.is_empty() {
        return Screened::Absent;
    }
    let Some(control) = &config.control else {
        return Screened::Ignored(format!(
            "per-request control is off ({})",
            present.join(", ")
        ));
    };
    let trusted = match values[0] {
        // `ct_eq` on slices of different lengths is false at once: the length of
        // the secret is not hidden, its bytes are.
        Some(given) => bool::from(given.ct_eq(&control.secret)),
        None => {
            return Screened::Ignored(format!("no secret ({})", present.join(", ")));
        }
    };
    if !trusted {
        return Screened::Ignored(format!("wrong secret ({})", present.join(", ")));
    }
    match read_wish(config, values) {
        Ok(wish) => {
            let what = describe(config, &wish);
            Screened::Applied(wish, what)
        }
        Err(why) => Screened::Refused(why),
    }
}

/// A trusted request's control values, each checked against the configuration.
fn read_wish(config: &Config, values: &[Option<&[u8]>; 5]) -> Result<Wish, String> {
    let text = |i: usize| -> Result<Option<&str>, String> {
        match values[i] {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v)
                .map(|s| Some(s.trim()))
                .map_err(|_| format!("{} is not valid UTF-8", CONTROL_HEADERS[i])),
        }
    };
    let mut wish = Wish::default();
    if let Some(v) = text(1)? {
        wish.fallback = on_off(CONTROL_FALLBACK_HEADER, v)?;
    }
    if let Some(v) = text(2)? {
        wish.order = Some(providers(config, v)?);
    }
    let bounds = config.control.as_ref();
    if let Some(v) = text(3)? {
        let b = bounds.and_then(|c| c.first_byte_timeout).ok_or_else(|| {
            format!(
                "{CONTROL_FIRST_BYTE_HEADER}: this gateway does not let a request set its \
                 firstByteTimeout (control.firstByteTimeout)"
            )
        })?;
        wish.first_byte_timeout_ms = Some(bounded(CONTROL_FIRST_BYTE_HEADER, v, b)?);
    }
    if let Some(v) = text(4)? {
        if config.failover.hedge_after_ms.is_none() {
            return Err(format!(
                "{CONTROL_HEDGE_HEADER}: this gateway does not hedge (failover.hedgeAfter)"
            ));
        }
        wish.hedge_after_ms = Some(if v.eq_ignore_ascii_case("off") {
            None
        } else {
            let b = bounds.and_then(|c| c.hedge_after).ok_or_else(|| {
                format!(
                    "{CONTROL_HEDGE_HEADER}: this gateway lets a request only switch \
                     hedging off (\"off\"), not set hedgeAfter (control.hedgeAfter)"
                )
            })?;
            Some(bounded(CONTROL_HEDGE_HEADER, v, b)?)
        });
    }
    let first_byte = wish
        .first_byte_timeout_ms
        .or(config.failover.first_byte_timeout_ms);
    // Only what the request changed is checked here (the configuration's own pair was
    // checked at load), and only when it can hedge at all: with one provider to ask
    // there is no hedge to send.
    let can_hedge = wish.fallback && wish.order.as_ref().is_none_or(|o| o.len() > 1);
    let changed =
        can_hedge && (wish.hedge_after_ms.is_some() || wish.first_byte_timeout_ms.is_some());
    if let (true, Some(hedge), Some(fbt)) = (changed, wish.hedge_after_ms(config), first_byte) {
        if hedge >= fbt {
            return Err(format!(
                "hedgeAfter ({hedge} ms) must be shorter than firstByteTimeout ({fbt} \
                 ms), which would abandon the attempt before the hedge is sent"
            ));
        }
    }
    Ok(wish)
}

fn on_off(header: &str, v: &str) -> Result<bool, String> {
    if v.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(format!("{header}: {v:?} is neither \"on\" nor \"off\""))
    }
}

/// `a,b`: configured provider names, each once, at least one.
fn providers(config: &Config, v: &str) -> Result<Vec<usize>, String> {
    let mut order = Vec::new();
    for name in v.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(format!(
                "{CONTROL_PROVIDERS_HEADER}: an empty name in {v:?} (names are separated \
                 by commas)"
            ));
        }
        let Some(i) = config.providers.iter().position(|p| p.name == name) else {
            let known: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "{CONTROL_PROVIDERS_HEADER}: no provider {name:?} in this gateway's \
                 configuration (it has {})",
                known.join(", ")
            ));
        };
        if order.contains(&i) {
            return Err(format!(
                "{CONTROL_PROVIDERS_HEADER}: {name:?} is named twice"
            ));
        }
        order.push(i);
    }
    Ok(order)
}

fn bounded(header: &str, v: &str, b: Bounds) -> Result<u64, String> {
    let ms = parse_duration_ms(v).map_err(|e| format!("{header}: {e}"))?;
    if !b.contain(ms) {
        return Err(format!(
            "{header}: {v} is outside the bounds this gateway allows ({} ms to {} ms)",
            b.min_ms, b.max_ms
        ));
    }
    Ok(ms)
}

/// The access log's account of what a trusted request asked for.
fn describe(config: &Config, wish: &Wish) -> String {
    let mut parts = Vec::new();
    if !wish.fallback {
        parts.push("fallback=off".to_string());
    }
    if let Some(order) = &wish.order {
        let names: Vec<&str> = order
            .iter()
            .filter_map(|i| config.providers.get(*i).map(|p| p.name.as_str()))
            .collect();
        parts.push(format!("providers={}", names.join(",")));
    }
    if let Some(ms) = wish.first_byte_timeout_ms {
        parts.push(format!("first-byte-timeout={ms}ms"));
    }
    match wish.hedge_after_ms {
        Some(Some(ms)) => parts.push(format!("hedge-after={ms}ms")),
        Some(None) => parts.push("hedge-after=off".to_string()),
        None => {}
    }
    if parts.is_empty() {
        "trusted, nothing asked".to_string()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";

    fn config(extra: &str) -> Config {
        let json = format!(
            r#"{{"groups": [
                {{"providers": [{{"name": "a", "cluster": "ca"}}, {{"name": "b", "cluster": "cb"}}]}},
                {{"providers": [{{"name": "c", "cluster": "cc"}}]}}],
              "failover": {{"hedgeAfter": "2s", "firstByteTimeout": "10s"}}{extra}}}"#
        );
        let env = |v: &str| (v == "CONTROL_SECRET").then(|| SECRET.to_string());
        match Config::parse(json.as_bytes(), &env) {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        }
    }

    const ON: &str = r#", "control": {"secret": {"env": "CONTROL_SECRET"},
        "firstByteTimeout": {"min": "1s", "max": "30s"},
        "hedgeAfter": {"min": "100ms", "max": "5s"}}"#;

    fn values<'a>(pairs: &[(usize, &'a str)]) -> [Option<&'a [u8]>; 5] {
        let mut v = [None; 5];
        for (i, text) in pairs {
            v[*i] = Some(text.as_bytes());
        }
        v
    }

    #[test]
    fn no_control_header_is_absent_and_costs_no_log() {
        assert_eq!(screen(&config(ON), &values(&[])), Screened::Absent);
        assert_eq!(Screened::Absent.log(), None);
    }

    #[test]
    fn with_control_off_every_header_is_ignored_even_with_a_secret() {
        let s = screen(&config(""), &values(&[(0, SECRET), (1, "off")]));
        assert_eq!(
            s.log().as_deref(),
            Some("ignored: per-request control is off (x-llm-failover-secret, x-llm-failover-fallback)")
        );
    }

    #[test]
    fn a_missing_or_forged_secret_is_ignored() {
        let c = config(ON);
        let none = screen(&c, &values(&[(2, "c")]));
        assert_eq!(
            none,
            Screened::Ignored("no secret (x-llm-failover-providers)".into())
        );
        for forged in [
            "",
            "0123456789abcdef-secreT",
            "0123456789abcdef-secret-",
            "x",
        ] {
            let s = screen(&c, &values(&[(0, forged), (1, "off")]));
            assert!(
                matches!(&s, Screened::Ignored(w) if w.starts_with("wrong secret")),
                "{forged}: {s:?}"
            );
        }
    }

    #[test]
    fn a_trusted_request_gets_each_thing_it_asks_for() {
        let c = config(ON);
        let s = screen(
            &c,
            &values(&[
                (0, SECRET),
                (1, "OFF"),
                (2, " c , a"),
                (3, "2500ms"),
                (4, "off"),
            ]),
        );
        let Screened::Applied(wish, what) = s else {
            unreachable!("{s:?}")
        };
        assert_eq!(
            wish,
            Wish {
                order: Some(vec![2, 0]),
                fallback: false,
                first_byte_timeout_ms: Some(2500),
                hedge_after_ms: Some(None),
            }
        );
        assert_eq!(
            what,
            "fallback=off providers=c,a first-byte-timeout=2500ms hedge-after=off"
        );
        assert_eq!(wish.hedge_after_ms(&c), None);
        let only_secret = screen(&c, &values(&[(0, SECRET)]));
        assert_eq!(
            only_secret.log().as_deref(),
            Some("applied: trusted, nothing asked")
        );
    }

    #[test]
    fn a_trusted_request_with_a_bad_value_is_refused_naming_it() {
        let c = config(ON);
        let refused = |pairs: &[(usize, &str)]| match screen(&c, &values(pairs)) {
            Screened::Refused(why) => why,
            other => unreachable!("{pairs:?}: {other:?}"),
        };
        assert!(refused(&[(0, SECRET), (1, "maybe")]).contains("\"maybe\" is neither"));
        assert!(refused(&[(0, SECRET), (2, "a,zzz")]).contains("no provider \"zzz\""));
        assert!(refused(&[(0, SECRET), (2, "a,,b")]).contains("an empty name"));
        assert!(refused(&[(0, SECRET), (2, "a,a")]).contains("named twice"));
        assert!(refused(&[(0, SECRET), (3, "500ms")]).contains("outside the bounds"));
        assert!(refused(&[(0, SECRET), (3, "31s")]).contains("outside the bounds"));
        assert!(refused(&[(0, SECRET), (3, "soon")]).contains("x-llm-failover-first-byte-timeout"));
        assert!(refused(&[(0, SECRET), (4, "6s")]).contains("outside the bounds"));
        // hedgeAfter at or over the request's firstByteTimeout.
        assert!(refused(&[(0, SECRET), (3, "1s"), (4, "1s")]).contains("must be shorter"));
        // The configured hedgeAfter (2s) over the request's firstByteTimeout, too...
        assert!(refused(&[(0, SECRET), (3, "1s")]).contains("must be shorter"));
        // Bytes that are not text.
        let mut v = values(&[(0, SECRET)]);
        v[2] = Some(&[0xff, 0xfe]);
        assert!(matches!(screen(&c, &v), Screened::Refused(w) if w.contains("UTF-8")));
    }

    #[test]
    fn a_request_that_cannot_hedge_may_set_a_first_byte_timeout_under_hedge_after() {
        let c = config(ON);
        for pairs in [
            [(0, SECRET), (3, "1s"), (1, "off")],
            [(0, SECRET), (3, "1s"), (2, "b")],
        ] {
            let s = screen(&c, &values(&pairs));
            assert!(matches!(s, Screened::Applied(..)), "{pairs:?}: {s:?}");
        }
    }

    #[test]
    fn what_the_configuration_does_not_allow_is_refused() {
        let c = config(r#", "control": {"secret": {"env": "CONTROL_SECRET"}}"#);
        let s = screen(&c, &values(&[(0, SECRET), (3, "2s")]));
        assert!(
            matches!(&s, Screened::Refused(w) if w.contains("control.firstByteTimeout")),
            "{s:?}"
        );
        let s = screen(&c, &values(&[(0, SECRET), (4, "1s")]));
        assert!(
            matches!(&s, Screened::Refused(w) if w.contains("only switch")),
            "{s:?}"
        );
        // Switching hedging off needs no bounds.
        assert!(matches!(
            screen(&c, &values(&[(0, SECRET), (4, "off")])),
            Screened::Applied(..)
        ));
    }
}
