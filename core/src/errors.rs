//! What a provider's failing answer says: its error class, from the status and the
//! first bytes of its (JSON) error body, and the retry hint some providers put in the
//! body instead of a header. Pure; the wording is a table with a unit test per
//! provider's documented body (OpenAI, Azure OpenAI, Anthropic, Gemini, vLLM,
//! OpenRouter, DeepSeek).
//!
//! The body is matched as lower-case text rather than parsed: providers wrap their
//! errors differently (`{"error": {...}}`, Anthropic's `{"type": "error", ...}`,
//! vLLM's flat `{"object": "error", ...}`, Gemini's OpenAI-compatible endpoint's
//! `[{"error": {...}}]`), and a body cut at the read limit is still worth reading.

/// How much of a failing answer's body the upstream filter reads before it decides.
pub const BODY_LIMIT: usize = 16 * 1024;

/// What kind of failure an answer is. Each has its own `reason` label and default
/// action (docs/configuration.md, "Error classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 429 that is not a spent quota.
    RateLimited,
    /// The account is out of quota or credit (OpenAI `insufficient_quota`, 402,
    /// Anthropic's credit and usage-limit 400s): billing does not heal in a minute.
    Quota,
    /// The provider refused the credentials (401/403, Gemini's `API_KEY_INVALID`).
    Auth,
    /// Anthropic's 529 `overloaded_error`, a 503 that says it is overloaded.
    Overloaded,
    /// The request does not fit the model's context window: the request is at fault.
    ContextLength,
    /// A content-policy rejection (OpenAI `content_policy_violation`, Azure
    /// `content_filter`): the request is at fault.
    ContentPolicy,
    /// Another 5xx.
    ServerError,
    /// Another 4xx (a client mistake, unless `onStatus` says otherwise).
    Client,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::RateLimited => "rate_limited",
            Class::Quota => "quota",
            Class::Auth => "auth",
            Class::Overloaded => "overloaded",
            Class::ContextLength => "context_length",
            Class::ContentPolicy => "content_policy",
            Class::ServerError => "server_error",
            Class::Client => "status",
        }
    }

    /// The classes whose action `failover.errorClasses` can set, by their names there.
    pub const CONFIGURABLE: [Class; 5] = [
        Class::Quota,
        Class::Auth,
        Class::Overloaded,
        Class::ContextLength,
        Class::ContentPolicy,
    ];

    pub fn from_name(name: &str) -> Option<Class> {
        Class::CONFIGURABLE.into_iter().find(|c| c.as_str() == name)
    }
}

/// One line of the wording table: the class an answer is when its status is one of
/// `statuses` (empty: any) and its lower-cased body contains one of `markers`.
struct Rule {
    class: Class,
    statuses: &'static [u16],
    markers: &'static [&'static str],
}

/// First match wins; order matters where wordings overlap (Gemini says "exceeded your
/// current quota" on ordinary per-minute 429s, so OpenAI's quota is told by its code).
const RULES: [Rule; 5] = [
    Rule {
        class: Class::Quota,
        statuses: &[400, 402, 403, 429],
        markers: &[
            // OpenAI: 429 with code and type insufficient_quota; its spend-limit codes.
            "insufficient_quota",
            "spend_limit_exceeded",
            "usage_limit_exceeded",
            "credit_balance_exhausted",
            // Anthropic: a 429 whose details say the spend limit is reached; billing_error.
            "enforced_spend_limit_reached",
            "billing_error",
            // Gemini: a per-day quota (its retryDelay would not help).
            "perday",
            // Anthropic: 400 invalid_request_error.
            "credit balance is too low",
            "reached your specified api usage limits",
            // DeepSeek: 402.
            "insufficient balance",
            // OpenRouter: 402.
            "insufficient credits",
        ],
    },
    Rule {
        class: Class::Auth,
        statuses: &[400],
        // Gemini answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
        markers: &["api_key_invalid", "api key not valid"],
    },
    Rule {
        class: Class::ContextLength,
        statuses: &[400, 413, 422],
        markers: &[
            // OpenAI, Azure OpenAI, Groq: the code.
            "context_length_exceeded",
            // OpenAI, Azure, vLLM, DeepSeek, Mistral: "This model's maximum context length is N tokens".
            "maximum context length",
            // Anthropic: "prompt is too long: 208310 tokens > 200000 maximum", and "input
            // length and `max_tokens` exceed context limit".
            "prompt is too long",
            "exceed context limit",
            // Azure OpenAI, newer models: "Input tokens exceed the configured limit of N tokens".
            "input tokens exceed the configured limit",
            // Gemini: "The input token count (N) exceeds the maximum number of tokens allowed (M)".
            "exceeds the maximum number of tokens",
            "context window",
        ],
    },
    Rule {
        class: Class::ContentPolicy,
        statuses: &[400, 403],
        markers: &[
            // OpenAI: images and moderation.
            "content_policy_violation",
            // Azure OpenAI: code content_filter, innererror ResponsibleAIPolicyViolation.
            "content_filter",
            "responsibleaipolicyviolation",
            "content management policy",
        ],
    },
    Rule {
        class: Class::Overloaded,
        statuses: &[500, 502, 503, 504, 529],
        markers: &[
            // Anthropic: 529 {"type":"overloaded_error"}; OpenAI: "The engine is
            // currently overloaded"; Gemini: 503 "The model is overloaded", newer
            // "currently experiencing high demand".
            "overloaded",
            "high demand",
        ],
    },
];

