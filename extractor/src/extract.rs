//! Method A and Method B activations for batches of chat prompts.
//!
//! - Method A (`method_a_last_prompt_token`): block outputs at the last token of the templated
//!   prompt (with the generation prompt).
//! - Method B (`method_b_mean_generated`): greedy decoding with a KV cache; each response token's
//!   block outputs are pooled when that token is fed back, so no second forward pass is needed.
//!   The stop token is excluded. An empty response leaves Method B invalid for that prompt.
//! - Method B `templated` span (upstream scripts): decode the response, re-apply the chat template
//!   with it as the assistant turn, re-tokenise, and average positions [prompt_len:].

use crate::model::Model;
use crate::template::ChatTemplate;
use crate::tokenize::{decode, encode};
use anyhow::Result;

/// The token ids of a persona prompt: (system, question) through the chat template with the
/// generation prompt, tokenised. What every batch prefills, the shard costs count and
/// `bench-workload --study-prompts` times.
pub fn prompt_ids(
    tokenizer: &tokenizers::Tokenizer,
    template: &ChatTemplate,
    system: &str,
    question: &str,
) -> Result<Vec<u32>> {
    encode(tokenizer, &template.render(system, question, None, true)?)
}

pub struct Extractor<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a tokenizers::Tokenizer,
    pub template: &'a ChatTemplate,
    pub stop_ids: &'a [u32],
    /// Layers to capture (block indices, 0-based).
    pub layers: &'a [usize],
}

#[derive(Clone, Debug, Default)]
pub struct PromptResult {
    /// [layer][hidden]
    pub method_a: Vec<Vec<f32>>,
    /// Generated ids including a final stop token if one was produced.
    pub generated: Vec<u32>,
    /// Response ids (stop token excluded).
    pub response: Vec<u32>,
    /// [layer][hidden]; None when the response is empty or Method B was not requested.
    pub method_b: Option<Vec<Vec<f32>>>,
}

/// The batch for `batch_size = "auto"`: from the device's free memory on CUDA
/// ([`batch_for_memory`]), 16 on the CPU.
pub fn auto_batch_size(model: &Model, max_prompt: usize, max_new: usize) -> Result<usize> {
    match free_device_memory(model)? {
        Some(free) => Ok(batch_for_memory(
            &model.cfg,
            model.dtype.size_in_bytes(),
            free,
            max_prompt,
            max_new,
        )),
        None => Ok(16),
    }
}

fn free_device_memory(model: &Model) -> Result<Option<usize>> {
    match &model.device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => Ok(Some({
            // Memory cached by the allocator's pool is free for this process's batches.
            crate::cuda_ops::release_cached_memory(&model.device)?;
            d.cuda_stream()
                .context()
                .mem_get_info()
                .map_err(|e| anyhow::anyhow!("querying free GPU memory: {e:?}"))?
                .0
        })),
        _ => Ok(None),
    }
}

/// Upper bound of automatic batches: measured on an H200 (Qwen2.5-7B shape, bench workload),
/// Method B is fastest at 720 rows (27.1 s vs 30.7 s at 256 with the fused kernels; an earlier
/// build took 35.8 s at 1,440 vs 32.7 s at 720), so larger batches are not chosen.
pub const MAX_AUTO_BATCH: usize = 720;

/// The largest batch whose prefill and decoding fit in `free` bytes, keeping 2 GiB and a 15%
/// margin. Per row: the KV cache for `max_prompt + max_new` positions and the f32 pools. The
/// prefill's transient activations (f32 residual, q/k/v, attention scores in f32 and the
/// compute dtype, the MLP's gate/up and product) exist for one pass at a time, and a batch's
/// prefill runs `PREFILL_ROWS` rows per pass (`Model::prefill_in_row_chunks`): they count once
/// for a pass of that many rows, or per row when not even that many rows fit.
pub fn batch_for_memory(
    c: &crate::model::Config,
    dtype_bytes: usize,
    free: usize,
    max_prompt: usize,
    max_new: usize,
) -> usize {
    let t = max_prompt.max(1);
    let kv = c.num_layers * 2 * c.num_kv_heads * c.head_dim * (t + max_new) * dtype_bytes;
    let prefill = t * c.hidden_size * 4 * 4
        + t * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim * dtype_bytes * 2
        + c.num_heads * t * t * (4 * 2 + dtype_bytes * 2)
        + t * c.intermediate_size * dtype_bytes * 4;
    let per_row = kv + 2 * c.hidden_size * 4 * 8;
    let budget = (free.saturating_sub(2 << 30) as f64 * 0.85) as usize;
    let rows = match budget / (per_row + prefill).max(1) {
        small if small < PREFILL_ROWS => small,
        _ => budget.saturating_sub(PREFILL_ROWS * prefill) / per_row.max(1),
    };
    rows.clamp(1, MAX_AUTO_BATCH)
}

