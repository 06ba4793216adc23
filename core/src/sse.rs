//! Watching a streamed (SSE) answer for its end: OpenAI-style streams finish with
//! `data: [DONE]`, after a chunk whose `finish_reason` is set. A stream that ends
//! without either broke off. Pure: chunks come in as they pass.

/// The longest marker looked for, so a marker split across two chunks is still seen.
const TAIL: usize = 48;

#[derive(Debug, Default)]
pub struct StreamWatch {
    tail: Vec<u8>,
    finished: bool,
}

impl StreamWatch {
    /// Looks at the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.finished {
            return;
        }
        let mut hay = std::mem::take(&mut self.tail);
        hay.extend_from_slice(chunk);
        if find(&hay, b"data: [DONE]").is_some()
            || find(&hay, b"data:[DONE]").is_some()
            || finish_reason_set(&hay)
        {
            self.finished = true;
            return;
        }
        let keep = hay.len().saturating_sub(TAIL);
        self.tail = hay.split_off(keep);
    }

    /// Whether the stream has said it is finished.
    pub fn finished(&self) -> bool {
        self.finished
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `"finish_reason"` followed by a string value (not `null`).
fn finish_reason_set(hay: &[u8]) -> bool {
    const KEY: &[u8] = b"\"finish_reason\"";
    let mut from = 0;
    while let Some(at) = find(&hay[from..], KEY) {
        let rest = &hay[from + at + KEY.len()..];
        let mut i = 0;
        while rest.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        if rest.get(i) == Some(&b':') {
            i += 1;
            while rest.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
                i += 1;
            }
            if rest.get(i) == Some(&b'"') {
                return true;
            }
        }
        from += at + KEY.len();
    }
    false
}

/// The event appended to a stream that broke off, so that an OpenAI SDK raises an
/// error instead of returning half an answer.
pub fn error_event(provider: &str) -> String {
    let message =
        format!("the stream from provider {provider} broke off before it finished (no [DONE])");
    format!(
        "data: {}\n\n",
        crate::reply::error_body(&message, "api_error", "broken_stream")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&str]) -> bool {
        let mut w = StreamWatch::default();
        for c in chunks {
            w.feed(c.as_bytes());
        }
        w.finished()
    }

    #[test]
    fn done_or_a_finish_reason_ends_a_stream() {
        assert!(watch(&["data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"]));
        assert!(watch(&[
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\": \"stop\"}]}\n\n"
        ]));
        assert!(!watch(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"4\"},\"finish_reason\":null}]}\n\n"
        ]));
        assert!(!watch(&[]));
    }

    #[test]
    fn markers_split_across_chunks_are_seen() {
        assert!(watch(&["data: {}\n\ndata: [DO", "NE]\n\n"]));
        assert!(watch(&["{\"finish_re", "ason\":\"length\"}"]));
        let long = "x".repeat(10_000);
        assert!(!watch(&[&long, &long]));
    }

    #[test]
    fn the_error_event_is_one_sse_event_with_an_openai_error() {
        let e = error_event("p");
        assert!(
            e.starts_with("data: {\"error\":{") && e.ends_with("}\n\n"),
            "{e}"
        );
        assert!(e.contains("\"code\":\"broken_stream\""), "{e}");
    }
}
