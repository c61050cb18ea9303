//! A large batch's prefill in chunks of rows, each padded only to its own longest prompt, with
//! a prompt prefix that a chunk's rows share computed once.
//!
//! Decoding needs every row of a batch in one left-padded KV cache (all prompts end at the same
//! column), so Method B's batches are large (720 rows for a 7B model on an H200) and one
//! prefill pass over them computes every row at the batch's longest length: the padding is
//! computed too. Here each chunk of rows runs its own pass at its own longest length, written
//! right-aligned into its rows of the shared cache (columns before it stay padding: never
//! written, masked by each row's first real key). Per row the same function: the same keys,
//! positions and RoPE; only the matrix products' blocking differs.
//!
//! The study's prompts are a persona's system prompt and the chat template's opening, then a
//! question: every row of a persona shares its first 14-383 tokens (74% of the default study's
//! prompt tokens). A chunk whose rows share a prefix of at least `MIN_SHARED_PREFIX` tokens
//! runs that prefix once as a one-row pass, copies its keys and values into each row's cache
//! columns (the rows are right-aligned, so the copy lands at a different column per row) and
//! then computes only the columns after it: keys, values and positions are those of a pass
//! over whole prompts, since causal attention makes a prefix's keys independent of what
//! follows it.

use super::*;
use std::sync::OnceLock;

/// Shortest prompt prefix that chunks are cut by and that a chunk computes once.
pub const MIN_SHARED_PREFIX: usize = 16;

/// A chunk computes its shared prefix once only when that skips at least this many token
/// positions ((rows - 1) x prefix length): the one-row pass reads every weight once, about as
/// long as ~200 tokens of a batched pass take on a GPU.
pub const MIN_SKIPPED_POSITIONS: usize = 256;

/// `PG_SHARED_PREFIX=0` turns the sharing off: chunks of `rows_per_chunk` consecutive rows, as
/// before it existed (to time both on the same build and card).
fn sharing_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::env_switch_on("PG_SHARED_PREFIX"))
}

/// One chunk of a batch's prefill: rows `r0..r0 + n`, and the prompt prefix (in tokens) they
/// all share and that is computed once (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillChunk {
    pub r0: usize,
    pub n: usize,
    pub shared: usize,
}

/// A left-padded row's first real column (None: all padding).
fn first_real_column(valid: &[bool]) -> Option<usize> {
    valid.iter().position(|&v| v)
}

/// A row's real tokens (after its left padding).
fn real_tokens<'a>(tokens: &'a [u32], valid: &[bool]) -> &'a [u32] {
    &tokens[first_real_column(valid).unwrap_or(tokens.len())..]
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How `prefill_in_row_chunks` cuts a batch: a run of consecutive rows that share a prefix
/// worth computing once (`shared_prefix`) is a group of its own (so a chunk does not mix two
/// personas), the other rows are grouped with their neighbours, and each group is cut into
/// chunks of at most `rows_per_chunk` rows. A chunk's `shared` prefix is `shared_prefix` of
/// its rows (0: none). Without `share` (`PG_SHARED_PREFIX=0`): consecutive chunks of
/// `rows_per_chunk` rows, none shared, as before sharing existed.
pub fn plan_prefill_chunks(
    tokens: &[Vec<u32>],
    valid: &[Vec<bool>],
    rows_per_chunk: usize,
    share: bool,
) -> Vec<PrefillChunk> {
    let rows: Vec<&[u32]> = tokens
        .iter()
        .zip(valid)
        .map(|(t, v)| real_tokens(t, v))
        .collect();
    let groups = if share {
        sharing_groups(&rows)
    } else {
        vec![(0, rows.len())]
    };
    let mut chunks = Vec::new();
    for (gs, ge) in groups {
        for r0 in (gs..ge).step_by(rows_per_chunk.max(1)) {
            let n = rows_per_chunk.max(1).min(ge - r0);
            let shared = match share {
                true => shared_prefix(&rows[r0..r0 + n]).unwrap_or(0),
                false => 0,
            };
            chunks.push(PrefillChunk { r0, n, shared });
        }
    }
    chunks
}

/// `plan_prefill_chunks`'s groups of rows, [start, end): each run of rows sharing a prefix
/// worth computing once on its own, the rows between runs together.
fn sharing_groups(rows: &[&[u32]]) -> Vec<(usize, usize)> {
    // With whether the group's rows share a prefix worth computing once.
    let mut groups: Vec<(usize, usize, bool)> = Vec::new();
    let mut s = 0;
    while s < rows.len() {
        let mut e = s + 1;
        while e < rows.len() && common_prefix(rows[s], rows[e]) >= MIN_SHARED_PREFIX {
            e += 1;
        }
        let run = shared_prefix(&rows[s..e]).is_some();
        match groups.last_mut() {
            // Rows that share nothing worth it with their neighbours join the rows before them
            // that do not either (a few rows of one persona among others sorted by length
            // would otherwise cut the batch into tiny chunks).
            Some((_, end, false)) if !run => *end = e,
            _ => groups.push((s, e, run)),
        }
        s = e;
    }
    groups.into_iter().map(|(s, e, _)| (s, e)).collect()
}

