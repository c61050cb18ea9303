//! Wall-clock time per phase of a run (reading and hashing the model, building it on the
//! device, merging adapters, Method A's prefill, Method B's decoding, writing units and the
//! bundle), summed over the run. Always on: each phase is timed at a point where the host waits
//! for the device anyway (results copied back, files written), so timing adds no
//! synchronisation. `extract` prints the table at its end; `bench-workload --full-study` reads it.

use std::sync::Mutex;
use std::time::Instant;

/// Named running totals (seconds, occurrences) in first-seen order: the phase table here and
/// the opt-in timers of `profile`.
pub struct Tally(Mutex<Vec<(&'static str, f64, usize)>>);

impl Tally {
    pub const fn new() -> Tally {
        Tally(Mutex::new(Vec::new()))
    }
    /// Adds `secs` to `name` (one more occurrence).
    pub fn add(&self, name: &'static str, secs: f64) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match t.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => {
                e.1 += secs;
                e.2 += 1;
            }
            None => t.push((name, secs, 1)),
        }
    }
    /// (name, seconds, occurrences) in first-seen order.
    pub fn snapshot(&self) -> Vec<(&'static str, f64, usize)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The totals, forgotten afterwards.
    pub fn take(&self) -> Vec<(&'static str, f64, usize)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

static TOTALS: Tally = Tally::new();

/// Adds `secs` to phase `name` (one more occurrence).
pub fn add(name: &'static str, secs: f64) {
    TOTALS.add(name, secs);
}

/// Runs `f`, adding its wall-clock time to phase `name`.
pub fn time<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    add(name, t0.elapsed().as_secs_f64());
    out
}

/// (phase, seconds, occurrences) in the order the phases first ran.
pub fn snapshot() -> Vec<(&'static str, f64, usize)> {
    TOTALS.snapshot()
}

/// Forgets every phase (a new run in the same process).
pub fn reset() {
    TOTALS.take();
}

/// One line per phase: "  name  12.34 s  (n x)".
pub fn table() -> String {
    snapshot()
        .iter()
        .map(|(n, s, k)| format!("  {n:<34} {s:>9.2} s  ({k} x)\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn phases_sum_in_first_seen_order() {
        super::reset();
        super::add("b", 1.0);
        super::add("a", 0.5);
        super::add("b", 2.0);
        let s = super::snapshot();
        assert_eq!(s, vec![("b", 3.0, 2), ("a", 0.5, 1)]);
        assert_eq!(super::time("c", || 7), 7);
        assert_eq!(super::snapshot().len(), 3);
        assert!(super::table().contains("(2 x)"));
    }

    #[test]
    fn a_tally_hands_over_its_totals_once() {
        let t = super::Tally::new();
        t.add("x", 0.25);
        t.add("x", 0.5);
        assert_eq!(t.take(), vec![("x", 0.75, 2)]);
        assert!(t.take().is_empty() && t.snapshot().is_empty());
    }
}
