//! The HTTP side of the mock: routes, the OpenAI-shaped answers, SSE streaming and
//! the request log.

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::behaviour::{Behaviour, Update};
use crate::http1::{self, Request, Responder, Response};

pub struct Settings {
    pub name: String,
    pub model: String,
    pub api_key: Option<String>,
    pub api_key_header: String,
}

struct State {
    settings: Settings,
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Value>>,
    seq: AtomicU64,
    rng: Mutex<u64>,
}

pub fn run(host: &str, port: u16, settings: Settings, behaviour: Behaviour) -> Result<(), String> {
    let listener = TcpListener::bind((host, port))
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("llm-mock {} listening on {host}:{bound}", settings.name);
    let _ = std::io::stdout().flush();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let state = Arc::new(State {
        settings,
        behaviour: Mutex::new(behaviour),
        requests: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
        rng: Mutex::new(seed),
    });
    http1::serve(
        listener,
        Arc::new(move |request: Request, out: &mut Responder<'_>| handle(&state, request, out)),
    );
    Ok(())
}

fn json_response(state: &State, status: u16, body: &Value) -> Response {
    Response::new(status, body.to_string().into_bytes())
        .with_header("content-type", "application/json")
        .with_header("x-mock-name", &state.settings.name)
}

fn error_json(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn handle(state: &State, request: Request, out: &mut Responder<'_>) {
    let Request {
        method,
        url,
        headers,
        body,
    } = request;
    let path = url.split('?').next().unwrap_or("").to_string();

    match (method.as_str(), path.as_str()) {
        ("GET", "/mock/healthz") => {
            let _ = out.respond(json_response(state, 200, &json!({"ok": true})));
        }
        ("GET", "/mock/requests") => {
            let log = state
                .requests
                .lock()
                .map(|l| Value::Array(l.clone()))
                .unwrap_or(Value::Null);
            let _ = out.respond(json_response(state, 200, &log));
        }
        ("POST", "/mock/reset") => {
            if let Ok(mut l) = state.requests.lock() {
                l.clear();
            }
            let _ = out.respond(json_response(state, 200, &json!({"ok": true})));
        }
        ("POST", "/mock/config") => {
            let result = serde_json::from_slice::<Update>(&body)
                .map_err(|e| e.to_string())
                .and_then(|u| match state.behaviour.lock() {
                    Ok(mut b) => b.apply(u),
                    Err(_) => Err("state poisoned".into()),
                });
            let (status, v) = match result {
                Ok(()) => (200, json!({"ok": true})),
                Err(e) => (400, json!({"error": e})),
            };
            let _ = out.respond(json_response(state, status, &v));
        }
        _ => {
            record(state, &method, &url, &headers, &body);
            serve_api(state, out, &method, &path, &headers, &body);
        }
    }
}

fn record(state: &State, method: &str, url: &str, headers: &[(String, String)], body: &[u8]) {
    let entry = json!({
        "method": method,
        "path": url,
        "headers": headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
        "body": String::from_utf8_lossy(body),
    });
    if let Ok(mut l) = state.requests.lock() {
        l.push(entry);
    }
}

fn roll(state: &State) -> u8 {
    let mut x = state.rng.lock().map(|g| *g).unwrap_or(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if let Ok(mut g) = state.rng.lock() {
        *g = x;
    }
    (x % 100) as u8
}

fn serve_api(
    state: &State,
    out: &mut Responder<'_>,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let behaviour = match state.behaviour.lock() {
        Ok(b) => b.clone(),
        Err(_) => return,
    };
    if behaviour.latency_ms > 0 {
        thread::sleep(Duration::from_millis(behaviour.latency_ms));
    }
    if let Some(key) = &state.settings.api_key {
        let want = if state.settings.api_key_header == "authorization" {
            format!("Bearer {key}")
        } else {
            key.clone()
        };
        let got = headers
            .iter()
            .find(|(n, _)| *n == state.settings.api_key_header)
            .map(|(_, v)| v.as_str());
        if got != Some(want.as_str()) {
            let e = error_json(
                "Incorrect API key provided",
                "invalid_request_error",
                "invalid_api_key",
            );
            let _ = out.respond(json_response(state, 401, &e));
            return;
        }
    }
    match (method, path) {
        ("GET", "/v1/models") => {
            let v = json!({"object": "list", "data": [{"id": state.settings.model, "object": "model", "owned_by": state.settings.name}]});
            let _ = out.respond(json_response(state, 200, &v));
        }
        // OpenAI's path, and every OpenAI-compatible one: Azure OpenAI's
        // `/openai/deployments/<name>/chat/completions`, Gemini's
        // `/v1beta/openai/chat/completions`, a local server's `/v1/chat/completions`.
        ("POST", p) if p.ends_with("/chat/completions") => chat(state, out, &behaviour, body),
        _ => {
            let e = error_json(
                &format!("Unknown request URL: {method} {path}"),
                "invalid_request_error",
                "unknown_url",
            );
            let _ = out.respond(json_response(state, 404, &e));
        }
    }
}

fn chat(state: &State, out: &mut Responder<'_>, behaviour: &Behaviour, body: &[u8]) {
    let seq = state.seq.fetch_add(1, Ordering::Relaxed);
    if let Some((status, kind, message)) = behaviour.failure(roll(state), seq) {
        let mut resp = match &behaviour.failure_body {
            Some(raw) => Response::new(
                behaviour.failure_status.unwrap_or(status),
                raw.clone().into_bytes(),
            )
            .with_header("content-type", "application/json")
            .with_header("x-mock-name", &state.settings.name),
            None => json_response(
                state,
                behaviour.failure_status.unwrap_or(status),
                &error_json(message, kind, kind),
            ),
        };
        if let Some(ra) = &behaviour.retry_after {
            resp = resp.with_header("retry-after", ra);
        }
        for (n, v) in &behaviour.failure_headers {
            resp = resp.with_header(n, v);
        }
        let _ = out.respond(resp);
        return;
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let err = error_json(
                &format!("We could not parse the JSON body of your request: {e}"),
                "invalid_request_error",
                "invalid_json",
            );
            let _ = out.respond(json_response(state, 400, &err));
            return;
        }
    };
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(&state.settings.model)
        .to_string();
    let content = format!("Hello from {}! 2+2 is 4.", state.settings.name);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("chatcmpl-{}-{seq}", state.settings.name);
    if parsed.get("stream").and_then(Value::as_bool) == Some(true) {
        stream(state, out, behaviour, &id, created, &model, &content);
        return;
    }
    let v = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}
    });
    let mut resp = json_response(state, 200, &v);
    for (n, val) in &behaviour.headers {
        resp = resp.with_header(n, val);
    }
    let _ = out.respond(resp);
}

