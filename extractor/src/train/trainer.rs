//! One optimizer step: forward and backward over the micro-batches of the accumulated batch,
//! gradients summed, clipped to a global norm, AdamW at the scheduled learning rate.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};

use super::adapter::TrainableLora;
use super::forward::{Dropout, MicroBatch, TrainForward};
use super::optim::{global_norm, AdamW};
use crate::model::Model;

/// What one optimizer step measured (also the rows of training.json, loss.csv and
/// checkpoints).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
///
/// Memory: gradient checkpointing per decoder block, as the upstream recipe runs HF's. The
/// forward keeps only each block's input (the graph of a block is dropped as soon as its
/// output exists); the backward recomputes one block at a time from its input and
/// back-propagates the gradient arriving at its output (the surrogate Σ output ⊙ grad), so a
/// pass holds one block's graph at a time. Same gradients as one graph of the whole pass (the
/// tests compare both and the oracle), one more forward of compute.
/// Label rows per chunk of the head's loss (`accumulated_gradients`).
const HEAD_CHUNK_ROWS: usize = 256;

pub fn accumulated_gradients(
    model: &Model,
    lora: &TrainableLora,
    micro_batches: &[MicroBatch],
    dropout: &[Option<Dropout>],
) -> Result<(Vec<Tensor>, f64)> {
    accumulated_gradients_with(model, lora, micro_batches, dropout, HEAD_CHUNK_ROWS)
}

/// `accumulated_gradients` with the head's loss taken `head_chunk` label rows at a time.
pub fn accumulated_gradients_with(
    model: &Model,
    lora: &TrainableLora,
    micro_batches: &[MicroBatch],
    dropout: &[Option<Dropout>],
    head_chunk: usize,
) -> Result<(Vec<Tensor>, f64)> {
    let sums = lora
        .named_vars()
        .iter()
        .map(|(_, v)| Ok(Var::from_tensor(&v.as_tensor().zeros_like()?)?))
        .collect::<Result<Vec<_>>>()?;
    let loss = accumulate_gradients_into(model, lora, micro_batches, dropout, head_chunk, &sums)?;
    Ok((sums.iter().map(|v| v.as_tensor().detach()).collect(), loss))
}

