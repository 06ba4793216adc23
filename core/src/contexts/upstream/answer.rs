//! The answer of an attempt: a failing one held to read its error body, a good one
//! recorded (a stream at its first event), a stream watched for its end.

use super::*;
use crate::contexts::unreported::Waiting;

impl AttemptFilter {
    /// Response headers: a failing answer is held to read its error body; a good one
    /// is recorded (a stream at its first event with `firstTokenTimeout`).
    pub fn on_response_headers(&mut self, h: &mut impl Host, end_of_stream: bool) -> Action {
        let Some(index) = self.provider else {
            return Action::Continue;
        };
        let status: u16 = parse_number(h.response_header(":status").as_deref()).unwrap_or(0);
        // Everything an upstream filter sees came from the provider.
        if status >= 400 {
            if !h.reports_attempt_ends() {
                // An error answer: settled here, not by the next attempt.
                unreported::close(h);
            }
            let headers = h.response_headers();
            if end_of_stream {
                self.settle(h, status, &headers, &[]);
                return Action::Continue;
            }
            self.stage = Stage::ReadingError { status, headers };
            return Action::Pause;
        }
        self.stage = Stage::Answering {
            ended: end_of_stream,
        };
        let config = Rc::clone(&self.config);
        let headers = if config.failover.proactive {
            Some(h.response_headers())
        } else {
            None
        };
        self.watch_stream(h, status, headers.as_deref());
        if let Some(headers) = &headers {
            let now = h.now_ms();
            if let Some(delay) = retry_after::quota_spent(headers, now) {
                let _ = self.record(h, Failure::QuotaSpent, delay, "quota spent");
                return Action::Continue;
            }
        }
        if config.failover.first_token_timeout_ms.is_some()
            && self.stream.is_some()
            && !end_of_stream
        {
            // Held until the first event: Envoy's per-try idle timer (firstTokenTimeout)
            // still runs, and when it fires the router tries the next provider, since
            // nothing reached the client. The success is recorded at the first event.
            self.stage = Stage::AwaitingFirstEvent;
            self.still_open(h, Waiting::FirstEvent);
            return Action::Pause;
        }
        self.still_open(h, Waiting::Body);
        self.record_success(h, index);
        Action::Continue
    }

    /// (A host that does not report an attempt's end.) What the answer still waits
    /// for, for whoever finds the attempt open; closed once the answer has ended.
    fn still_open(&self, h: &mut impl Host, waiting: Waiting) {
        if h.reports_attempt_ends() {
            return;
        }
        match self.stage {
            Stage::Answering { ended: true } => unreported::close(h),
            _ => {
                let now = h.now_ms();
                unreported::mark_waiting(h, self.at, now, waiting);
            }
        }
    }

    /// Watches a successful streamed (SSE) answer for its end; `headers` when read
    /// already.
    pub(super) fn watch_stream(
        &mut self,
        h: &impl Host,
        status: u16,
        headers: Option<&[(String, Vec<u8>)]>,
    ) {
        if !(200..300).contains(&status) {
            return;
        }
        let header = |name: &str| match headers {
            Some(all) => crate::host::header_value(all, name).map(<[u8]>::to_vec),
            None => h.response_header(name),
        };
        let sse = header("content-type").is_some_and(|v| v.starts_with(b"text/event-stream"));
        if sse {
            self.stream = Some(Watched {
                watch: StreamWatch::default(),
                can_append: header("content-length").is_none(),
            });
        }
    }

    pub fn on_response_body(&mut self, h: &mut impl Host, size: usize, end: bool) -> Action {
        match &self.stage {
            Stage::ReadingError { .. } => return self.read_error_body(h, size, end),
            Stage::AwaitingFirstEvent => {
                self.stage = Stage::Answering { ended: end };
                self.still_open(h, Waiting::Body);
                if let Some(index) = self.provider {
                    self.record_success(h, index);
                }
            }
            _ => {}
        }
        if self.config.failover.stream_idle_timeout_ms.is_some() {
            self.last_data_ms = h.now_ms();
        }
        if end && matches!(self.stage, Stage::Answering { ended: false }) {
            self.stage = Stage::Answering { ended: true };
            self.still_open(h, Waiting::Body);
        }
        let Some(watched) = self.stream.as_mut() else {
            return Action::Continue;
        };
        if !watched.watch.finished() {
            if let Some(chunk) = h.response_body(size) {
                watched.watch.feed(&chunk);
            }
        }
        if end && !watched.watch.finished() {
            let can_append = watched.can_append;
            self.broken_stream(h, "broken");
            if can_append {
                // The client's SDK then raises instead of returning half an answer.
                let event = sse::error_event(self.name());
                h.append_response_body(size, event.as_bytes());
            }
        }
        Action::Continue
    }

    /// A failing answer's body: buffered here until it is complete or as long as it
    /// will be read, then the answer is judged.
    pub(super) fn read_error_body(
        &mut self,
        h: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !end_of_stream && body_size < errors::BODY_LIMIT {
            return Action::Pause;
        }
        let body = h
            .response_body(body_size.min(errors::BODY_LIMIT))
            .unwrap_or_default();
        if let Stage::ReadingError { status, headers } =
            std::mem::replace(&mut self.stage, Stage::Failed)
        {
            self.settle(h, status, &headers, &body);
        }
        Action::Continue
    }

    pub fn on_response_trailers(&mut self, h: &mut impl Host) -> Action {
        match std::mem::replace(&mut self.stage, Stage::Failed) {
            // The body (if any) came without its end: judged on what came.
            Stage::ReadingError { status, headers } => self.settle(h, status, &headers, &[]),
            Stage::Answering { ended } => {
                self.stage = Stage::Answering { ended: true };
                if !ended {
                    self.still_open(h, Waiting::Body);
                }
            }
            other => self.stage = other,
        }
        Action::Continue
    }

    /// The answer's stream broke off (`how`: `broken` without its end, `reset`):
    /// a failure of the provider, shown in the access log.
    pub(super) fn broken_stream(&mut self, h: &mut impl Host, how: &str) {
        // (An answer is watched only once its provider is known.)
        if let Some(index) = self.provider {
            let (config, telemetry) = (&self.config, &self.telemetry);
            super::super::record_broken_stream(h, config, telemetry, index, how, self.last_data_ms);
        }
    }
}
