//! Times M3's estimator (scikit-learn's shrinkage LDA, 5 folds) at the default study's full
//! size on one thread: 12 personas x 240 questions x 3,584 dims. Usage: per_class_time
use shared::lda::per_class::evaluate_per_class_lda;
use shared::lda::Samples;
fn main() {
    let (p, q, d) = (12usize, 240usize, 3584usize);
    let mut rng = shared::rng::Rng::new(1);
    let s = Samples::from_fn(p, q, d, |pi, _, j| {
        rng.normal() * 10.0 / ((j + 1) as f64).sqrt() + (pi * j % 7) as f64
    });
    let t = std::time::Instant::now();
    let e = evaluate_per_class_lda(&s, 5);
    println!(
        "one checkpoint (5 fold fits): {:.2} s, held-out accuracy {:.4}",
        t.elapsed().as_secs_f64(),
        e.accuracy
    );
}