/// `accumulated_gradients_with`, the gradients written in place into `sums` (one buffer per
/// LoRA variable, `lora.named_vars()` order; their old values are overwritten): the training
/// loop keeps these buffers for the whole run, so no step allocates memory that outlives it
/// among its activations (see `AdamW`).
pub fn accumulate_gradients_into(
    model: &Model,
    lora: &TrainableLora,
    micro_batches: &[MicroBatch],
    dropout: &[Option<Dropout>],
    head_chunk: usize,
    sums: &[Var],
) -> Result<f64> {
    let fwd = TrainForward { model, lora };
    let label_tokens: usize = micro_batches.iter().map(|m| m.label_tokens).sum();
    anyhow::ensure!(
        label_tokens > 0,
        "the accumulated batch has no label tokens"
    );
    let named = lora.named_vars();
    // The variables of each block with their index in `named` (the blocks' concatenation).
    let mut per_block: Vec<Vec<(usize, &Var)>> = Vec::with_capacity(model.layers.len());
    let mut next = 0;
    for vars in lora.vars_by_block() {
        let first = next;
        next += vars.len();
        per_block.push(
            vars.into_iter()
                .enumerate()
                .map(|(k, v)| (first + k, v))
                .collect(),
        );
    }
    anyhow::ensure!(
        next == named.len(),
        "LoRA variables outside the decoder blocks"
    );
    anyhow::ensure!(
        sums.len() == named.len(),
        "{} gradient buffers for {} LoRA variables",
        sums.len(),
        named.len()
    );
    let mut written = vec![false; named.len()];
    let mut add = |i: usize, g: &Tensor| -> Result<()> {
        if written[i] {
            sums[i].set(&(sums[i].as_tensor() + g)?)?;
        } else {
            sums[i].set(g)?;
            written[i] = true;
        }
        Ok(())
    };
    // Each chunk's summed loss stays on the device until the end of the step: reading it at
    // once would synchronise (and drain the queue) a few times per micro-batch.
    let mut chunk_losses: Vec<Tensor> = Vec::new();
    let mut clock = std::time::Instant::now();
    for (mb, d) in micro_batches.iter().zip(dropout) {
        let d = d.as_ref();
        let pass = fwd.prepare(mb)?;
        let mut inputs = vec![fwd.embed(mb)?];
        for l in 0..model.layers.len() {
            let out = fwd.block_values(l, &inputs[l], &pass, d)?;
            inputs.push(out);
        }
        runtime::profile::host_lap(&mut clock, "train host: forward (no graph)");
        let top = Var::from_tensor(&inputs[model.layers.len()])?;
        // The head in chunks of label rows, each with its own backward: the f32 logits over a
        // 152k vocabulary and their gradients exist for one chunk at a time (the gradient is
        // the sum over disjoint rows, so chunking changes no value but the loss's summation order).
        let mut grad_out: Option<Tensor> = None;
        for (rows, targets) in mb.label_chunks(head_chunk)? {
            let summed = fwd.head_loss_rows(top.as_tensor(), &rows, &targets)?;
            chunk_losses.push(summed.detach().reshape(1)?);
            let grads = (summed / label_tokens as f64)?
                .backward()
                .context("backward pass (head)")?;
            let g = grads
                .get(top.as_tensor())
                .context("no gradient reached the last block's output")?;
            grad_out = Some(match grad_out {
                Some(s) => (s + g)?,
                None => g.clone(),
            });
        }
        let mut grad_out = grad_out.context("a micro-batch without label rows")?;
        runtime::profile::host_lap(&mut clock, "train host: head chunks");
        for l in (0..model.layers.len()).rev() {
            // Block 0's input is the frozen embedding: no gradient needed below it.
            let input = if l > 0 {
                Some(Var::from_tensor(&inputs[l])?)
            } else {
                None
            };
            let x = input.as_ref().map(|v| v.as_tensor()).unwrap_or(&inputs[0]);
            let out = fwd.block(l, x, &pass, d)?;
            let grads = (out * &grad_out)?
                .sum_all()?
                .backward()
                .with_context(|| format!("backward pass (block {l})"))?;
            for &(i, v) in &per_block[l] {
                let g = grads.get(v.as_tensor()).with_context(|| {
                    format!(
                        "{}: received no gradient: the forward does not use it",
                        named[i].0
                    )
                })?;
                add(i, g)?;
            }
            if let Some(input) = &input {
                grad_out = grads
                    .get(input.as_tensor())
                    .with_context(|| format!("no gradient reached block {l}'s input"))?
                    .clone();
            }
        }
        runtime::profile::host_lap(&mut clock, "train host: backward (recompute + graph)");
    }
    if let Some(i) = written.iter().position(|w| !w) {
        anyhow::bail!("{}: received no gradient", named[i].0);
    }
    // Summed in f64 on the host in chunk order, as they were produced. With PG_HOST_TIMING
    // the wait here (the device finishing what the host queued) is recorded: near zero
    // means the host sets the pace.
    let wait = std::time::Instant::now();
    let loss: f64 = Tensor::cat(&chunk_losses, 0)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .sum();
    if runtime::profile::host_timing() {
        runtime::profile::add(
            "host: waiting for the device at the step's loss",
            wait.elapsed().as_secs_f64(),
        );
    }
    Ok(loss / label_tokens as f64)
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
    let loss = accumulate_gradients_into(
        model,
        lora,
        micro_batches,
        dropout,
        HEAD_CHUNK_ROWS,
        &adam.step_grads,
    )?;
    let grads: Vec<Tensor> = adam
        .step_grads
        .iter()
        .map(|v| v.as_tensor().detach())
        .collect();
    anyhow::ensure!(
        loss.is_finite(),
        "the loss is {loss}: the model or the data produce non-finite values"
    );
    let mut clock = std::time::Instant::now();
    let (norm, clip) = global_norm(&grads, max_grad_norm)?;
    runtime::profile::host_lap(&mut clock, "train host: gradient norms (one sync)");
    let vars: Vec<&Var> = lora.named_vars().into_iter().map(|(_, v)| v).collect();
    adam.step_clipped(&vars, &grads, clip, lr)?;
    runtime::profile::host_lap(&mut clock, "train host: AdamW");
    Ok(StepRecord {
        step: 0,
        loss,
        grad_norm_before_clip: norm,
        lr,
        label_tokens: micro_batches.iter().map(|m| m.label_tokens).sum(),
        tokens: micro_batches.iter().map(|m| m.tokens).sum(),
    })
}
