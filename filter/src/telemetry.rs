//! Counting into Envoy's metrics: one registry per VM that defines each metric on
//! first use and remembers its id, so a request pays one host call per count.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::types::MetricType;

use crate::host;
use crate::metrics;

#[derive(Default)]
pub struct Telemetry {
    ids: RefCell<HashMap<String, u32>>,
    /// `requests` counter ids by provider index and status class, so the per-request
    /// count needs no name formatting or hashing.
    request_ids: RefCell<Vec<[Option<u32>; 5]>>,
}

impl Telemetry {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    fn id(&self, kind: MetricType, name: String) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(&name) {
            return Some(*id);
        }
        let id = host::define_metric(kind, &name)?;
        self.ids.borrow_mut().insert(name, id);
        Some(id)
    }

    pub fn count(&self, name: String) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            host::increment_metric(id, 1);
        }
    }

    /// Counts an answer of provider `index` with `status`; `name` builds the metric
    /// name the first time this pair is seen.
    pub fn count_request(&self, index: usize, status: u16, name: impl FnOnce() -> String) {
        let class = metrics::status_class(status);
        let cached = self.request_ids.borrow().get(index).and_then(|c| c[class]);
        let id = match cached {
            Some(id) => id,
            None => {
                let Some(id) = self.id(MetricType::Counter, name()) else {
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
        host::increment_metric(id, 1);
    }

    pub fn gauge(&self, name: String, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            host::record_metric(id, value);
        }
    }

    pub fn histogram(&self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name.to_string()) {
            host::record_metric(id, value);
        }
    }
}
