//! Counting into Envoy's metrics: one registry per VM that defines each metric on
//! first use and remembers its id, so a request pays one host call per count.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::attempt::MetricsSink;
use crate::host::{Host, MetricKind};
use crate::metrics;

#[derive(Default)]
pub struct Telemetry {
    ids: RefCell<HashMap<String, u32>>,
    /// `requests` counter ids by provider index and status class, so the per-request
    /// count needs no name formatting or hashing.
    request_ids: RefCell<Vec<[Option<u32>; 5]>>,
}

/// A [`Telemetry`] with the host it counts into, for the pure modules' [`MetricsSink`].
pub struct Sink<'a, H: Host> {
    telemetry: &'a Telemetry,
    host: &'a H,
}

impl<H: Host> MetricsSink for Sink<'_, H> {
    fn count(&self, name: String) {
        self.telemetry.count(self.host, name);
    }
}

impl Telemetry {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    pub fn sink<'a, H: Host>(&'a self, host: &'a H) -> Sink<'a, H> {
        Sink {
            telemetry: self,
            host,
        }
    }

    fn id(&self, host: &impl Host, kind: MetricKind, name: String) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(&name) {
            return Some(*id);
        }
        let id = host.define_metric(kind, &name)?;
        self.ids.borrow_mut().insert(name, id);
        Some(id)
    }

    pub fn count(&self, host: &impl Host, name: String) {
        if let Some(id) = self.id(host, MetricKind::Counter, name) {
            host.increment_metric(id, 1);
        }
    }

    /// Counts an answer of provider `index` with `status`; `name` builds the metric
    /// name the first time this pair is seen.
    pub fn count_request(
        &self,
        host: &impl Host,
        index: usize,
        status: u16,
        name: impl FnOnce() -> String,
    ) {
        let class = metrics::status_class(status);
        let cached = self.request_ids.borrow().get(index).and_then(|c| c[class]);
        let id = match cached {
            Some(id) => id,
            None => {
                let Some(id) = self.id(host, MetricKind::Counter, name()) else {
                    return;
                };
                let mut ids = self.request_ids.borrow_mut();
                if ids.len() <= index {
                    ids.resize(index + 1, [None; 5]);
                }
                ids[index][class] = Some(id);
                id
            }
        };
        host.increment_metric(id, 1);
    }

    pub fn gauge(&self, host: &impl Host, name: String, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Gauge, name) {
            host.record_metric(id, value);
        }
    }

    pub fn histogram(&self, host: &impl Host, name: &str, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Histogram, name.to_string()) {
            host.record_metric(id, value);
        }
    }
}
