//! The learning-rate schedule of `train` (issue #14), as transformers'
//! `get_linear_schedule_with_warmup` computes it: linear warm-up from 0, then linear decay to 0
//! at the last optimizer step. Step numbers are 0-based optimizer steps.

/// Warm-up steps for a warm-up ratio, as transformers' `TrainingArguments.get_warmup_steps`:
/// ceil(total · ratio).
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (total as f64 * ratio).ceil() as usize
}

/// The learning rate used at optimizer step `step` (0-based).
pub fn linear_warmup_lr(base_lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total.saturating_sub(step)) as f64 / total.saturating_sub(warmup).max(1) as f64
    };
    base_lr * factor.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_recipe_warmup() {
        // 375 steps at ratio 0.03: 12 warm-up steps (ceil 11.25).
        assert_eq!(warmup_steps(375, 0.03), 12);
        assert_eq!(linear_warmup_lr(1e-4, 0, 12, 375), 0.0);
        assert!((linear_warmup_lr(1e-4, 6, 12, 375) - 0.5e-4).abs() < 1e-18);
        assert!((linear_warmup_lr(1e-4, 12, 12, 375) - 1e-4).abs() < 1e-18);
        assert_eq!(linear_warmup_lr(1e-4, 375, 12, 375), 0.0);
    }
}
