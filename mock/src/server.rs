//! The HTTP side of the mock: routes, the OpenAI-shaped answers, SSE streaming and
//! the request log.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::behaviour::{Behaviour, Update};

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
    let server =
        Server::http((host, port)).map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .unwrap_or(port);
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
    for request in server.incoming_requests() {
        let state = Arc::clone(&state);
        thread::spawn(move || handle(&state, request));
    }
    Ok(())
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"x-mock-bad-header"[..], &b"1"[..]).expect("static header")
    })
}

fn json_response(state: &State, status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("content-type", "application/json"))
        .with_header(header("x-mock-name", &state.settings.name))
}

fn error_json(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn handle(state: &State, mut request: Request) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    if request.as_reader().read_to_end(&mut body).is_err() {
        // The client (Envoy) gave up mid-body: nothing was really sent to us.
        return;
    }

    match (&method, path.as_str()) {
        (Method::Get, "/mock/healthz") => {
            let _ = request.respond(json_response(state, 200, &json!({"ok": true})));
        }
        (Method::Get, "/mock/requests") => {
            let log = state
                .requests
                .lock()
                .map(|l| Value::Array(l.clone()))
                .unwrap_or(Value::Null);
            let _ = request.respond(json_response(state, 200, &log));
        }
        (Method::Post, "/mock/reset") => {
            if let Ok(mut l) = state.requests.lock() {
                l.clear();
            }
            let _ = request.respond(json_response(state, 200, &json!({"ok": true})));
        }
        (Method::Post, "/mock/config") => {
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
            let _ = request.respond(json_response(state, status, &v));
        }
        _ => {
            record(state, &method, &url, &headers, &body);
            serve_api(state, request, &method, &path, &headers, &body);
        }
    }
}

fn record(state: &State, method: &Method, url: &str, headers: &[(String, String)], body: &[u8]) {
    let entry = json!({
        "method": method.as_str(),
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
    request: Request,
    method: &Method,
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
            let _ = request.respond(json_response(state, 401, &e));
            return;
        }
    }
    match (method, path) {
        (Method::Get, "/v1/models") => {
            let v = json!({"object": "list", "data": [{"id": state.settings.model, "object": "model", "owned_by": state.settings.name}]});
            let _ = request.respond(json_response(state, 200, &v));
        }
        (Method::Post, "/v1/chat/completions") => chat(state, request, &behaviour, body),
        _ => {
            let e = error_json(
                &format!("Unknown request URL: {} {path}", method.as_str()),
                "invalid_request_error",
                "unknown_url",
            );
            let _ = request.respond(json_response(state, 404, &e));
        }
    }
}

fn chat(state: &State, request: Request, behaviour: &Behaviour, body: &[u8]) {
    let seq = state.seq.fetch_add(1, Ordering::Relaxed);
    if let Some((status, kind, message)) = behaviour.failure(roll(state), seq) {
        let mut resp = json_response(state, status, &error_json(message, kind, kind));
        if let Some(ra) = &behaviour.retry_after {
            resp = resp.with_header(header("retry-after", ra));
        }
        let _ = request.respond(resp);
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
            let _ = request.respond(json_response(state, 400, &err));
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
        stream(state, request, behaviour, &id, created, &model, &content);
        return;
    }
    let v = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}
    });
    let _ = request.respond(json_response(state, 200, &v));
}

/// Writes an SSE answer by hand, one flushed HTTP chunk per event, so the client
/// sees each event when it is sent (a buffered response would hide streaming).
fn stream(
    state: &State,
    request: Request,
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

    let mut w = request.into_writer();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-mock-name: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        state.settings.name
    );
    if w.write_all(head.as_bytes())
        .and_then(|_| w.flush())
        .is_err()
    {
        return;
    }
    for (i, event) in events.iter().enumerate() {
        if i > 0 && behaviour.chunk_delay_ms > 0 {
            thread::sleep(Duration::from_millis(behaviour.chunk_delay_ms));
        }
        let framed = format!("{:x}\r\n{event}\r\n", event.len());
        if w.write_all(framed.as_bytes())
            .and_then(|_| w.flush())
            .is_err()
        {
            return;
        }
    }
    let _ = w.write_all(b"0\r\n\r\n").and_then(|_| w.flush());
}