/// The class of a failing answer (status >= 400) from its status and body prefix.
pub fn classify(status: u16, body: &[u8]) -> Class {
    let text = lower(body);
    for rule in &RULES {
        if (rule.statuses.is_empty() || rule.statuses.contains(&status))
            && rule.markers.iter().any(|m| text.contains(m))
        {
            return rule.class;
        }
    }
    match status {
        401 | 403 => Class::Auth,
        402 => Class::Quota,
        429 => Class::RateLimited,
        529 => Class::Overloaded,
        500..=599 => Class::ServerError,
        _ => Class::Client,
    }
}

fn lower(body: &[u8]) -> String {
    let cut = &body[..body.len().min(BODY_LIMIT)];
    String::from_utf8_lossy(cut).to_ascii_lowercase()
}

/// How long the body asks the client to wait, for answers whose headers say
/// nothing: Gemini's `RetryInfo.retryDelay` (`"37s"`), OpenAI's "Please try again in
/// 20s" / "in 1.2s" / "in 6ms", Azure's "Please retry after 6 seconds".
pub fn retry_hint_ms(body: &[u8]) -> Option<u64> {
    let text = lower(body);
    if let Some(at) = text.find("\"retrydelay\"") {
        let rest = text[at + "\"retrydelay\"".len()..].trim_start();
        let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
        let value = &rest[..rest.find('"')?];
        return crate::duration::parse_duration_ms(value).ok();
    }
    for lead in ["try again in ", "retry after ", "retry in "] {
        let Some(at) = text.find(lead) else { continue };
        if let Some(ms) = spoken_duration_ms(&text[at + lead.len()..]) {
            return Some(ms);
        }
    }
    None
}