/// Left-pads prompts to `maxlen` (pad id 0, marked invalid): the last prompt token of every row
/// sits in the last column.
pub fn left_pad(prompts: &[Vec<u32>], maxlen: usize) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let mut tokens = Vec::with_capacity(prompts.len());
    let mut valid = Vec::with_capacity(prompts.len());
    for p in prompts {
        let pad = maxlen - p.len();
        let mut t = vec![0u32; pad];
        t.extend_from_slice(p);
        let mut v = vec![false; pad];
        v.extend(std::iter::repeat_n(true, p.len()));
        tokens.push(t);
        valid.push(v);
    }
    (tokens, valid)
}

impl<'a> Extractor<'a> {
    /// The extractor of `model` (built from `loaded`, merged or not) with `loaded`'s tokenizer
    /// and stop ids, capturing `layers`.
    pub fn of(
        model: &'a Model,
        loaded: &'a crate::weights::LoadedModel,
        template: &'a ChatTemplate,
        layers: &'a [usize],
    ) -> Extractor<'a> {
        Extractor {
            model,
            tokenizer: &loaded.tokenizer,
            template,
            stop_ids: &loaded.stop_ids,
            layers,
        }
    }

    pub fn prompt_text(&self, system: &str, question: &str) -> Result<String> {
        self.template.render(system, question, None, true)
    }

    pub fn prompt_ids(&self, system: &str, question: &str) -> Result<Vec<u32>> {
        prompt_ids(self.tokenizer, self.template, system, question)
    }

    /// Runs one left-padded batch: Method A always, Method B (greedy, `max_new` tokens) if asked.
    pub fn run_batch(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        method_b: bool,
    ) -> Result<Vec<PromptResult>> {
        run_batch_with(
            self.model,
            self.stop_ids,
            self.layers,
            prompts,
            max_new,
            method_b,
        )
    }

    /// The upstream scripts' Method-B span: [layer][hidden], or None for an empty answer span.
    pub fn method_b_templated(
        &self,
        system: &str,
        question: &str,
        prompt_len: usize,
        response: &[u32],
    ) -> Result<(Vec<u32>, Option<Vec<Vec<f32>>>)> {
        let answer = decode(self.tokenizer, response)?;
        let full = self
            .template
            .render(system, question, Some(&answer), false)?;
        let ids = encode(self.tokenizer, &full)?;
        if ids.len() <= prompt_len {
            return Ok((ids, None));
        }
        let hs = self.model.all_positions(&ids, self.layers)?;
        let n = (ids.len() - prompt_len) as f64;
        let pooled = hs
            .iter()
            .map(|layer| {
                let h = layer[0].len();
                let mut acc = vec![0f64; h];
                for row in &layer[prompt_len..] {
                    for (a, &x) in acc.iter_mut().zip(row) {
                        *a += x as f64;
                    }
                }
                acc.into_iter().map(|x| (x / n) as f32).collect()
            })
            .collect();
        Ok((ids, Some(pooled)))
    }
}

/// Rows per prefill pass in a larger batch: Method A ran equally fast at batches of 64, 128
/// and 256 prompts on an H200 (docs/benchmarks.md), so smaller passes cost nothing there and
/// skip the padding a 720-row decoding batch's longest prompts impose on the rest.
pub const PREFILL_ROWS: usize = 64;

