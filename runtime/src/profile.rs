//! Opt-in section timer (PG_PROFILE=1): synchronises the device around each section of a
//! decoding step so that `bench-workload` can print where a step's time goes. Off by default
//! (the syncs cost time themselves).

use std::sync::Mutex;
static TOTALS: crate::phases::Tally = crate::phases::Tally::new();
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PG_PROFILE").is_some())
}
/// PG_HOST_TIMING=1: how long the host takes to queue a prefill pass or a decoding step, timed
/// where the device queue is known to be empty (no synchronisation added). Host time close to
/// the wall time of the same work means the host, not the device, sets the pace.
pub fn host_timing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PG_HOST_TIMING").is_some())
}
pub fn add(name: &'static str, secs: f64) {
    TOTALS.add(name, secs);
}
/// Section names of a prefill pass are prefixed ("prefill: mlp"), decoding ones not.
pub fn label(decoding: bool, name: &'static str) -> &'static str {
    if decoding {
        return name;
    }
    static PREFILL: Mutex<Vec<(&'static str, &'static str)>> = Mutex::new(Vec::new());
    let mut known = PREFILL.lock().expect("profile lock");
    if let Some((_, l)) = known.iter().find(|(n, _)| *n == name) {
        return l;
    }
    let l: &'static str = Box::leak(format!("prefill: {name}").into_boxed_str());
    known.push((name, l));
    l
}
pub fn report() -> String {
    let t = TOTALS.snapshot();
    let total: f64 = t.iter().map(|x| x.1).sum();
    t.iter()
        .map(|(n, s, _)| format!("{n}: {s:.2} s ({:.0}%)", 100.0 * s / total.max(1e-12)))
        .collect::<Vec<_>>()
        .join(", ")
}
/// Every total as "name: seconds over n", then forgets them (one method's figures at a time).
pub fn take_totals() -> String {
    TOTALS
        .take()
        .iter()
        .map(|(n, s, k)| format!("{n}: {s:.3} over {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
/// With PG_HOST_TIMING: adds the time since `clock` to `name` and restarts `clock`.
pub fn host_lap(clock: &mut std::time::Instant, name: &'static str) {
    if host_timing() {
        add(name, clock.elapsed().as_secs_f64());
        *clock = std::time::Instant::now();
    }
}
