//! One optimizer step: forward and backward over the micro-batches of the accumulated batch,
//! gradients summed, clipped to a global norm, AdamW at the scheduled learning rate.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};

use super::adapter::TrainableLora;
use super::forward::{Dropout, MicroBatch, TrainForward};
use super::optim::{clip_global_norm, AdamW};
use crate::model::Model;

/// What one optimizer step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// 1-based optimizer step.
    pub step: usize,
    /// Summed token cross-entropy of the accumulated batch / its label tokens.
    pub loss: f64,
    pub grad_norm_before_clip: f64,
    pub lr: f64,
    pub label_tokens: usize,
    /// Real (non-padding) tokens, for tokens/s.
    pub tokens: usize,
}

/// The gradient of (Σ cross-entropy over the accumulated batch) / (its label tokens) for every
/// LoRA variable (`lora.named_vars()` order), and that loss. Each micro-batch is run forward
/// and backward alone, its loss divided by the whole batch's label count first (as the
/// Trainer does with `num_items_in_batch`), and the gradients summed.
pub fn accumulated_gradients(
    model: &Model,
    lora: &TrainableLora,
    micro_batches: &[MicroBatch],
    dropout: &[Option<Dropout>],
) -> Result<(Vec<Tensor>, f64)> {
    let fwd = TrainForward { model, lora };
    let label_tokens: usize = micro_batches.iter().map(|m| m.label_tokens).sum();
    anyhow::ensure!(
        label_tokens > 0,
        "the accumulated batch has no label tokens"
    );
    let vars: Vec<&Var> = lora.named_vars().into_iter().map(|(_, v)| v).collect();
    let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss = 0.0f64;
    for (mb, d) in micro_batches.iter().zip(dropout) {
        let summed = fwd.summed_label_loss(mb, d.as_ref())?;
        loss += summed.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = (summed / label_tokens as f64)?
            .backward()
            .context("backward pass")?;
        for (slot, v) in sums.iter_mut().zip(&vars) {
            let g = grads
                .get(v.as_tensor())
                .context("a LoRA variable received no gradient: the forward does not use it")?;
            *slot = Some(match slot.take() {
                Some(s) => (s + g)?,
                None => g.clone(),
            });
        }
    }
    let grads = sums.into_iter().map(|g| g.expect("filled")).collect();
    Ok((grads, loss / label_tokens as f64))
}

/// One optimizer step at learning rate `lr`: accumulated gradients, clipping to `max_grad_norm`,
/// AdamW. Returns the step's record (`step` left for the caller to set).
pub fn optimizer_step(
    model: &Model,
    lora: &TrainableLora,
    adam: &mut AdamW,
    micro_batches: &[MicroBatch],
    dropout: &[Option<Dropout>],
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepRecord> {
    let (mut grads, loss) = accumulated_gradients(model, lora, micro_batches, dropout)?;
    anyhow::ensure!(
        loss.is_finite(),
        "the loss is {loss}: the model or the data produce non-finite values"
    );
    let norm = clip_global_norm(&mut grads, max_grad_norm)?;
    let vars: Vec<&Var> = lora.named_vars().into_iter().map(|(_, v)| v).collect();
    adam.step(&vars, &grads, lr)?;
    Ok(StepRecord {
        step: 0,
        loss,
        grad_norm_before_clip: norm,
        lr,
        label_tokens: micro_batches.iter().map(|m| m.label_tokens).sum(),
        tokens: micro_batches.iter().map(|m| m.tokens).sum(),
    })
}
