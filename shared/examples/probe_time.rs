//! Times the logistic probe (5 folds) on one checkpoint of a synthetic null study.
//! Usage: probe_time [K=16] [NOISE=10] [QUESTIONS=60] [HIDDEN=256]
use shared::lda::logistic::evaluate_logistic_probe;
use shared::lda::Samples;
use shared::synth::{synth_bundle, SynthSpec};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let k: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(16);
    let noise: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let questions: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(60);
    let hidden: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(256);
    let b = synth_bundle(&SynthSpec {
        personas: 12,
        questions,
        hidden,
        layers: vec![20],
        methods: vec![shared::bundle::Method::A],
        noise,
        spectrum_decay: 1.0,
        seed: 1,
        ..SynthSpec::default()
    });
    let c = shared::coords::bundle_coords(
        &b,
        shared::coords::CoordsMode::Exact { lda_components: k },
        0,
    )
    .unwrap();
    let s = Samples::from_coords(&c[0], 0);
    let t = std::time::Instant::now();
    let e = evaluate_logistic_probe(&s, 5);
    println!(
        "k {k}: {:.3} s, accuracy {:.3}, mean log posterior {:.4}",
        t.elapsed().as_secs_f64(),
        e.accuracy,
        e.mean_log_posterior
    );
}
