//! A large batch's prefill in chunks of rows, each padded only to its own longest prompt.
//!
//! Decoding needs every row of a batch in one left-padded KV cache (all prompts end at the same
//! column), so Method B's batches are large (720 rows for a 7B model on an H200) and one
//! prefill pass over them computes every row at the batch's longest length: the padding is
//! computed too. Here each chunk of rows runs its own pass at its own longest length, written
//! right-aligned into its rows of the shared cache (columns before it stay padding: never
//! written, masked by each row's first real key). Per row the same function: the same keys,
//! positions and RoPE; only the matrix products' blocking differs.

use super::*;

impl KvCache {
    /// Rows `r0..r0 + n` of an empty cache as a cache of their own whose filled part starts at
    /// column `offset` (the columns before are padding): the K/V buffers are views into this
    /// cache's (writes land in its rows).
    fn rows_from_column(&self, r0: usize, n: usize, offset: usize) -> Result<KvCache> {
        let view = |bufs: &[Tensor]| -> Result<Vec<Tensor>> {
            bufs.iter().map(|t| Ok(t.narrow(0, r0, n)?)).collect()
        };
        Ok(KvCache {
            k: view(&self.k)?,
            v: view(&self.v)?,
            len: offset,
            key_valid: vec![vec![false; offset]; n],
            next_pos: vec![0; n],
            capacity: self.capacity,
        })
    }
}

impl Model {
    /// `step` (a prefill of left-padded `tokens` into an empty `cache`) run `rows_per_chunk`
    /// rows at a time, each chunk cut to the columns from its earliest real token: the same
    /// outputs as one pass (up to the matrix products' rounding), the same cache contents, with
    /// no work on the padding that only longer prompts of other chunks need. Rows should be
    /// sorted by prompt length for chunks to be short. One pass when the batch fits in a chunk
    /// or the cache is not empty.
    pub fn prefill_in_row_chunks(
        &self,
        tokens: &[Vec<u32>],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
        capture: &[usize],
        want_logits: bool,
        rows_per_chunk: usize,
    ) -> Result<StepOutput> {
        let b = tokens.len();
        if b <= rows_per_chunk.max(1) || cache.len != 0 {
            return self.step(tokens, valid, cache, capture, want_logits);
        }
        let maxlen = tokens[0].len();
        let mut next_tokens: Vec<u32> = Vec::with_capacity(b);
        let mut last_hidden: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(b); capture.len()];
        for r0 in (0..b).step_by(rows_per_chunk) {
            let n = rows_per_chunk.min(b - r0);
            // The chunk's first column with a real token (a row without any keeps one column).
            let first = (r0..r0 + n)
                .map(|i| {
                    valid[i]
                        .iter()
                        .position(|&v| v)
                        .unwrap_or(maxlen.saturating_sub(1))
                })
                .min()
                .unwrap_or(0);
            let rows_tokens: Vec<Vec<u32>> = tokens[r0..r0 + n]
                .iter()
                .map(|t| t[first..].to_vec())
                .collect();
            let rows_valid: Vec<Vec<bool>> = valid[r0..r0 + n]
                .iter()
                .map(|v| v[first..].to_vec())
                .collect();
            let mut rows = cache.rows_from_column(r0, n, first)?;
            let out = self.step(&rows_tokens, &rows_valid, &mut rows, capture, want_logits)?;
            for (i, (kv, pos)) in rows.key_valid.into_iter().zip(rows.next_pos).enumerate() {
                cache.key_valid[r0 + i] = kv;
                cache.next_pos[r0 + i] = pos;
            }
            if let Some(ids) = out.next_tokens {
                next_tokens.extend(ids);
            }
            for (all, part) in last_hidden.iter_mut().zip(out.last_hidden) {
                all.extend(part);
            }
        }
        cache.len = maxlen;
        Ok(StepOutput {
            next_tokens: want_logits.then_some(next_tokens),
            last_hidden,
        })
    }
}
