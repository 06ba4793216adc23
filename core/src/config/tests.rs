//! The configuration's unit tests: defaults, each field's checks and messages.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_with_key(name: &str) -> Option<String> {
    (name == "OPENAI_API_KEY").then(|| "sk-test-123".to_string())
}

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::parse(json.as_bytes(), &env_with_key)
}

fn err(json: &str) -> ConfigError {
    match parse(json) {
        Ok(_) => panic!("config was accepted: {json}"),
        Err(e) => e,
    }
}

const SPEC_EXAMPLE: &str = r#"{
  "groups": [
    { "providers": [
        { "name": "mock-ratelimit-provider", "cluster": "mock_gpt_4o",
          "openai": { "model": "mock-gpt-4o" }, "host": "mock-gpt-4o-svc:8000",
          "path": "/v1/chat/completions",
          "policies": { "auth": { "passthrough": {} } } } ] },
    { "providers": [
        { "name": "openai-fallback", "cluster": "openai",
          "openai": { "model": "gpt-4o-mini" }, "host": "api.openai.com",
          "policies": { "auth": { "key": { "env": "OPENAI_API_KEY" } } } } ] }
  ],
  "failover": { "onStatus": [429, 500, 502, 503, 504], "withinRequest": true,
                "defaultCooldown": "60s", "maxCooldown": "600s" },
  "clusterHeader": "x-llm-failover-cluster"
}"#;

#[test]
fn spec_example_parses_into_typed_config() {
    let c = parse(SPEC_EXAMPLE).unwrap();
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.groups, vec![0..1, 1..2]);
    let p = &c.providers[0];
    assert_eq!(p.model.as_deref(), Some("mock-gpt-4o"));
    assert_eq!(p.host.as_deref(), Some("mock-gpt-4o-svc:8000"));
    assert_eq!(p.path.as_deref(), Some("/v1/chat/completions"));
    assert_eq!(p.auth, Auth::Passthrough);
    assert_eq!(
        p.health_key,
        "llm_failover.health.v1|mock_gpt_4o|mock-gpt-4o"
    );
    assert_eq!(
        c.providers[1].auth,
        Auth::Key {
            header: "authorization".into(),
            value: "Bearer sk-test-123".into()
        }
    );
    assert!(c.failover.within_request);
    assert_eq!(c.failover.default_cooldown_ms, 60_000);
    assert_eq!(c.failover.max_cooldown_ms, 600_000);
    assert!(c.failover.is_failure_status(429));
    assert!(!c.failover.is_failure_status(404));
    assert!(c.needs_json_body);
}

#[test]
fn minimal_config_takes_documented_defaults() {
    let c = parse(r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]}"#).unwrap();
    assert_eq!(c.cluster_header, "x-llm-failover-cluster");
    assert!(c.failover.within_request);
    assert_eq!(c.failover.default_cooldown_ms, 5_000);
    assert_eq!(c.failover.max_backoff_ms, 20_000);
    assert_eq!(c.failover.max_cooldown_ms, 600_000);
    assert_eq!(c.failover.attempt_timeout_ms, 120_000);
    assert_eq!(c.failover.stream_first_byte_timeout_ms, Some(20_000));
    assert_eq!(c.failover.first_token_timeout_ms, None);
    assert_eq!(c.failover.stream_idle_timeout_ms, None);
    assert!(c.failover.routes_streams_apart());
    assert_eq!(c.providers[0].weight, 1);
    assert_eq!(c.providers[0].context_window, None);
    assert_eq!(c.max_body_bytes, 1_000_000);
    for s in [429, 500, 502, 503, 504, 529] {
        assert!(c.failover.is_failure_status(s), "{s}");
    }
    use crate::errors::Class;
    for class in [
        Class::Quota,
        Class::Auth,
        Class::Overloaded,
        Class::ContextLength,
    ] {
        assert!(c.failover.class_fails_over(class), "{class:?}");
    }
    for class in [Class::ContentPolicy, Class::RateLimited, Class::Client] {
        assert!(!c.failover.class_fails_over(class), "{class:?}");
    }
    assert!(!c.needs_json_body);
}

