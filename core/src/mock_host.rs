//! An in-memory [`Host`] for the contexts' unit tests: headers, bodies, filter
//! state and properties are maps the test fills and reads; shared data is a
//! `MemoryStore`; calls, local replies, resets and metrics are recorded.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::host::{Call, HeaderList, Host, MetricKind};
use crate::store::memory::MemoryStore;
use crate::store::{SharedData, StoreError};

/// A call the code under test sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
    /// The context it was sent while acting for (`None`: the callback's own).
    pub for_context: Option<u32>,
}

/// A local reply the code under test sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub for_context: Option<u32>,
}

#[derive(Default)]
pub struct MockHost {
    pub now: Cell<u64>,
    pub request_headers: HeaderList,
    pub request_body: Vec<u8>,
    pub response_headers: HeaderList,
    /// The response body chunk passing now.
    pub response_body: Vec<u8>,
    /// Filter state set by the code (or the test), by name.
    pub state: BTreeMap<String, Vec<u8>>,
    /// Envoy's own properties (`response.code_details`, ...), by dotted path.
    pub properties: HashMap<String, Vec<u8>>,
    pub store: MemoryStore,
    pub call_headers: HeaderList,
    pub call_body: Vec<u8>,
    pub calls: Vec<Sent>,
    /// What `dispatch` answers next: a token, or a refusal.
    pub dispatch_refused: bool,
    pub next_token: u32,
    pub replies: Vec<Reply>,
    pub resets: Vec<Option<u32>>,
    pub configuration: Option<Vec<u8>>,
    pub tick_ms: Option<u64>,
    /// The contexts `act_for` can reach; the one acting now.
    pub live: HashSet<u32>,
    pub acting_for: Option<u32>,
    pub metrics: RefCell<Vec<(MetricKind, String)>>,
    /// Acts like a host that does not report an attempt's end without an answer.
    pub unreported: bool,
    pub values: RefCell<HashMap<u32, i64>>,
    /// The wakes asked for (`wake_at`).
    pub wakes: Vec<u64>,
    /// Acts like a host that cancels a request's calls itself; the calls it cancelled.
    pub cancels_calls: bool,
    pub cancelled_calls: Vec<u32>,
}

impl MockHost {
    pub fn at(now: u64) -> Self {
        let host = MockHost {
            next_token: 1,
            ..MockHost::default()
        };
        host.now.set(now);
        host
    }

    pub fn with_request(mut self, headers: &[(&str, &str)]) -> Self {
        self.request_headers = pairs(headers);
        self
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.request_header(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn response(&self, name: &str) -> Option<String> {
        self.response_header(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn filter_state(&self, name: &str) -> Option<String> {
        self.state
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A counter's or gauge's value by metric name (0 when never touched).
    pub fn metric(&self, name: &str) -> i64 {
        let metrics = self.metrics.borrow();
        metrics
            .iter()
            .position(|(_, n)| n == name)
            .and_then(|id| self.values.borrow().get(&(id as u32)).copied())
            .unwrap_or(0)
    }

    pub fn set_response(&mut self, headers: &[(&str, &str)]) {
        self.response_headers = pairs(headers);
    }
}

pub fn pairs(headers: &[(&str, &str)]) -> HeaderList {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn find(headers: &HeaderList, name: &str) -> Option<Vec<u8>> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn set(headers: &mut HeaderList, name: &str, value: &[u8]) {
    match headers.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => *v = value.to_vec(),
        None => headers.push((name.to_string(), value.to_vec())),
    }
}

impl SharedData for MockHost {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.store.set(key, value, cas)
    }
}

impl Host for MockHost {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        find(&self.request_headers, name)
    }

    fn request_headers(&self) -> HeaderList {
        self.request_headers.clone()
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        set(&mut self.request_headers, name, value);
    }

    fn remove_request_header(&mut self, name: &str) {
        self.request_headers.retain(|(n, _)| n != name);
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.request_body[..size.min(self.request_body.len())].to_vec())
    }

    fn replace_request_body_prefix(&mut self, old_len: usize, prefix: &[u8]) {
        let rest = self
            .request_body
            .split_off(old_len.min(self.request_body.len()));
        self.request_body = [prefix, &rest].concat();
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        find(&self.response_headers, name)
    }

    fn response_headers(&self) -> HeaderList {
        self.response_headers.clone()
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        set(&mut self.response_headers, name, value.as_bytes());
    }

    fn remove_response_header(&mut self, name: &str) {
        self.response_headers.retain(|(n, _)| n != name);
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.response_body[..size.min(self.response_body.len())].to_vec())
    }

    fn append_response_body(&mut self, _len: usize, data: &[u8]) {
        self.response_body.extend_from_slice(data);
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if let [name] = path {
            if let Some(v) = self.state.get(*name) {
                return Some(v.clone());
            }
        }
        self.properties.get(&path.join(".")).cloned()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        self.state.insert(name.to_string(), value.to_vec());
    }

    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, String> {
        if self.dispatch_refused {
            return Err("BadArgument".to_string());
        }
        self.calls.push(Sent {
            cluster: call.cluster.to_string(),
            headers: call.headers.to_vec(),
            body: call.body.map(<[u8]>::to_vec),
            timeout_ms: call.timeout_ms,
            for_context: self.acting_for,
        });
        let token = self.next_token;
        self.next_token += 1;
        Ok(token)
    }

    fn call_response_headers(&self) -> HeaderList {
        self.call_headers.clone()
    }

    fn call_response_body(&self, size: usize) -> Vec<u8> {
        self.call_body[..size.min(self.call_body.len())].to_vec()
    }

    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        self.replies.push(Reply {
            status,
            headers: headers.to_vec(),
            body: body.to_vec(),
            for_context: self.acting_for,
        });
    }

    fn reset_stream(&mut self) {
        self.resets.push(self.acting_for);
    }

    fn act_for(&mut self, id: u32) -> bool {
        if !self.live.contains(&id) {
            return false;
        }
        self.acting_for = Some(id);
        true
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.configuration.clone().filter(|c| !c.is_empty())
    }

    fn set_tick_period_ms(&mut self, ms: u64) {
        self.tick_ms = Some(ms);
    }

    fn reports_attempt_ends(&self) -> bool {
        !self.unreported
    }

    fn wake_at(&mut self, at_ms: u64) {
        self.wakes.push(at_ms);
    }

    fn cancel_call(&mut self, token: u32) -> bool {
        if self.cancels_calls {
            self.cancelled_calls.push(token);
        }
        self.cancels_calls
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut metrics = self.metrics.borrow_mut();
        if let Some(id) = metrics.iter().position(|(_, n)| n == name) {
            return Some(id as u32);
        }
        metrics.push((kind, name.to_string()));
        Some(metrics.len() as u32 - 1)
    }

    fn increment_metric(&self, id: u32, by: i64) {
        *self.values.borrow_mut().entry(id).or_default() += by;
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.values
            .borrow_mut()
            .insert(id, i64::try_from(value).unwrap_or(i64::MAX));
    }
}
