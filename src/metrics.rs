//! Prometheus text exposition. Hand-written: the handful of series here do
//! not justify a metrics framework, and the text format is small and stable.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Command latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Waiting-time buckets, seconds (queue waits run from milliseconds to a build's half hour).
const WAIT_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// A gauge read at scrape time: name, help, and (labels, value) series.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    counters: Mutex<BTreeMap<String, u64>>,
    labeled: Mutex<BTreeMap<(String, String), u64>>,
    /// Waits by (name, lane), over `WAIT_BUCKETS`.
    waits: Mutex<BTreeMap<(String, String), Histogram>>,
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    pub fn command_latency(&self, command: &str, seconds: f64) {
        let mut l = self.latency.lock().unwrap();
        let h = l.entry(command.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// A waiting time, e.g. `observe("queue_wait_seconds", "quick", 0.3)`.
    pub fn observe(&self, name: &str, lane: &str, seconds: f64) {
        let mut w = self.waits.lock().unwrap();
        let h = w.entry((name.to_string(), lane.to_string())).or_default();
        for (i, b) in WAIT_BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Add `n` to a labelled counter (bytes pruned, say).
    pub fn add_labeled(&self, name: &str, labels: &str, n: u64) {
        *self
            .labeled
            .lock()
            .unwrap()
            .entry((name.to_string(), labels.to_string()))
            .or_default() += n;
    }

    pub fn incr(&self, name: &str) {
        *self
            .counters
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default() += 1;
    }

    /// A counter with labels, e.g. `incr_labeled("reconcile_repairs", "blade=\"b1\",kind=\"exited\"")`.
    pub fn incr_labeled(&self, name: &str, labels: &str) {
        *self
            .labeled
            .lock()
            .unwrap()
            .entry((name.to_string(), labels.to_string()))
            .or_default() += 1;
    }

    /// Render, with gauges supplied by the caller (they are read at scrape time).
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        out.push_str("# HELP shisa_http_requests_total HTTP requests by route and status.\n# TYPE shisa_http_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap().iter() {
            out.push_str(&format!(
                "shisa_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}\n",
                esc(route)
            ));
        }
        out.push_str("# HELP shisa_command_duration_seconds Time to answer a slash command.\n# TYPE shisa_command_duration_seconds histogram\n");
        for (cmd, h) in self.latency.lock().unwrap().iter() {
            let c = esc(cmd);
            for (i, b) in BUCKETS.iter().enumerate() {
                out.push_str(&format!(
                    "shisa_command_duration_seconds_bucket{{command=\"{c}\",le=\"{b}\"}} {}\n",
                    h.counts[i]
                ));
            }
            out.push_str(&format!(
                "shisa_command_duration_seconds_bucket{{command=\"{c}\",le=\"+Inf\"}} {}\n",
                h.count
            ));
            out.push_str(&format!(
                "shisa_command_duration_seconds_sum{{command=\"{c}\"}} {}\n",
                h.sum
            ));
            out.push_str(&format!(
                "shisa_command_duration_seconds_count{{command=\"{c}\"}} {}\n",
                h.count
            ));
        }
        let mut last = String::new();
        for ((name, lane), h) in self.waits.lock().unwrap().iter() {
            if *name != last {
                out.push_str(&format!("# HELP shisa_{name} Time a task waited in its lane before a worker took it.\n# TYPE shisa_{name} histogram\n"));
                last = name.clone();
            }
            let l = esc(lane);
            for (i, b) in WAIT_BUCKETS.iter().enumerate() {
                out.push_str(&format!(
                    "shisa_{name}_bucket{{lane=\"{l}\",le=\"{b}\"}} {}\n",
                    h.counts[i]
                ));
            }
            out.push_str(&format!(
                "shisa_{name}_bucket{{lane=\"{l}\",le=\"+Inf\"}} {}\nshisa_{name}_sum{{lane=\"{l}\"}} {}\nshisa_{name}_count{{lane=\"{l}\"}} {}\n",
                h.count, h.sum, h.count
            ));
        }
        let counters = self.counters.lock().unwrap();
        for (name, n) in counters.iter() {
            out.push_str(&format!(
                "# TYPE shisa_{name}_total counter\nshisa_{name}_total {n}\n"
            ));
        }
        let mut last = String::new();
        for ((name, labels), n) in self.labeled.lock().unwrap().iter() {
            if *name != last {
                out.push_str(&format!("# TYPE shisa_{name}_total counter\n"));
                last = name.clone();
            }
            out.push_str(&format!("shisa_{name}_total{{{labels}}} {n}\n"));
        }
        for (name, help, series) in gauges {
            out.push_str(&format!(
                "# HELP shisa_{name} {help}\n# TYPE shisa_{name} gauge\n"
            ));
            for (labels, v) in series {
                if labels.is_empty() {
                    out.push_str(&format!("shisa_{name} {v}\n"));
                } else {
                    out.push_str(&format!("shisa_{name}{{{labels}}} {v}\n"));
                }
            }
        }
        out
    }
}

pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