/// One left-padded batch: Method A always, Method B (greedy, `max_new` tokens, stopping at
/// `stop_ids`, pooled on the device while decoding) if asked. The study runs and the throughput
/// benchmark both go through here.
pub fn run_batch_with(
    model: &Model,
    stop_ids: &[u32],
    layers: &[usize],
    prompts: &[Vec<u32>],
    max_new: usize,
    method_b: bool,
) -> Result<Vec<PromptResult>> {
    let b = prompts.len();
    let maxlen = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let (tokens, valid) = left_pad(prompts, maxlen);
    let prefill_start = std::time::Instant::now();
    let mut cache = model.new_cache(b, maxlen + max_new)?;
    // The step returns Method A's states on the host: the prefill has finished when it returns.
    // Large batches (Method B's, for decoding together) prefill PREFILL_ROWS rows at a time,
    // each chunk only as long as its longest prompt (callers sort prompts by length).
    let out =
        model.prefill_in_row_chunks(&tokens, &valid, &mut cache, layers, method_b, PREFILL_ROWS)?;
    runtime::phases::add("Method A: prefill", prefill_start.elapsed().as_secs_f64());
    let decode_start = std::time::Instant::now();
    let mut results: Vec<PromptResult> = (0..b)
        .map(|i| PromptResult {
            method_a: out.last_hidden.iter().map(|l| l[i].clone()).collect(),
            ..Default::default()
        })
        .collect();
    if !method_b {
        return Ok(results);
    }
    // Method B is decoded and pooled on the device: after the prefill nothing crosses between
    // host and device until the batch ends (tokens, stop handling, masks, RoPE and the f32 pools
    // all stay there), so the host only queues kernels. Every row feeds one token per step; a
    // row past its stop token keeps decoding but gets weight 0 in the pool and its tokens are
    // cut at the stop on the host. Rows are independent (own mask), so this changes nothing for
    // the others. Whether every row has stopped is checked every `CHECK_EVERY` steps.
    const CHECK_EVERY: usize = 16;
    let device = &model.device;
    let mut sums: Vec<candle_core::Tensor> = layers
        .iter()
        .map(|_| {
            candle_core::Tensor::zeros((b, model.cfg.hidden_size), candle_core::DType::F32, device)
        })
        .collect::<candle_core::Result<_>>()?;
    let tables = model.decode_tables(&cache, max_new)?;
    let stops = candle_core::Tensor::from_vec(stop_ids.to_vec(), (1, stop_ids.len()), device)?;
    let is_stop = |ids: &candle_core::Tensor| -> candle_core::Result<candle_core::Tensor> {
        if stop_ids.is_empty() {
            return candle_core::Tensor::zeros((b, 1), candle_core::DType::F32, device);
        }
        ids.unsqueeze(1)?
            .broadcast_eq(&stops)?
            .to_dtype(candle_core::DType::F32)?
            .max_keepdim(1)
    };
    let first = out.next_tokens.expect("asked for next tokens");
    let mut ids = candle_core::Tensor::from_vec(first, (b,), device)?;
    // 1 where the row has produced a stop token before the token fed now.
    let mut stopped = candle_core::Tensor::zeros((b, 1), candle_core::DType::F32, device)?;
    let mut history: Vec<candle_core::Tensor> = Vec::with_capacity(max_new);
    for step in 0..max_new {
        history.push(ids.clone());
        let stop_now = is_stop(&ids)?;
        // Pool this token's states if it is a response token: not a stop, not after one.
        let weight = ((1.0 - &stopped)? * (1.0 - &stop_now)?)?;
        stopped = stopped.maximum(&stop_now)?;
        let synced = step % CHECK_EVERY == CHECK_EVERY - 1;
        if synced && stopped.min_all()?.to_scalar::<f32>()? > 0.5 {
            break;
        }
        let last = step + 1 == max_new;
        let clock = std::time::Instant::now();
        let (next, captured) = model.decode_step(&ids, step, &tables, &mut cache, layers, !last)?;
        if synced && runtime::profile::host_timing() {
            // Right after a synchronisation the queue is empty: this is the host's own cost.
            runtime::profile::add(
                "host: queue a decoding step after a sync",
                clock.elapsed().as_secs_f64(),
            );
        }
        for (s, c) in sums.iter_mut().zip(&captured) {
            *s = (&*s + c.broadcast_mul(&weight)?)?;
        }
        match next {
            Some(n) => ids = n,
            None => break,
        }
    }
    // Tokens to the host once: cut each row at its first stop token (kept in `generated`).
    let tokens = if history.is_empty() {
        vec![vec![]; b]
    } else {
        candle_core::Tensor::stack(&history, 1)?.to_vec2::<u32>()?
    };
    for (r, row) in results.iter_mut().zip(&tokens) {
        for &t in row {
            r.generated.push(t);
            if stop_ids.contains(&t) {
                break;
            }
            r.response.push(t);
        }
    }
    let sums: Vec<Vec<Vec<f32>>> = sums
        .iter()
        .map(|s| s.to_vec2::<f32>())
        .collect::<candle_core::Result<_>>()?;
    // The tokens and pools came back to the host above: decoding has finished.
    runtime::phases::add(
        "Method B: decoding + pooling",
        decode_start.elapsed().as_secs_f64(),
    );
    for (i, r) in results.iter_mut().enumerate() {
        let n = r.response.len();
        if n > 0 {
            r.method_b = Some(
                sums.iter()
                    .map(|layer| {
                        layer[i]
                            .iter()
                            .map(|&x| (x as f64 / n as f64) as f32)
                            .collect()
                    })
                    .collect(),
            );
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_batch_for_qwen25_7b_on_an_h100_sized_card() {
        let cfg = crate::workload::qwen25_7b();
        // 80 GB card with 15.2 GB of bf16 weights loaded: ~64 GB free.
        let b = batch_for_memory(&cfg, 2, 64 << 30, 110, 200);
        // KV: 28 x 2 x 4 x 128 x 310 x 2 B = 17.8 MB per row; one 64-row prefill pass of 110
        // tokens ~2.9 GB.
        assert_eq!(b, MAX_AUTO_BATCH, "64 GB fit ~3,000 rows; capped");
        // Known answers (the formula evaluated by hand, bench notes): a 24 GiB card still gets
        // the cap at 110 tokens; the ~400-token confab persona (35.5 MB of KV per row, a
        // 64-row pass ~9.7 GB) 284 rows, 10 GiB free 302 rows at 110 tokens, 2 GiB nothing.
        assert_eq!(
            batch_for_memory(&cfg, 2, 24 << 30, 110, 200),
            MAX_AUTO_BATCH
        );
        assert_eq!(batch_for_memory(&cfg, 2, 24 << 30, 420, 200), 284);
        assert_eq!(batch_for_memory(&cfg, 2, 10 << 30, 110, 200), 302);
        // Where not even one 64-row pass fits, the transients count per row: 3 GiB free.
        assert_eq!(batch_for_memory(&cfg, 2, 3 << 30, 420, 200), 4);
        assert_eq!(batch_for_memory(&cfg, 2, 2 << 30, 110, 200), 1);
    }
}