#[test]
fn key_auth_honours_header_and_prefix() {
    let c = parse(
        r#"{"groups":[{"providers":[
          {"name":"az","cluster":"c","policies":{"auth":{"key":{"env":"OPENAI_API_KEY","header":"api-key"}}}},
          {"name":"an","cluster":"d","policies":{"auth":{"key":{"env":"OPENAI_API_KEY","header":"X-Api-Key","prefix":"k="}}}}
        ]}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.providers[0].auth,
        Auth::Key {
            header: "api-key".into(),
            value: "sk-test-123".into()
        }
    );
    assert_eq!(
        c.providers[1].auth,
        Auth::Key {
            header: "x-api-key".into(),
            value: "k=sk-test-123".into()
        }
    );
}

#[test]
fn debug_output_never_shows_the_key() {
    let c = parse(SPEC_EXAMPLE).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("sk-test-123"), "{dump}");
    assert!(dump.contains("<redacted>"));
}

#[test]
fn bad_configs_name_the_field_and_the_problem() {
    let one = |provider: &str| format!(r#"{{"groups":[{{"providers":[{provider}]}}]}}"#);
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "", "not valid JSON: expected"),
        (r#"{"groups":[]}"#.into(), "groups", "at least one priority group"),
        (r#"{}"#.into(), "", "missing field `groups`"),
        (r#"{"groups":[{"providers":[]}]}"#.into(), "groups[0].providers", "at least one provider"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"colour":1}"#.into(), "colour", "unknown field `colour`"),
        (one(r#"{"name":"a","cluster":"c","wieght":2}"#), "groups[0].providers[0].wieght", "unknown field `wieght`"),
        (one(r#"{"name":"a","cluster":"c","weight":0}"#), "groups[0].providers[0].weight", "out of range"),
        (one(r#"{"name":"a","cluster":"c","weight":-1}"#), "groups[0].providers[0].weight", "invalid value"),
        (one(r#"{"name":"","cluster":"c"}"#), "groups[0].providers[0].name", "must not be empty"),
        (one(r#"{"name":"a b","cluster":"c"}"#), "groups[0].providers[0].name", "may only contain"),
        (one(r#"{"name":"a","cluster":""}"#), "groups[0].providers[0].cluster", "must not be empty"),
        (one(r#"{"name":"a","cluster":"c","path":"v1/chat"}"#), "groups[0].providers[0].path", "must start with '/'"),
        (one(r#"{"name":"a","cluster":"c","host":""}"#), "groups[0].providers[0].host", "not a host"),
        (one(r#"{"name":"a","cluster":"c","openai":{"model":""}}"#), "groups[0].providers[0].openai.model", "must not be empty"),
        (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"secretRef":{"name":"x"}}}}"#), "groups[0].providers[0].policies.auth", "unknown auth kind `secretRef`, expected `passthrough` or `key`"),
        (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"key":{"env":"MISSING"}}}}"#), "groups[0].providers[0].policies.auth.key.env", "MISSING is not set"),
        (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"key":{"env":"OPENAI_API_KEY","header":"bad header"}}}}"#), "groups[0].providers[0].policies.auth.key.header", "not a valid HTTP header"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]},{"providers":[{"name":"a","cluster":"d"}]}]}"#.into(), "groups[1].providers[0].name", "duplicate provider name \"a\" (also at groups[0].providers[0])"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"defaultCooldown":"60"}}"#.into(), "failover.defaultCooldown", "missing unit"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxCooldown":"1s","defaultCooldown":"5s"}}"#.into(), "failover.defaultCooldown", "longer than failover.maxCooldown"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxCooldown":"0s"}}"#.into(), "failover.maxCooldown", "longer than 0s"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"onStatus":[200]}}"#.into(), "failover.onStatus[0]", "not an HTTP error status"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"withinRequest":"yes"}}"#.into(), "failover.withinRequest", "invalid type"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"clusterHeader":"x y"}"#.into(), "clusterHeader", "not a valid HTTP header"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"maxBodyBytes":0}"#.into(), "maxBodyBytes", "positive"),
        (one(r#"{"name":"a","cluster":"c","policies":{"auth":{"passthrough":{},"key":{"env":"OPENAI_API_KEY"}}}}"#), "groups[0].providers[0].policies.auth", "exactly one auth kind"),
        (one(r#"{"name":"a","cluster":"c","name":"b"}"#), "groups[0].providers[0].name", "given more than once"),
        (one(r#"{"name":"a","cluster":7}"#), "groups[0].providers[0].cluster", "invalid type: a number, expected a string"),
        (one(r#"{"name":"a","cluster":"c","weight":1.5}"#), "groups[0].providers[0].weight", "invalid value: 1.5"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}]} x"#.into(), "", "expected nothing after the JSON value"),
        (one(r#"{"name":"a","cluster":"c","contextWindow":0}"#), "groups[0].providers[0].contextWindow", "out of range"),
        (one(r#"{"name":"a","cluster":"c","contextWindow":"128k"}"#), "groups[0].providers[0].contextWindow", "invalid type"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxBackoff":"1s"}}"#.into(), "failover.maxBackoff", "shorter than failover.defaultCooldown"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"maxBackoff":"20m"}}"#.into(), "failover.maxBackoff", "longer than failover.maxCooldown"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"rate_limited":"return"}}}"#.into(), "failover.errorClasses.rate_limited", "unknown error class; the classes are quota, auth, overloaded, context_length, content_policy"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"quota":"ignore"}}}"#.into(), "failover.errorClasses.quota", "\"ignore\" is not an action"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"quota":true}}}"#.into(), "failover.errorClasses.quota", "invalid type: a boolean"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"errorClasses":{"quota":"return","quota":"failover"}}}"#.into(), "failover.errorClasses.quota", "given more than once"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"streamFirstByteTimeout":"soon"}}"#.into(), "failover.streamFirstByteTimeout", "bad duration"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","streamFirstByteTimeout":"5s"}}"#.into(), "failover.streamFirstByteTimeout", "needs router mode"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"hedgeAfter":"25s"}}"#.into(), "failover.streamFirstByteTimeout", "must be longer than hedgeAfter"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"firstTokenTimeout":"0s"}}"#.into(), "failover.firstTokenTimeout", "longer than 0s"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","streamIdleTimeout":"5s"}}"#.into(), "failover.streamIdleTimeout", "needs router mode"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"firstTokenTimeout":"5s","streamIdleTimeout":"30s"}}"#.into(), "failover.streamIdleTimeout", "differs from firstTokenTimeout"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","retries":1,"retryWithin":"2s"}}"#.into(), "failover.retryWithin", "needs router mode"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"retries":6}}"#.into(), "failover.retries", "out of range"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"retryWithin":"2s"}}"#.into(), "failover.retryWithin", "needs failover.retries of 1 or more"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"retries":1,"retryWithin":"2m"}}"#.into(), "failover.retryWithin", "out of range"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"mode":"dispatch","backgroundProbes":true}}"#.into(), "failover.backgroundProbes", "needs router mode"),
        (r#"{"groups":[{"providers":[{"name":"a","cluster":"c"}]}],"failover":{"backgroundProbes":"yes"}}"#.into(), "failover.backgroundProbes", "invalid type"),
    ];
    for (json, field, message) in cases {
        let e = err(&json);
        assert_eq!(e.field, field, "{json} gave {e}");
        assert!(e.message.contains(message), "{json} gave {e}");
        assert!(e
            .to_string()
            .starts_with("invalid llm-failover configuration"));
    }
}

#[test]
fn stream_timeouts_and_backoff_defaults_follow_what_is_given() {
    let failover = |f: &str| {
        parse(&format!(
            r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"c"}}]}}],"failover":{f}}}"#
        ))
        .unwrap()
        .failover
    };
    let f = failover(r#"{"streamFirstByteTimeout":"0s"}"#);
    assert_eq!(f.stream_first_byte_timeout_ms, None);
    assert!(!f.routes_streams_apart());
    let f = failover(r#"{"streamFirstByteTimeout":"0s","streamIdleTimeout":"30s"}"#);
    assert!(f.routes_streams_apart());
    assert_eq!(f.stream_silence_ms(), Some(30_000));
    let f = failover(r#"{"firstTokenTimeout":"5s","streamIdleTimeout":"5s"}"#);
    assert_eq!(f.stream_silence_ms(), Some(5_000));
    // Dispatch mode applies none of them, and the default does not make it refuse.
    let f = failover(r#"{"mode":"dispatch"}"#);
    assert_eq!(f.stream_first_byte_timeout_ms, None);
    assert!(!f.routes_streams_apart());
    // A longer defaultCooldown without maxBackoff: no doubling beyond it.
    let f = failover(r#"{"defaultCooldown":"60s"}"#);
    assert_eq!(f.max_backoff_ms, 60_000);
    let f = failover(r#"{"defaultCooldown":"1s","maxCooldown":"10s"}"#);
    assert_eq!(f.max_backoff_ms, 10_000);
    let f = failover(r#"{"hedgeAfter":"25s","streamFirstByteTimeout":"30s"}"#);
    assert_eq!(f.stream_first_byte_timeout_ms, Some(30_000));
}

#[test]
fn missing_key_env_error_does_not_depend_on_other_vars() {
    let json = r#"{"groups":[{"providers":[{"name":"a","cluster":"c","policies":{"auth":{"key":{"env":"OPENAI_API_KEY"}}}}]}]}"#;
    let e = Config::parse(json.as_bytes(), &no_env).unwrap_err();
    assert!(e.message.contains("OPENAI_API_KEY is not set"), "{e}");
}

#[test]
fn same_cluster_different_models_get_separate_health_keys() {
    let c = parse(
        r#"{"groups":[{"providers":[
          {"name":"a","cluster":"c","openai":{"model":"m1"}},
          {"name":"b","cluster":"c","openai":{"model":"m2"}}]}]}"#,
    )
    .unwrap();
    assert_ne!(c.providers[0].health_key, c.providers[1].health_key);
}

#[test]
fn a_health_view_only_configuration_takes_only_health_path() {
    let c = Config::parse(br#"{"healthPath":"/h"}"#, &|_| None).unwrap();
    assert!(c.providers.is_empty() && c.groups.is_empty());
    assert_eq!(c.health_path.as_deref(), Some("/h"));
    let e = Config::parse(br#"{"healthPath":"/h","maxBodyBytes":5}"#, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("maxBodyBytes: a health-view-only"), "{e}");
    let e = Config::parse(br#"{"maxBodyBytes":5}"#, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `groups`"), "{e}");
}

#[test]
fn latency_controls_are_off_by_default_and_checked() {
    let one = |failover: &str| {
        Config::parse(
            format!(r#"{{"groups":[{{"providers":[{{"name":"a","cluster":"a"}}]}}],"failover":{failover}}}"#)
                .as_bytes(),
            &|_| None,
        )
    };
    let off = one("{}").unwrap().failover;
    assert_eq!(
        (off.first_byte_timeout_ms, off.hedge_after_ms),
        (None, None)
    );
    let on = one(r#"{"firstByteTimeout":"750ms","hedgeAfter":"250ms"}"#)
        .unwrap()
        .failover;
    assert_eq!(
        (on.first_byte_timeout_ms, on.hedge_after_ms),
        (Some(750), Some(250))
    );
    for (raw, want) in [
        (
            r#"{"firstByteTimeout":"1s","mode":"dispatch"}"#,
            "failover.firstByteTimeout: needs router mode",
        ),
        (
            r#"{"firstByteTimeout":"0s"}"#,
            "failover.firstByteTimeout: must be longer than 0s",
        ),
        (
            r#"{"hedgeAfter":"0s"}"#,
            "failover.hedgeAfter: must be longer than 0s",
        ),
        (
            r#"{"hedgeAfter":"1s","mode":"dispatch"}"#,
            "failover.hedgeAfter: needs router mode",
        ),
        (
            r#"{"hedgeAfter":"1s","withinRequest":false}"#,
            "failover.hedgeAfter: needs withinRequest",
        ),
        (
            r#"{"hedgeAfter":"2s","firstByteTimeout":"2s"}"#,
            "failover.hedgeAfter: 2s must be shorter than firstByteTimeout (2000 ms)",
        ),
        (r#"{"hedgeAfter":"soon"}"#, "failover.hedgeAfter"),
    ] {
        let e = one(raw).unwrap_err().to_string();
        assert!(e.contains(want), "{raw}: {e}");
    }
}

fn env_with_secret(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("a-long-enough-secret-value".to_string()),
        "SHORT" => Some("too-short".to_string()),
        "SPACED" => Some("a secret with spaces in it".to_string()),
        _ => None,
    }
}

fn with_control(control: &str, failover: &str) -> Result<Config, ConfigError> {
    let json = format!(
        r#"{{"groups": [{{"providers": [{{"name": "a", "cluster": "a"}}, {{"name": "b", "cluster": "b"}}]}}],
            "failover": {{{failover}}}, "control": {control}}}"#
    );
    Config::parse(json.as_bytes(), &env_with_secret)
}

#[test]
fn control_is_off_unless_given_and_the_tried_header_on() {
    let c = parse(SPEC_EXAMPLE).unwrap();
    assert!(c.control.is_none());
    assert!(c.tried_header);
    let off = parse(
        r#"{"groups": [{"providers": [{"name": "a", "cluster": "a"}]}], "triedHeader": false}"#,
    )
    .unwrap();
    assert!(!off.tried_header);
}

#[test]
fn control_reads_its_secret_and_bounds() {
    let c = with_control(
        r#"{"secret": {"env": "SECRET"}, "firstByteTimeout": {"min": "1s", "max": "30s"},
            "hedgeAfter": {"min": "100ms", "max": "5s"}}"#,
        r#""hedgeAfter": "2s""#,
    )
    .unwrap();
    let control = c.control.unwrap();
    assert_eq!(control.secret, b"a-long-enough-secret-value");
    assert_eq!(
        control.first_byte_timeout,
        Some(Bounds {
            min_ms: 1000,
            max_ms: 30_000
        })
    );
    assert_eq!(
        control.hedge_after,
        Some(Bounds {
            min_ms: 100,
            max_ms: 5000
        })
    );
    // The secret never reaches a log line.
    assert!(!format!("{control:?}").contains("long-enough"));
}

#[test]
fn control_errors_name_the_field() {
    let cases = [
        (r#"{}"#, "", "control.secret", "is required"),
        (
            r#"{"secret": {"env": "UNSET"}}"#,
            "",
            "control.secret.env",
            "at least 16 bytes",
        ),
        (
            r#"{"secret": {"env": "SHORT"}}"#,
            "",
            "control.secret.env",
            "it holds 9",
        ),
        (
            r#"{"secret": {"env": "SPACED"}}"#,
            "",
            "control.secret.env",
            "printable ASCII",
        ),
        (
            r#"{"secret": {"env": " "}}"#,
            "",
            "control.secret.env",
            "must name",
        ),
        (
            r#"{"secret": {"env": "SECRET"}, "firstByteTimeout": {"min": "2s"}}"#,
            "",
            "control.firstByteTimeout",
            "missing field `max`",
        ),
        (
            r#"{"secret": {"env": "SECRET"}, "firstByteTimeout": {"min": "2s", "max": "1s"}}"#,
            "",
            "control.firstByteTimeout.min",
            "longer than max",
        ),
        (
            r#"{"secret": {"env": "SECRET"}, "firstByteTimeout": {"min": "0s", "max": "1s"}}"#,
            "",
            "control.firstByteTimeout.min",
            "longer than 0s",
        ),
        (
            r#"{"secret": {"env": "SECRET"}, "hedgeAfter": {"min": "1s", "max": "2s"}}"#,
            "",
            "control.hedgeAfter",
            "needs failover.hedgeAfter",
        ),
        (
            r#"{"secret": {"env": "SECRET"}, "hedgeAfter": {"min": "2s", "max": "3s"}, "firstByteTimeout": {"min": "1s", "max": "2s"}}"#,
            r#""hedgeAfter": "1s""#,
            "control.hedgeAfter",
            "no request could set both",
        ),
        (
            r#"{"secret": {"env": "SECRET"}}"#,
            r#""mode": "dispatch""#,
            "control",
            "needs router mode",
        ),
        (
            r#"{"secret": {"env": "SECRET"}, "retries": 1}"#,
            "",
            "control.retries",
            "unknown field",
        ),
    ];
    for (control, failover, field, message) in cases {
        let e = with_control(control, failover).expect_err(control);
        assert_eq!(e.field, field, "{control}: {e}");
        assert!(e.message.contains(message), "{control}: {e}");
    }
}

#[test]
fn host_comes_from_the_endpoint_when_not_given() {
    let host_of = |endpoint: &str, host: &str| {
        let json = format!(
            r#"{{"groups": [{{"providers": [{{"name": "a", "cluster": "a", "endpoint": "{endpoint}"{host}}}]}}]}}"#
        );
        parse(&json).unwrap().providers[0].host.clone()
    };
    assert_eq!(
        host_of("https://api.openai.com", "").as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        host_of("https://api.openai.com:443/", "").as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        host_of("http://127.0.0.1:8000", "").as_deref(),
        Some("127.0.0.1:8000")
    );
    assert_eq!(
        host_of("http://[::1]:8000", "").as_deref(),
        Some("[::1]:8000")
    );
    assert_eq!(
        host_of("http://vllm.internal", "").as_deref(),
        Some("vllm.internal")
    );
    // An explicit host wins.
    assert_eq!(
        host_of(
            "https://10.0.0.7",
            r#", "host": "my-resource.openai.azure.com""#
        )
        .as_deref(),
        Some("my-resource.openai.azure.com")
    );
}
