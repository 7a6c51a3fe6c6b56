//! The process's counters, gauges and latency histograms, in Prometheus' text format.
//!
//! One process-wide set ([`metrics`]): the worker and collector loops count as they go, and
//! the operations endpoint ([`crate::ops`]) renders them on `/metrics`. Atomics only, so
//! counting never blocks the work it counts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A count that only grows.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Counts `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds: a model call on a partition takes tens of
/// milliseconds on a GPU and seconds on a CPU; a job, seconds to hours.
const BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Observations counted into [`BUCKETS`].
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds (an integer, so that it can be atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one duration (negative ones as 0).
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Durations recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Everything counted, in one process. A worker fills the worker's part, a collector the
/// collector's, the embedded run both.
#[derive(Debug)]
pub struct Metrics {
    /// Partitions scored and published.
    pub partitions_scored: Counter,
    /// Images scored (with a prediction).
    pub images_scored: Counter,
    /// Images that could not be read (their rows carry the error).
    pub images_unreadable: Counter,
    /// Partition attempts that failed and were handed back for a retry.
    pub partitions_retried: Counter,
    /// Partitions dead-lettered by this process.
    pub dead_letters: Counter,
    /// Duration of one partition's model call.
    pub inference_seconds: Histogram,
    /// From a partition's publication to its scores: queueing, fetching, decoding, scoring.
    pub partition_seconds: Histogram,
    /// Scored partitions stored by the collector.
    pub results_stored: Counter,
    /// Rows (images) in those partitions.
    pub result_rows_stored: Counter,
    /// Jobs whose result files the collector wrote.
    pub jobs_completed: Counter,
    /// Jobs the collector dropped: cancelled by their producer, or unable to complete.
    pub jobs_cancelled: Counter,
    /// Jobs the collector holds open.
    pub jobs_in_flight: Gauge,
    /// From a job's submission to its results written.
    pub job_seconds: Histogram,
}

static METRICS: Metrics = Metrics::new();

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    const fn new() -> Self {
        Self {
            partitions_scored: Counter::new(),
            images_scored: Counter::new(),
            images_unreadable: Counter::new(),
            partitions_retried: Counter::new(),
            dead_letters: Counter::new(),
            inference_seconds: Histogram::new(),
            partition_seconds: Histogram::new(),
            results_stored: Counter::new(),
            result_rows_stored: Counter::new(),
            jobs_completed: Counter::new(),
            jobs_cancelled: Counter::new(),
            jobs_in_flight: Gauge::new(),
            job_seconds: Histogram::new(),
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (name, help, counter) in [
            (
                "fleet_partitions_scored_total",
                "Partitions scored by this worker.",
                &self.partitions_scored,
            ),
            (
                "fleet_images_scored_total",
                "Images scored (with a prediction).",
                &self.images_scored,
            ),
            (
                "fleet_dead_letters_total",
                "Partitions this process dead-lettered.",
                &self.dead_letters,
            ),
            (
                "fleet_results_stored_total",
                "Scored partitions the collector stored.",
                &self.results_stored,
            ),
            (
                "fleet_result_rows_stored_total",
                "Rows (images) in the scored partitions the collector stored.",
                &self.result_rows_stored,
            ),
            (
                "fleet_jobs_completed_total",
                "Jobs whose result files were written.",
                &self.jobs_completed,
            ),
            (
                "fleet_jobs_cancelled_total",
                "Jobs dropped without results (cancelled, or unable to complete).",
                &self.jobs_cancelled,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                counter.get()
            );
        }
        out.push_str(
            "# HELP fleet_failures_total Failures by kind: an image that could not be read, a \
             partition handed back for a retry, a partition dead-lettered.\n\
             # TYPE fleet_failures_total counter\n",
        );
        for (kind, counter) in [
            ("unreadable_image", &self.images_unreadable),
            ("partition_retried", &self.partitions_retried),
            ("partition_dead_lettered", &self.dead_letters),
        ] {
            let _ = writeln!(
                out,
                "fleet_failures_total{{kind=\"{kind}\"}} {}",
                counter.get()
            );
        }
        let _ = write!(
            out,
            "# HELP fleet_jobs_in_flight Jobs the collector holds open.\n\
             # TYPE fleet_jobs_in_flight gauge\nfleet_jobs_in_flight {}\n",
            self.jobs_in_flight.get()
        );
        for (name, help, histogram) in [
            (
                "fleet_inference_seconds",
                "Duration of one partition's model call.",
                &self.inference_seconds,
            ),
            (
                "fleet_partition_seconds",
                "From a partition's publication to its scores.",
                &self.partition_seconds,
            ),
            (
                "fleet_job_seconds",
                "From a job's submission to its results written.",
                &self.job_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            let count = histogram.count();
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "{name}_sum {}",
                histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_in_the_text_format() {
        let h = Histogram::new();
        for s in [0.005, 0.2, 0.2, 100.0, 5000.0] {
            h.observe(s);
        }
        let m = Metrics {
            inference_seconds: h,
            ..Metrics::new()
        };
        m.images_scored.add(7);
        let text = m.render();
        assert!(text.contains("fleet_images_scored_total 7\n"));
        assert!(text.contains("fleet_inference_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("fleet_inference_seconds_bucket{le=\"0.25\"} 3\n"));
        assert!(text.contains("fleet_inference_seconds_bucket{le=\"300\"} 4\n"));
        assert!(text.contains("fleet_inference_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("fleet_inference_seconds_count 5\n"));
        assert!(text.contains("fleet_inference_seconds_sum 5100.405\n"));
        assert!(text.contains("fleet_failures_total{kind=\"unreadable_image\"} 0\n"));
    }
}
