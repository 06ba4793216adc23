//! What an attempt's end means: a failing answer judged and turned into a retry or
//! passed on, a failure without an answer recorded, and the next attempt named for
//! the router.

use super::*;

impl AttemptFilter {
    /// A failing answer (400 and up), its error body read: judged by its class, its
    /// provider's health recorded, and the answer either sent on to the client or
    /// turned into [`RETRY_STATUS`] so the router retries the next provider.
    pub(super) fn settle(
        &mut self,
        h: &mut impl Host,
        status: u16,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
    ) {
        self.stage = Stage::Failed;
        let Some(index) = self.provider else { return };
        let config = Rc::clone(&self.config);
        let now = h.now_ms();
        let verdict = attempt::judge(&config, index, status, headers, body, now);
        let class = metrics::errors(self.name(), verdict.reason());
        self.telemetry.count(h, class);
        let why = format!("status {status}, {}", verdict.reason());
        let next = self.move_on(h, Ended::Answer(status, verdict), verdict.reason(), now);
        let waited_out = matches!(next, Some(Some(_)));
        match verdict.failure {
            // A 429 waited out (retryWithin) is asked again instead of cooling.
            Some(_) if waited_out => log::info!(
                "llm-failover: provider {} failed ({why}); waiting it out (retryWithin)",
                self.name()
            ),
            Some(failure) => {
                let result = self.record(h, failure, verdict.evidence_ms, &why);
                if result.as_ref().is_some_and(|r| r.cooldown_started) {
                    self.say_loudly(failure, status);
                }
            }
            None => {
                log::info!(
                    "llm-failover: provider {} answered {status} ({}): the request is at fault; no cooldown",
                    self.name(),
                    verdict.reason()
                );
                // The provider answered: it is up.
                self.record_success(h, index);
            }
        }
        match next {
            Some(wait) => {
                h.set_property_str(STATUS_KEY, &status.to_string());
                h.set_response_header(":status", &RETRY_STATUS.to_string());
                if let Some(ms) = wait {
                    h.set_response_header(WAIT_HEADER, &ms.div_ceil(1000).to_string());
                }
            }
            None if status == RETRY_STATUS => h.set_response_header(":status", "502"),
            None => {}
        }
    }

    /// A failure of this attempt without an answer (refused, reset, timed out): the
    /// router retries it itself, on the attempt this filter names.
    pub(super) fn failed(
        &mut self,
        h: &mut impl Host,
        failure: Failure,
        reason: &'static str,
        ended: Ended,
        why: &str,
    ) {
        let now = h.now_ms();
        let _ = self.record(h, failure, None, why);
        if self.move_on(h, ended, reason, now).is_none() {
            // The plan is used up; the router may still have retries: they go nowhere.
            h.set_property_str(NEXT_KEY, EXHAUSTED_CLUSTER);
        }
    }

    /// Names the attempt after this one (`attempt::next_attempt`) for the route's
    /// cluster specifier and for that attempt's upstream filter, and counts a
    /// failover. `None` when there is none; else the wait before it.
    pub(super) fn move_on(
        &self,
        h: &mut impl Host,
        ended: Ended,
        reason: &'static str,
        now: u64,
    ) -> Option<Option<u64>> {
        let index = self.provider?;
        let plan: Vec<usize> = self.plan.indices().collect();
        let (next, wait) = attempt::next_attempt(&self.config, &plan, self.at, index, ended)?;
        let to = *plan.get(next.position)?;
        let cluster = &self.config.providers.get(to)?.cluster;
        h.set_property_str(AT_KEY, &next.encode());
        h.set_property_str(NEXT_KEY, cluster);
        super::extend_path(h, self.at.position, next.position, reason);
        if next.position == self.at.position {
            log::info!(
                "llm-failover: asking provider {} again (retry {} of {})",
                self.name(),
                next.retry,
                self.config.failover.retries
            );
        } else {
            self.failing_over(h, to, reason, now);
        }
        Some(wait)
    }

    /// Counts a failover to provider `to` and, for the first attempt, notes its
    /// reason and time for the access log and the failover-time histogram.
    pub(super) fn failing_over(
        &self,
        h: &mut impl Host,
        to: usize,
        reason: &'static str,
        now: u64,
    ) {
        let Some(to) = self.config.providers.get(to) else {
            return;
        };
        log::info!("llm-failover: failing over to provider {}", to.name);
        let name = metrics::failovers(self.name(), &to.name, reason);
        self.telemetry.count(h, name);
        if h.property(&[REASON_KEY]).is_none() {
            h.set_property_str(REASON_KEY, reason);
            h.set_property_str(FAILED_AT_KEY, &now.to_string());
        }
    }