/// Writes an SSE answer by hand, one flushed HTTP chunk per event, so the client
/// sees each event when it is sent (a buffered response would hide streaming).
fn stream(
    state: &State,
    out: &mut Responder<'_>,
    behaviour: &Behaviour,
    id: &str,
    created: u64,
    model: &str,
    content: &str,
) {
    let mut events: Vec<String> = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    events.push(format!(
        "data: {}\n\n",
        chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    ));
    for word in content.split_inclusive(' ') {
        events.push(format!(
            "data: {}\n\n",
            chunk(json!({"content": word}), Value::Null)
        ));
    }
    events.push(format!("data: {}\n\n", chunk(json!({}), json!("stop"))));
    events.push("data: [DONE]\n\n".to_string());

    let headers = [
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
        ("x-mock-name".to_string(), state.settings.name.clone()),
    ];
    if out.start_stream(200, &headers).is_err() {
        return;
    }
    for (i, event) in events.iter().enumerate() {
        if i == 0 && behaviour.first_event_delay_ms > 0 {
            thread::sleep(Duration::from_millis(behaviour.first_event_delay_ms));
        }
        if i > 0 && behaviour.stall_after == Some(i) {
            thread::sleep(Duration::from_millis(behaviour.stall_ms));
        }
        if i > 0 && behaviour.chunk_delay_ms > 0 {
            thread::sleep(Duration::from_millis(behaviour.chunk_delay_ms));
        }
        if out.chunk(event.as_bytes()).is_err() {
            return;
        }
    }
    let _ = out.end_stream();
}
