//! llm-mock: a small OpenAI-compatible provider for llm-failover's tests and demo.
//!
//! Its flags follow the lab's `llm-d-inference-sim` (`--model`, `--port`,
//! `--failure-injection-rate`, `--failure-types`), plus control of `Retry-After`,
//! latency, SSE streaming and a required API key. A test changes its behaviour at
//! run time with `POST /mock/config` and reads what it received at `GET /mock/requests`.

mod behaviour;
mod http1;
mod server;

use clap::Parser;

use behaviour::Behaviour;

#[derive(Parser, Debug)]
#[command(name = "llm-mock", about = "OpenAI-compatible mock LLM provider")]
struct Args {
    /// Model name reported in responses when the request names none.
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// Port to listen on (0 picks a free one; the chosen port is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on. Loopback by default.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Name reported in the `x-mock-name` response header and in completions.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Percentage (0-100) of chat requests answered with an injected failure.
    #[arg(long, default_value_t = 0)]
    failure_injection_rate: u8,
    /// Comma-separated failure kinds to draw from: rate_limit (429), server_error
    /// (500), bad_gateway (502), service_unavailable (503), gateway_timeout (504),
    /// invalid_api_key (401), invalid_request (400), model_not_found (404).
    #[arg(long, value_delimiter = ',', default_value = "rate_limit")]
    failure_types: Vec<String>,
    /// `Retry-After` value sent with injected failures (seconds or an HTTP-date).
    #[arg(long)]
    retry_after: Option<String>,
    /// Delay before answering, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between SSE chunks of a streamed answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// When set, requests must carry this key (see --api-key-header) or get 401.
    #[arg(long)]
    api_key: Option<String>,
    /// Extra header on successful answers, `NAME: VALUE` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Header that carries the key; `authorization` expects `Bearer <key>`.
    #[arg(long, default_value = "authorization")]
    api_key_header: String,
}

fn main() {
    let args = Args::parse();
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((n, v)) if !n.trim().is_empty() => {
                headers.push((n.trim().to_string(), v.trim().to_string()))
            }
            _ => {
                eprintln!("llm-mock: --header wants NAME: VALUE, got {h:?}");
                std::process::exit(2);
            }
        }
    }
    let behaviour = match Behaviour::new(
        args.failure_injection_rate,
        &args.failure_types,
        args.retry_after,
        args.latency_ms,
        args.chunk_delay_ms,
    ) {
        Ok(b) => Behaviour { headers, ..b },
        Err(e) => {
            eprintln!("llm-mock: {e}");
            std::process::exit(2);
        }
    };
    let settings = server::Settings {
        name: args.name,
        model: args.model,
        api_key: args.api_key,
        api_key_header: args.api_key_header.to_ascii_lowercase(),
    };
    if let Err(e) = server::run(&args.host, args.port, settings, behaviour) {
        eprintln!("llm-mock: {e}");
        std::process::exit(1);
    }
}
