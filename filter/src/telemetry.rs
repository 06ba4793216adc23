//! Counting into Envoy's metrics: one registry per VM that defines each metric on
//! first use and remembers its id, so a request pays one host call per count.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::types::MetricType;

use crate::host;

#[derive(Default)]
pub struct Telemetry {
    ids: RefCell<HashMap<String, u32>>,
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
