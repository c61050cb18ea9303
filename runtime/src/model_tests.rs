//! Tests of `model`: the KV cache, padding, passes at offsets.

use super::prefill_chunks::{plan_prefill_chunks, PrefillChunk};
use super::*;

fn tiny_model() -> Model {
    tiny_model_of_depth(2)
}

fn tiny_model_of_depth(layers: usize) -> Model {
    let cfg = Config {
        arch: Arch::Qwen2,
        hidden_size: 16,
        intermediate_size: 32,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        vocab_size: 64,
        rms_eps: 1e-6,
        rope_theta: 1e4,
        rope_llama3: None,
        tie_embeddings: false,
        attention_bias: true,
        family: crate::config::Family::plain(layers, 1e4, 4),
    };
    let w = crate::random::random_weights(&cfg, &Device::Cpu, DType::F32).unwrap();
    Model::new(cfg, w, &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn first_keys_are_the_left_padding_and_other_padding_is_refused_for_decoding() {
    let m = tiny_model();
    let mut cache = m.new_cache(3, 8).unwrap();
    cache.key_valid = vec![
        vec![false, false, true, true],
        vec![true, true, true, true],
        vec![false, true, true, true],
    ];
    let fk = m
        .first_keys(&cache)
        .unwrap()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(fk, vec![2, 0, 1]);
    // Padding after a real token cannot be described by a first key: the fused kernel is not
    // used for such a prefill, and decoding (which needs it) refuses with a message.
    cache.key_valid[1] = vec![true, false, true, true];
    assert!(m.first_keys(&cache).unwrap().is_none());
    let err = m
        .decode_tables(&cache, 2)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("left-padded"), "{err}");
}

#[test]
fn a_pass_beyond_the_cache_capacity_is_an_error() {
    let m = tiny_model();
    let mut cache = m.new_cache(1, 3).unwrap();
    let err = m
        .step(
            &[vec![1, 2, 3, 4]],
            &[vec![true; 4]],
            &mut cache,
            &[0],
            false,
        )
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("too small for 0 + 4"), "{err}");
}

#[test]
fn the_cache_holds_each_pass_at_its_offset() {
    // Prefill 3 tokens, then one more pass of 1: the buffers hold 4 written positions and
    // zeros after them, and the second pass's activations equal a single 4-token prefill's
    // (the KV cache is read back correctly at the offset).
    let m = tiny_model();
    let tokens = vec![5u32, 9, 17, 33];
    let mut cache = m.new_cache(1, 6).unwrap();
    m.step(
        &[tokens[..3].to_vec()],
        &[vec![true; 3]],
        &mut cache,
        &[1],
        false,
    )
    .unwrap();
    let second = m
        .step(&[vec![tokens[3]]], &[vec![true]], &mut cache, &[1], false)
        .unwrap();
    assert_eq!(cache.len, 4);
    let tail = cache.k[0]
        .narrow(2, 4, 2)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(tail.to_scalar::<f32>().unwrap(), 0.0);
    let mut whole = m.new_cache(1, 4).unwrap();
    let once = m
        .step(&[tokens.clone()], &[vec![true; 4]], &mut whole, &[1], false)
        .unwrap();
    let (a, b) = (&second.last_hidden[0][0], &once.last_hidden[0][0]);
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 1e-2, "activations too small to compare: {scale}");
    assert!(
        diff < 1e-5 * scale.max(1.0),
        "cached pass differs by {diff} (scale {scale})"
    );
    // And the pass did attend to the cached keys: without them the state differs.
    let mut fresh = m.new_cache(1, 1).unwrap();
    let alone = m
        .step(&[vec![tokens[3]]], &[vec![true]], &mut fresh, &[1], false)
        .unwrap();
    let apart = alone.last_hidden[0][0]
        .iter()
        .zip(b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(apart > 100.0 * diff.max(1e-7), "{apart} vs {diff}");
}

/// What a prefill leaves, and three decoding steps after it: the outputs, each row's key flags
/// and next position, the cache length, and per step the captured states and next tokens.
type PrefillAndDecode = (
    StepOutput,
    Vec<Vec<bool>>,
    Vec<usize>,
    usize,
    Vec<Vec<Vec<f32>>>,
);

/// `prompts` left-padded to the longest (pad id 0, marked invalid), as a batch is prefilled.
fn left_padded(prompts: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let maxlen = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    prompts
        .iter()
        .map(|p| {
            let pad = maxlen - p.len();
            (
                [vec![0u32; pad], p.clone()].concat(),
                [vec![false; pad], vec![true; p.len()]].concat(),
            )
        })
        .unzip()
}