/// The prefix all `rows` share, short of the shortest row's last token (that token's pass gives
/// the captured states and the next token), if it is at least `MIN_SHARED_PREFIX` tokens long
/// and computing it once skips at least `MIN_SKIPPED_POSITIONS` positions.
fn shared_prefix(rows: &[&[u32]]) -> Option<usize> {
    let (head, rest) = rows.split_first()?;
    let shortest = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    let prefix = rest
        .iter()
        .map(|r| common_prefix(head, r))
        .min()
        .unwrap_or(0)
        .min(shortest.saturating_sub(1));
    (prefix >= MIN_SHARED_PREFIX && prefix * rest.len() >= MIN_SKIPPED_POSITIONS).then_some(prefix)
}

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
    /// `step` (a prefill of left-padded `tokens` into an empty `cache`) run chunk by chunk as
    /// `plan_prefill_chunks` cuts the batch: each chunk cut to the columns from its earliest
    /// real token, its shared prompt prefix computed once. The same outputs as one pass (up to
    /// the matrix products' rounding), the same cache contents, with no work on the padding
    /// that only longer prompts of other chunks need nor on the repeats of a shared prefix.
    /// Rows should be sorted by prompt length (within each system prompt, for the prefix to
    /// be shared) for chunks to be short. One pass when the cache is not empty.
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
        if cache.len != 0 || b == 0 {
            return self.step(tokens, valid, cache, capture, want_logits);
        }
        let chunks = plan_prefill_chunks(tokens, valid, rows_per_chunk, sharing_enabled());
        if let [only] = chunks[..] {
            if only.shared == 0 {
                return self.step(tokens, valid, cache, capture, want_logits);
            }
        }
        let maxlen = tokens[0].len();
        let mut next_tokens: Vec<u32> = Vec::with_capacity(b);
        let mut last_hidden: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(b); capture.len()];
        for PrefillChunk { r0, n, shared } in chunks {
            let first_real =
                |i: usize| first_real_column(&valid[i]).unwrap_or(maxlen.saturating_sub(1));
            // The chunk's first column with a real token (a row without any keeps one column).
            let first = (r0..r0 + n).map(first_real).min().unwrap_or(0);
            let mut rows = cache.rows_from_column(r0, n, first)?;
            // Where this chunk's pass starts: after the shared prefix of its longest-suffix row.
            let start = if shared == 0 {
                first
            } else {
                let longest_suffix = (r0..r0 + n)
                    .map(|i| maxlen - first_real(i) - shared)
                    .max()
                    .unwrap_or(0);
                let start = maxlen - longest_suffix;
                let prefix = &real_tokens(&tokens[r0], &valid[r0])[..shared];
                self.fill_shared_prefix(&mut rows, prefix, &valid[r0..r0 + n], first, start)?;
                start
            };
            let rows_tokens: Vec<Vec<u32>> = tokens[r0..r0 + n]
                .iter()
                .map(|t| t[start..].to_vec())
                .collect();
            let rows_valid: Vec<Vec<bool>> = valid[r0..r0 + n]
                .iter()
                .map(|v| v[start..].to_vec())
                .collect();
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

    /// Fills columns `first..start` of a chunk's cache `rows` (whose filled part starts at
    /// `first`) with the keys and values of the shared `prefix`, run once as a one-row pass:
    /// row i's real tokens before `start` are the first m_i tokens of the prefix, right-aligned
    /// to end at column `start - 1`; its padding columns get copies of position 0 (finite
    /// filler that the attention never reads: each row's first key comes after them). Leaves
    /// `rows` as if a pass had written those columns: its length, each row's key flags and
    /// next position.
    fn fill_shared_prefix(
        &self,
        rows: &mut KvCache,
        prefix: &[u32],
        valid: &[Vec<bool>],
        first: usize,
        start: usize,
    ) -> Result<()> {
        let p = prefix.len();
        let n = valid.len();
        let width = start - first;
        let mut once = self.new_cache(1, p)?;
        self.step(&[prefix.to_vec()], &[vec![true; p]], &mut once, &[], false)?;
        // Row i, column first + j holds prefix position j - (width - m_i) when that is >= 0.
        let mut index = Vec::with_capacity(n * width);
        for (i, v) in valid.iter().enumerate() {
            let m = v[first..start].iter().filter(|&&x| x).count();
            for j in 0..width {
                index.push((j + m).saturating_sub(width) as u32);
            }
            rows.key_valid[i].extend_from_slice(&v[first..start]);
            rows.next_pos[i] = m;
        }
        let index = Tensor::from_vec(index, (n * width,), &self.device)?;
        let (nkv, hd) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        for (dst, src) in rows.k.iter().zip(&once.k).chain(rows.v.iter().zip(&once.v)) {
            // [1, nkv, p, hd] -> [nkv, n·width, hd] -> [n, nkv, width, hd]
            let copied = src
                .squeeze(0)?
                .index_select(&index, 1)?
                .reshape((nkv, n, width, hd))?
                .transpose(0, 1)?
                .contiguous()?;
            dst.slice_set(&copied, 2, first)?;
        }
        rows.len = start;
        Ok(())
    }
}
