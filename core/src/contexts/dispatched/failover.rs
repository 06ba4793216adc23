//! Dispatch mode's failover: a failing answer judged, the same provider asked again
//! (`retries`) or the request sent on to the next one as a call.

use super::*;

impl Dispatched {
    /// Records a failing answer as its verdict says and, when the verdict lets it,
    /// sends the request on. True when a call went out.
    pub(super) fn failed_answer(
        &mut self,
        h: &mut impl Host,
        status: u16,
        verdict: &Verdict,
    ) -> bool {
        let class = metrics::errors(self.req.provider_name(), verdict.reason());
        self.req.telemetry.count(h, class);
        match verdict.failure {
            Some(failure) => {
                let why = format!("status {status}, {}", verdict.reason());
                let current = self.req.current;
                self.mark_failed(h, current, failure, verdict.evidence_ms, &why);
            }
            // The request was at fault; the provider answered, so it is up.
            None => {
                let config = &self.req.config;
                attempt::record_success(config, &*h, self.req.current, self.req.current_reset);
                self.req.drop_claim(self.req.current);
            }
        }
        if self.retry_same(h, status, verdict) {
            return true;
        }
        if !verdict.fail_over {
            return false;
        }
        self.mark_tried(self.req.current);
        if verdict.class == Class::ContextLength {
            // Only a provider with a larger context window may take it.
            let from = self.req.current;
            for (to, tried) in self.tried.iter_mut().enumerate() {
                *tried |= !attempt::takes_longer_context(&self.req.config, from, to);
            }
        }
        self.try_next(h, verdict.reason())
    }

    /// Sends the request on to the next available provider. Returns false when there
    /// is none, so the client gets the failure it has.
    pub(super) fn try_next(&mut self, h: &mut impl Host, reason: &'static str) -> bool {
        if self.failover_reason.is_none() {
            self.failover_reason = Some(reason);
            self.failover_started_ms = h.now_ms();
        }
        // The provider whose failure the client gets if nobody else can be asked.
        let answered = (self.req.current, self.req.current_reset);
        loop {
            // The same choice as for the routed attempt: a half-open provider is only
            // tried if this request wins its probe claim.
            let Some(next) = self.choose(h) else {
                (self.req.current, self.req.current_reset) = answered;
                return false;
            };
            let config = Rc::clone(&self.req.config);
            let provider = &config.providers[next];
            match self.call(h, next) {
                Ok(token) => {
                    log::info!("llm-failover: failing over to provider {}", provider.name);
                    let from = self.req.provider_name();
                    let failover = metrics::failovers(from, &provider.name, reason);
                    self.req.telemetry.count(h, failover);
                    self.called(h, next, token, reason);
                    self.req.current = next;
                    self.retried = 0;
                    return true;
                }
                Err(status) => {
                    // BadArgument: the cluster does not exist in Envoy's configuration.
                    let why = format!("cannot dispatch to cluster {}: {status}", provider.cluster);
                    // Its failure is recorded (and with it a probe claim on it).
                    self.mark_failed(h, next, Failure::Unreachable, None, &why);
                }
            }
        }
    }

    /// `retries`: asks the provider that just answered `status` again when the
    /// verdict lets it (`attempt::next_attempt`, the router mode's rule: a
    /// 500/502/503/504, within the budget). True when a call went out.
    pub(super) fn retry_same(&mut self, h: &mut impl Host, status: u16, verdict: &Verdict) -> bool {
        let at = At {
            position: 0,
            retry: self.retried,
        };
        let current = self.req.current;
        let ended = Ended::Answer(status, *verdict);
        if attempt::next_attempt(&self.req.config, &[current], at, current, ended).is_none() {
            return false;
        }
        let Ok(token) = self.call(h, current) else {
            return false;
        };
        self.retried += 1;
        log::info!(
            "llm-failover: asking provider {} again (retry {} of {})",
            self.req.provider_name(),
            self.retried,
            self.req.config.failover.retries
        );
        self.called(h, current, token, verdict.reason());
        true
    }

    /// A call to provider `to` went out (`token`): noted for the access log (the
    /// first failure's reason, the providers asked) and awaited.
    pub(super) fn called(&mut self, h: &impl Host, to: usize, token: u32, reason: &'static str) {
        if self.failover_reason.is_none() {
            self.failover_reason = Some(reason);
            self.failover_started_ms = h.now_ms();
        }
        if self.req.asked.is_empty() {
            self.req.asked.push(self.req.current);
        }
        self.req.asked.push(to);
        self.req.whys.push(reason.to_string());
        self.pending_call = Some(token);
    }

    /// Sends the client's request, rewritten for provider `index`, as a call; the
    /// call's token.
    pub(super) fn call(&self, h: &mut impl Host, index: usize) -> Result<u32, String> {
        let config = &self.req.config;
        let provider = &config.providers[index];
        let edits = rewrite::edits_for(
            provider,
            &config.cluster_header,
            self.original_path.as_deref(),
        );
        let mut headers = rewrite::apply_to(&self.original_headers, &edits);
        // The call names its cluster itself; routing headers are not the provider's.
        let internal = config.internal_request_headers();
        headers.retain(|(n, _)| !internal.contains(&n.as_str()));
        let rewritten;
        let body = match (&self.original_body, &provider.model_json, &self.req.slots) {
            (Some(b), Some(model), Some(slots)) => {
                rewritten = body::with_model(b, slots, model);
                Some(rewritten.as_slice())
            }
            (Some(b), _, _) => Some(b.as_slice()),
            (None, _, _) => None,
        };
        h.dispatch(&Call {
            cluster: &provider.cluster,
            headers: &headers,
            body,
            timeout_ms: config.failover.attempt_timeout_ms,
        })
    }
}