/// Left-pads `prompts`, prefills them with `prefill` (one pass, or in chunks) into a cache with
/// room for three more positions and decodes three steps capturing block 1.
fn prefill_then_decode(
    m: &Model,
    prompts: &[Vec<u32>],
    prefill: impl Fn(&[Vec<u32>], &[Vec<bool>], &mut KvCache) -> StepOutput,
) -> (PrefillAndDecode, KvCache) {
    let b = prompts.len();
    let (tokens, valid) = left_padded(prompts);
    let maxlen = tokens[0].len();
    let mut cache = m.new_cache(b, maxlen + 3).unwrap();
    let out = prefill(&tokens, &valid, &mut cache);
    let tables = m.decode_tables(&cache, 3).unwrap();
    let mut ids = Tensor::from_vec(out.next_tokens.clone().unwrap(), (b,), &Device::Cpu).unwrap();
    let mut decoded = Vec::new();
    for step in 0..3 {
        let (next, captured) = m
            .decode_step(&ids, step, &tables, &mut cache, &[1], true)
            .unwrap();
        decoded.push(captured[0].to_vec2::<f32>().unwrap());
        ids = next.unwrap();
        decoded.push(vec![ids
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect()]);
    }
    let state = (
        out,
        cache.key_valid.clone(),
        cache.next_pos.clone(),
        cache.len,
        decoded,
    );
    (state, cache)
}

/// Two prefills agree: key flags, positions and length exactly, next tokens exactly, captured
/// and decoded states within 1e-5 of their scale.
fn assert_same_prefill(one: &PrefillAndDecode, other: &PrefillAndDecode) {
    assert_eq!((&one.1, &one.2, one.3), (&other.1, &other.2, other.3));
    assert_eq!(one.0.next_tokens, other.0.next_tokens);
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "differ by {diff} (scale {scale})");
    };
    for (a, b) in one.0.last_hidden.iter().zip(&other.0.last_hidden) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            close(x, y);
        }
    }
    assert_eq!(one.4.len(), other.4.len());
    for (a, b) in one.4.iter().zip(&other.4) {
        for (x, y) in a.iter().zip(b) {
            close(x, y);
        }
    }
}

#[test]
fn a_prefill_in_row_chunks_equals_one_pass_and_decodes_the_same() {
    // Five prompts of 2..7 tokens, left-padded to 7, prefilled in chunks of 2 rows (each chunk
    // at its own longest length, right-aligned in the shared cache) and in one pass: the same
    // captured states, next tokens, key masks and positions, and three decoding steps from
    // either cache give the same tokens and states.
    let m = tiny_model();
    let lens = [2usize, 3, 5, 6, 7];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| (1 + 7 * i + 3 * j) as u32 % 60 + 1)
                .collect()
        })
        .collect();
    let run = |chunk: usize| {
        let (state, cache) = prefill_then_decode(&m, &prompts, |t, v, c| {
            m.prefill_in_row_chunks(t, v, c, &[0, 1], true, chunk)
                .unwrap()
        });
        // The columns left of a chunk's longest prompt were not computed: rows 0 and 1 (2 and
        // 3 tokens) hold nothing in columns 0..4 when chunked; one pass wrote padding there.
        let skipped = cache.k[0]
            .narrow(0, 0, 2)
            .unwrap()
            .narrow(2, 0, 4)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(skipped == 0.0, chunk == 2, "{skipped}");
        state
    };
    let one = run(5);
    assert_eq!(one.0.last_hidden[0].len(), 5);
    assert_same_prefill(&one, &run(2));
}

/// Prompts of 16 rows that share a 20-token prefix (a persona's system prompt) and then differ
/// (questions of 1 to 16 tokens), and one of a row that shares nothing.
fn prompts_sharing_a_prefix() -> Vec<Vec<u32>> {
    let prefix: Vec<u32> = (0..20).map(|j| (5 + 11 * j) % 60 + 1).collect();
    let mut prompts: Vec<Vec<u32>> = (0..16)
        .map(|i| {
            let question = (0..1 + i).map(|j| ((3 * i + 7 * j) % 60 + 1) as u32);
            prefix.iter().copied().chain(question).collect()
        })
        .collect();
    prompts.push((0..9).map(|j| (2 + 5 * j) % 60 + 1).collect());
    prompts
}