/// A duration at the start of `text`: a Go-style one (`20s`, `1.2s`, `6ms`, `1m30s`)
/// or a number of seconds in words (`6 seconds`, `1 second`).
fn spoken_duration_ms(text: &str) -> Option<u64> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .unwrap_or(text.len());
    let token = text[..end].trim_end_matches('.');
    if let Ok(ms) = crate::duration::parse_duration_ms(token) {
        return Some(ms);
    }
    let rest = text[end..].trim_start();
    if rest.starts_with("second") {
        return crate::duration::parse_duration_ms(&format!("{token}s")).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies as the providers document them (see docs/configuration.md, "Error classes",
    // for the sources).
    const OPENAI_RATE_LIMIT: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 1.2s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const OPENAI_CONTEXT: &str = r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130415 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    const OPENAI_POLICY: &str = r#"{"error":{"code":"content_policy_violation","message":"Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.","param":null,"type":"invalid_request_error"}}"#;
    const OPENAI_KEY: &str = r#"{"error":{"message":"Incorrect API key provided: sk-abc. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    const OPENAI_OVERLOADED: &str = r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}"#;
    const OPENAI_500: &str = r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#;
    const AZURE_FILTER: &str = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#;
    const AZURE_RATE: &str = r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}"#;
    const AZURE_CONTEXT: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9013 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded","status":400}}"#;
    const AZURE_KEY: &str = r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#;
    const ANTHROPIC_OVERLOADED: &str =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    const ANTHROPIC_CONTEXT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#;
    const ANTHROPIC_CREDIT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    const ANTHROPIC_USAGE: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC."}}"#;
    const ANTHROPIC_RATE: &str = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later."}}"#;
    const ANTHROPIC_KEY: &str =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    const ANTHROPIC_API_ERROR: &str =
        r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
    const GEMINI_RATE: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more about Gemini API quotas","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
    const GEMINI_CONTEXT: &str = r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
    const GEMINI_PER_DAY: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"25"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"5s"}]}}"#;
    const GEMINI_DEMAND: &str = r#"{"error":{"code":503,"message":"This model is currently experiencing high demand. Spikes in demand are usually temporary. Please try again later.","status":"UNAVAILABLE"}}"#;
    const OPENAI_SPEND: &str = r#"{"error":{"message":"You have exceeded the spend limit of your organization.","type":"insufficient_quota","param":null,"code":"organization_spend_limit_exceeded"}}"#;
    const ANTHROPIC_CONTEXT_LIMIT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, decrease input length or `max_tokens` and try again"}}"#;
    const AZURE_CONTEXT_NEW: &str = r#"{"error":{"message":"Input tokens exceed the configured limit of 272000 tokens. Your messages resulted in 509178 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    const GROQ_CONTEXT: &str = r#"{"error":{"message":"Please reduce the length of the messages or completion.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    const DEEPSEEK_CONTEXT: &str = r#"{"error":{"message":"This model's maximum context length is 131072 tokens. However, you requested 131134 tokens (122942 in the messages, 8192 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#;
    const OPENROUTER_MORE_CREDITS: &str = r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 65536 tokens, but can only afford 10114.","code":402,"metadata":{"provider_name":null}}}"#;
    const GEMINI_OVERLOADED: &str = r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
    const GEMINI_KEY: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
    // Gemini's OpenAI-compatible endpoint wraps the same error in an array.
    const GEMINI_COMPAT_RATE: &str = r#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}]"#;
    const VLLM_CONTEXT_OLD: &str = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#;
    const VLLM_CONTEXT_NEW: &str = r#"{"error":{"message":"This model's maximum context length is 32768 tokens. However, your request has 40000 input tokens. Please reduce the length of the input messages.","type":"BadRequestError","param":null,"code":400}}"#;
    const OPENROUTER_CREDITS: &str = r#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/settings/credits"}}"#;
    const DEEPSEEK_BALANCE: &str = r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#;

    /// Each provider's documented failing answers and the class each must get.
    const DOCUMENTED: [(&str, u16, &str, Class); 39] = [
        (
            "openai rate limit",
            429,
            OPENAI_RATE_LIMIT,
            Class::RateLimited,
        ),
        ("openai insufficient_quota", 429, OPENAI_QUOTA, Class::Quota),
        ("openai spend limit", 429, OPENAI_SPEND, Class::Quota),
        (
            "openai context length",
            400,
            OPENAI_CONTEXT,
            Class::ContextLength,
        ),
        (
            "openai content policy",
            400,
            OPENAI_POLICY,
            Class::ContentPolicy,
        ),
        ("openai invalid key", 401, OPENAI_KEY, Class::Auth),
        (
            "openai overloaded",
            503,
            OPENAI_OVERLOADED,
            Class::Overloaded,
        ),
        ("openai 500", 500, OPENAI_500, Class::ServerError),
        (
            "azure content filter",
            400,
            AZURE_FILTER,
            Class::ContentPolicy,
        ),
        ("azure rate limit", 429, AZURE_RATE, Class::RateLimited),
        (
            "azure context length",
            400,
            AZURE_CONTEXT,
            Class::ContextLength,
        ),
        (
            "azure input tokens limit",
            400,
            AZURE_CONTEXT_NEW,
            Class::ContextLength,
        ),
        ("azure invalid key", 401, AZURE_KEY, Class::Auth),
        (
            "anthropic 529",
            529,
            ANTHROPIC_OVERLOADED,
            Class::Overloaded,
        ),
        (
            "anthropic prompt too long",
            400,
            ANTHROPIC_CONTEXT,
            Class::ContextLength,
        ),
        (
            "anthropic context limit",
            400,
            ANTHROPIC_CONTEXT_LIMIT,
            Class::ContextLength,
        ),
        (
            "anthropic credit balance",
            400,
            ANTHROPIC_CREDIT,
            Class::Quota,
        ),
        ("anthropic usage limits", 400, ANTHROPIC_USAGE, Class::Quota),
        (
            "anthropic rate limit",
            429,
            ANTHROPIC_RATE,
            Class::RateLimited,
        ),
        ("anthropic invalid key", 401, ANTHROPIC_KEY, Class::Auth),
        (
            "anthropic api_error",
            500,
            ANTHROPIC_API_ERROR,
            Class::ServerError,
        ),
        // Gemini's per-minute 429 says "quota" but is a rate limit with a retry delay.
        ("gemini 429", 429, GEMINI_RATE, Class::RateLimited),
        ("gemini per-day quota", 429, GEMINI_PER_DAY, Class::Quota),
        (
            "gemini input token count",
            400,
            GEMINI_CONTEXT,
            Class::ContextLength,
        ),
        (
            "gemini overloaded",
            503,
            GEMINI_OVERLOADED,
            Class::Overloaded,
        ),
        ("gemini high demand", 503, GEMINI_DEMAND, Class::Overloaded),
        ("gemini invalid key", 400, GEMINI_KEY, Class::Auth),
        (
            "gemini openai-compatible 429",
            429,
            GEMINI_COMPAT_RATE,
            Class::RateLimited,
        ),
        (
            "vllm context length, old body",
            400,
            VLLM_CONTEXT_OLD,
            Class::ContextLength,
        ),
        (
            "vllm context length, new body",
            400,
            VLLM_CONTEXT_NEW,
            Class::ContextLength,
        ),
        (
            "openrouter insufficient credits",
            402,
            OPENROUTER_CREDITS,
            Class::Quota,
        ),
        (
            "openrouter more credits",
            402,
            OPENROUTER_MORE_CREDITS,
            Class::Quota,
        ),
        (
            "deepseek insufficient balance",
            402,
            DEEPSEEK_BALANCE,
            Class::Quota,
        ),
        (
            "deepseek context length",
            400,
            DEEPSEEK_CONTEXT,
            Class::ContextLength,
        ),
        (
            "groq context length",
            400,
            GROQ_CONTEXT,
            Class::ContextLength,
        ),
        // Status alone.
        ("a bare 429", 429, "", Class::RateLimited),
        ("a bare 402", 402, "{}", Class::Quota),
        ("a bare 403", 403, "forbidden", Class::Auth),
        ("a bare 529", 529, "", Class::Overloaded),
    ];

    #[test]
    fn each_providers_documented_bodies_get_their_class() {
        for (what, status, body, class) in DOCUMENTED {
            assert_eq!(classify(status, body.as_bytes()), class, "{what}");
        }
    }

    #[test]
    fn status_alone_when_the_body_says_nothing_known() {
        assert_eq!(
            classify(502, b"<html>bad gateway</html>"),
            Class::ServerError
        );
        assert_eq!(classify(404, b"{}"), Class::Client);
        assert_eq!(
            classify(400, br#"{"error":{"message":"Invalid request"}}"#),
            Class::Client
        );
        // Markers count only with their statuses: a 500 quoting "context length" is a 500.
        assert_eq!(classify(500, b"maximum context length"), Class::ServerError);
    }

    #[test]
    fn a_body_cut_at_the_limit_or_not_json_is_still_read() {
        let end = OPENAI_QUOTA.find("insufficient_quota").unwrap() + 20;
        let mut cut = OPENAI_QUOTA.as_bytes()[..end].to_vec();
        cut.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(classify(429, &cut), Class::Quota);
        let mut long = vec![b' '; BODY_LIMIT];
        long.extend_from_slice(b"insufficient_quota");
        assert_eq!(classify(429, &long), Class::RateLimited, "beyond the limit");
    }

    #[test]
    fn retry_hints_in_bodies() {
        assert_eq!(retry_hint_ms(GEMINI_RATE.as_bytes()), Some(37_000));
        assert_eq!(retry_hint_ms(GEMINI_COMPAT_RATE.as_bytes()), Some(1_500));
        assert_eq!(retry_hint_ms(OPENAI_RATE_LIMIT.as_bytes()), Some(1_200));
        assert_eq!(
            retry_hint_ms(b"Rate limit reached. Please try again in 20s."),
            Some(20_000)
        );
        assert_eq!(retry_hint_ms(b"Please try again in 6ms."), Some(6));
        assert_eq!(retry_hint_ms(b"Please try again in 1m30s."), Some(90_000));
        assert_eq!(retry_hint_ms(AZURE_RATE.as_bytes()), Some(6_000));
        assert_eq!(retry_hint_ms(b"Try again in 1 second"), Some(1_000));
        assert_eq!(
            retry_hint_ms(b"Rate limit is exceeded. Try again in 2 seconds."),
            Some(2_000)
        );
        assert_eq!(retry_hint_ms(b"Please try again in 2m5.5s."), Some(125_500));
        assert_eq!(retry_hint_ms(OPENAI_QUOTA.as_bytes()), None);
        assert_eq!(retry_hint_ms(b"please try again later"), None);
        assert_eq!(retry_hint_ms(br#"{"retryDelay": 37}"#), None);
        assert_eq!(retry_hint_ms(br#"{"retryDelay": "soon"}"#), None);
    }

    #[test]
    fn configurable_classes_by_name() {
        assert_eq!(Class::from_name("quota"), Some(Class::Quota));
        assert_eq!(
            Class::from_name("content_policy"),
            Some(Class::ContentPolicy)
        );
        assert_eq!(Class::from_name("rate_limited"), None);
        assert_eq!(Class::from_name("status"), None);
    }
}