    /// One line an operator cannot miss, once per cooldown, for failures that need a
    /// person: a spent quota, a refused key.
    pub(super) fn say_loudly(&self, failure: Failure, status: u16) {
        let Some(provider) = self.provider.and_then(|i| self.config.providers.get(i)) else {
            return;
        };
        let secs = self.config.failover.max_cooldown_ms / 1000;
        match failure {
            Failure::Quota => log::error!(
                "llm-failover: provider {} is out of quota or credit (status {status}); \
                 it is left alone for {secs} s (maxCooldown): check its billing",
                provider.name
            ),
            Failure::Auth => log::error!(
                "llm-failover: provider {} refused the key from ${} (status {status}); \
                 it is left alone for {secs} s (maxCooldown): fix the key",
                provider.name,
                provider.auth_env.as_deref().unwrap_or("?")
            ),
            _ => {}
        }
    }

    /// Records a good answer (or one the request was at fault for) of provider
    /// `index`. Asked again after a failure in this request, or without a plan, the
    /// record may need a reset: it is read.
    pub(super) fn record_success(&self, h: &impl Host, index: usize) {
        let known_clear = self.at.retry == 0
            && self
                .plan
                .get(self.at.position)
                .is_some_and(|s| !s.reset_on_success);
        attempt::record_success(&self.config, h, index, !known_clear);
    }

    /// Records a failure of this attempt's provider and logs it.
    pub(super) fn record(
        &self,
        h: &impl Host,
        failure: Failure,
        evidence: Option<u64>,
        why: &str,
    ) -> Option<Recorded> {
        let index = self.provider?;
        let config = &self.config;
        super::super::record_failure(h, config, &self.telemetry, index, failure, evidence, why).ok()
    }

    /// The attempt is over: what its end says about its provider.
    pub fn on_done(&mut self, h: &mut impl Host) -> bool {
        if let Kind::Hedge(id) = self.kind {
            if self.live.borrow_mut().ended(id, self.context_id) {
                // Cancelled by the gateway: the routed attempt won.
                return true;
            }
        }
        match self.stage {
            // No provider; or held, never sent (see HEDGED_TO_KEY): nobody's failure.
            Stage::Idle | Stage::HeldForHedge => {}
            Stage::AwaitingFirstEvent => {
                // Abandoned by firstTokenTimeout (Envoy's per-try idle timer) before its
                // first event: the router goes on to the next provider.
                self.stage = Stage::Answering { ended: false };
                if !super::super::not_the_providers_doing(h) {
                    let limit = self.config.failover.first_token_timeout_ms.unwrap_or(0);
                    let why = format!("no first event within firstTokenTimeout ({limit} ms)");
                    self.failed(h, Failure::Stall, "stall", Ended::Gone, &why);
                }
            }
            // An answer reset after its headers (streamed or not), unless the client
            // went away: its bytes went out, so it cannot be sent elsewhere, but it is
            // the provider's failure.
            Stage::Answering { ended: false }
                if !self.stream.as_ref().is_some_and(|s| s.watch.finished())
                    && !super::super::not_the_providers_doing(h) =>
            {
                self.broken_stream(h, "reset");
            }
            Stage::Answering { .. } | Stage::ReadingError { .. } | Stage::Failed => {}
            Stage::Sending { .. } => self.ended_without_answer(h),
        }
        true
    }

    /// No response headers: refused, reset or timed out, unless the client went
    /// away (then the router cancelled the attempt, and the provider is not to blame)
    /// or the downstream filter answered the client itself.
    pub(super) fn ended_without_answer(&mut self, h: &mut impl Host) {
        if !h.reports_attempt_ends() {
            // Reported after all: not the next attempt's to record.
            unreported::close(h);
        }
        if super::super::not_the_providers_doing(h) {
            return;
        }
        if let Some((limit, name)) = unreported::per_try_limit(&self.config, h) {
            if self.started_ms > 0
                && h.now_ms().saturating_sub(self.started_ms) + TIMER_SLACK_MS >= limit
            {
                let why = format!("no response headers within {name} ({limit} ms)");
                self.failed(h, Failure::Timeout, "timeout", Ended::Gone, &why);
                return;
            }
        }
        // A transport failure (refused, no healthy host) says so; without one the
        // provider reset a request it had (which `retries` may ask again).
        let (why, ended) = match h
            .property(&["upstream", "transport_failure_reason"])
            .filter(|r| !r.is_empty())
        {
            Some(r) => (
                format!("unreachable: {}", String::from_utf8_lossy(&r)),
                Ended::Gone,
            ),
            None => ("no response: reset".to_string(), Ended::Reset),
        };
        let (failure, reason) = attempt::unreachable();
        self.failed(h, failure, reason, ended, &why);
    }
}