#[test]
fn chunks_are_cut_where_a_shared_prefix_starts_or_ends() {
    let plan_with = |prompts: &[Vec<u32>], rows: usize, share: bool| {
        let (t, v) = left_padded(prompts);
        plan_prefill_chunks(&t, &v, rows, share)
    };
    let plan = |prompts: &[Vec<u32>], rows: usize| plan_with(prompts, rows, true);
    let chunk = |r0, n, shared| PrefillChunk { r0, n, shared };
    let sharing = prompts_sharing_a_prefix();
    // 16 rows share 20 tokens (15 x 20 = 300 positions skipped); the last row shares nothing.
    assert_eq!(plan(&sharing, 64), vec![chunk(0, 16, 20), chunk(16, 1, 0)]);
    // Sharing off (`PG_SHARED_PREFIX=0`): consecutive chunks of the chunk size, nothing shared.
    assert_eq!(plan_with(&sharing, 64, false), vec![chunk(0, 17, 0)]);
    assert_eq!(
        plan_with(&sharing, 8, false),
        vec![chunk(0, 8, 0), chunk(8, 8, 0), chunk(16, 1, 0)]
    );
    // Cut at 8 rows: 7 x 20 = 140 positions are not worth a one-row pass.
    assert_eq!(
        plan(&sharing, 8),
        vec![chunk(0, 8, 0), chunk(8, 8, 0), chunk(16, 1, 0)]
    );
    // The prefix stops short of the shortest row's last token: row 0 (prefix + 1 token) and a
    // copy of the prefix alone (20 tokens: shares 19 with everyone, its last token is its own).
    let mut with_bare = sharing[..16].to_vec();
    with_bare.insert(0, sharing[0][..20].to_vec());
    assert_eq!(plan(&with_bare, 64), vec![chunk(0, 17, 19)]);
    // Rows that share nothing stay together, up to the chunk size; a run between them is its
    // own group.
    let loners: Vec<Vec<u32>> = (0..5)
        .map(|i| (0..30).map(|j| (i * 13 + j * 3) % 60 + 1).collect())
        .collect();
    let mixed: Vec<Vec<u32>> = loners[..3]
        .iter()
        .chain(&sharing[..16])
        .chain(&loners[3..])
        .cloned()
        .collect();
    assert_eq!(
        plan(&mixed, 2),
        vec![
            chunk(0, 2, 0),
            chunk(2, 1, 0),
            chunk(3, 2, 0),
            chunk(5, 2, 0),
            chunk(7, 2, 0),
            chunk(9, 2, 0),
            chunk(11, 2, 0),
            chunk(13, 2, 0),
            chunk(15, 2, 0),
            chunk(17, 2, 0),
            chunk(19, 2, 0),
        ]
    );
    assert_eq!(
        plan(&mixed, 64),
        vec![chunk(0, 3, 0), chunk(3, 16, 20), chunk(19, 2, 0)]
    );
}

#[test]
fn a_shared_prefix_computed_once_equals_one_pass_and_decodes_the_same() {
    // 16 prompts sharing 20 tokens then 1..16 tokens of their own, and one sharing nothing:
    // the prefix runs once and is copied into each row's columns (right-aligned: a different
    // column per row; rows whose question is short get some of the prefix's last tokens
    // recomputed with their own), then only the columns after it are computed. The same states,
    // tokens, key flags and positions as one pass over whole prompts, and the same decoding.
    let m = tiny_model();
    let prompts = prompts_sharing_a_prefix();
    let (one, _) = prefill_then_decode(&m, &prompts, |t, v, c| {
        // The shared path is what the chunked prefill below takes for these rows.
        assert_eq!(
            plan_prefill_chunks(t, v, 64, true)[0],
            PrefillChunk {
                r0: 0,
                n: 16,
                shared: 20
            }
        );
        m.step(t, v, c, &[0, 1], true).unwrap()
    });
    let (shared, cache) = prefill_then_decode(&m, &prompts, |t, v, c| {
        m.prefill_in_row_chunks(t, v, c, &[0, 1], true, 64).unwrap()
    });
    assert_eq!(one.0.last_hidden[0].len(), 17);
    assert_same_prefill(&one, &shared);
    // The copy is what a pass writes: row 15 (the longest question) holds the prefix's keys in
    // the 20 columns before its question, block 1 included.
    let k = |c: &KvCache, row: usize| {
        c.k[1]
            .narrow(0, row, 1)
            .unwrap()
            .narrow(2, 0, 20)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut alone = m.new_cache(1, 20).unwrap();
    m.step(
        &[prompts[15][..20].to_vec()],
        &[vec![true; 20]],
        &mut alone,
        &[],
        false,
    )
    .unwrap();
    let diff = k(&cache, 15)
        .iter()
        .zip(k(&alone, 0))
        .fold(0f32, |d, (x, y)| d.max((x - y).abs()));
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn the_next_blocks_norm_computed_with_the_residual_update_reads_the_steered_stream() {
    // A block's last residual update also computes the next block's input norm (one kernel on
    // the GPU); a steering vector is added between the two, so at the steered block the norm
    // must wait for it. Carried or not, every block's output is the same bits; a norm taken
    // before the vector would change blocks 1 and 2.
    let mut m = tiny_model_of_depth(3);
    let tokens: Vec<u32> = (0..7).map(|i| (i * 5 + 3) % 64).collect();
    let vector: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) * 0.3).collect();
    let layers = [0, 1, 2];
    let plain = m.all_positions(&tokens, &layers).unwrap();
    m.set_steering(Some(Steering { layer: 0, vector })).unwrap();
    let carried = m.all_positions(&tokens, &layers).unwrap();
    m.norm_into_next_block = false;
    let per_block = m.all_positions(&tokens, &layers).unwrap();
    assert_eq!(carried, per_block);
    // The steering moves every later block, so the comparison above is not vacuous.
    for l in layers {
        assert_ne!(plain[l], per_block[l], "block {l}");
    }
    m.set_steering(None).unwrap();
    assert_eq!(m.all_positions(&tokens, &layers).unwrap(), plain);
}
