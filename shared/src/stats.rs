//! p-values and multiple-comparison corrections.

/// Two-sided permutation p-value with the +1 correction: (C + 1) / (N + 1), where C counts null
/// statistics at least as extreme as the observed one: |null| >= |obs| − tol. `tol` is absolute
/// (callers derive it from the statistic's scale, see `geometry::TIE_REL_TOL`), so that the
/// identity permutation counts as a tie, and an observed value within `tol` of zero (zero by
/// construction, up to rounding) gets p = 1.
pub fn permutation_p_two_sided(observed: f64, null: &[f64], tol: f64) -> f64 {
    if observed.abs() <= tol {
        return 1.0;
    }
    let thr = observed.abs() - tol;
    let c = null.iter().filter(|x| x.abs() >= thr).count();
    (c as f64 + 1.0) / (null.len() as f64 + 1.0)
}

/// One-sided (greater) permutation p-value: (#{null >= obs − tol} + 1) / (N + 1).
pub fn permutation_p_greater(observed: f64, null: &[f64], tol: f64) -> f64 {
    let thr = observed - tol;
    let c = null.iter().filter(|&&x| x >= thr).count();
    (c as f64 + 1.0) / (null.len() as f64 + 1.0)
}

/// One-sided (less) permutation p-value: (#{null <= obs + tol} + 1) / (N + 1).
pub fn permutation_p_less(observed: f64, null: &[f64], tol: f64) -> f64 {
    let thr = observed + tol;
    let c = null.iter().filter(|&&x| x <= thr).count();
    (c as f64 + 1.0) / (null.len() as f64 + 1.0)
}

/// Smallest p-value a permutation test with `n` permutations can report.
pub fn p_floor(n: usize) -> f64 {
    1.0 / (n as f64 + 1.0)
}

/// Benjamini-Hochberg step-up adjusted p-values (as statsmodels `fdr_bh`):
/// adj_(i) = min_{j >= i} (m / j) p_(j), capped at 1, in the input order.
pub fn bh_adjust(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adj = vec![0.0; m];
    let mut running = f64::INFINITY;
    for rank in (0..m).rev() {
        let i = order[rank];
        let v = (p[i] * m as f64 / (rank + 1) as f64).min(1.0);
        running = running.min(v);
        adj[i] = running;
    }
    adj
}

/// Holm step-down adjusted p-values (as statsmodels `holm`):
/// adj_(i) = max_{j <= i} (m - j + 1) p_(j), capped at 1, in the input order.
pub fn holm_adjust(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adj = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let v = (p[i] * (m - rank) as f64).min(1.0);
        running = running.max(v);
        adj[i] = running;
    }
    adj
}

/// Basic (reverse-percentile) bootstrap interval [2θ̂ - q_hi, 2θ̂ - q_lo]. Cosines of noisy
/// centroids are biased (noise lowers them); the bootstrap replicates carry that bias once more,
/// and the basic interval subtracts it, where the plain percentile interval would double it.
pub fn basic_bootstrap_interval(estimate: f64, replicates: &[f64], level: f64) -> Option<[f64; 2]> {
    percentile_interval(replicates, level)
        .map(|[lo, hi]| [2.0 * estimate - hi, 2.0 * estimate - lo])
}

/// Percentile interval (linear interpolation between order statistics, as numpy's default).
pub fn percentile_interval(values: &[f64], level: f64) -> Option<[f64; 2]> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |f: f64| {
        let pos = f * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    let a = (1.0 - level) / 2.0;
    Some([q(a), q(1.0 - a)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bh_and_holm_small_hand_example() {
        // Hand-computed: p = [0.01, 0.04, 0.03, 0.005], m = 4.
        let p = [0.01, 0.04, 0.03, 0.005];
        let bh = bh_adjust(&p);
        let want_bh = [0.02, 0.04, 0.04, 0.02];
        for (a, b) in bh.iter().zip(want_bh) {
            assert!((a - b).abs() < 1e-15, "{bh:?}");
        }
        let holm = holm_adjust(&p);
        let want_holm = [0.03, 0.06, 0.06, 0.02];
        for (a, b) in holm.iter().zip(want_holm) {
            assert!((a - b).abs() < 1e-15, "{holm:?}");
        }
    }

    #[test]
    fn permutation_p_is_never_zero() {
        assert_eq!(permutation_p_two_sided(10.0, &[0.0; 99], 1e-9), 0.01);
        assert_eq!(permutation_p_two_sided(0.0, &[0.0; 99], 1e-9), 1.0);
        // Zero by construction up to rounding: a tie with itself, p = 1.
        assert_eq!(permutation_p_two_sided(1.7e-6, &[1e-3; 99], 2.5e-6), 1.0);
        assert_eq!(permutation_p_greater(0.5, &[0.5, 0.1, 0.6], 1e-9), 0.75);
        assert_eq!(permutation_p_less(0.5, &[0.5, 0.1, 0.6], 1e-9), 0.75);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let v: Vec<f64> = (0..11).map(|x| x as f64).collect();
        let ci = percentile_interval(&v, 0.95).unwrap();
        assert!((ci[0] - 0.25).abs() < 1e-12 && (ci[1] - 9.75).abs() < 1e-12);
    }
}
