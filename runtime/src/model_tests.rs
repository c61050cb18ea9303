//! Tests of `model`: the KV cache, padding, passes at offsets.

use super::*;

fn tiny_model() -> Model {
    let cfg = Config {
        arch: Arch::Qwen2,
        hidden_size: 16,
        intermediate_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        vocab_size: 64,
        rms_eps: 1e-6,
        rope_theta: 1e4,
        rope_llama3: None,
        tie_embeddings: false,
        attention_bias: true,
        family: crate::config::Family::plain(2, 1e4, 4),
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
    let maxlen = 7;
    let tokens: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| [vec![0u32; maxlen - p.len()], p.clone()].concat())
        .collect();
    let valid: Vec<Vec<bool>> = prompts
        .iter()
        .map(|p| [vec![false; maxlen - p.len()], vec![true; p.len()]].concat())
        .collect();
    let run = |chunk: usize| {
        let mut cache = m.new_cache(5, maxlen + 3).unwrap();
        let out = m
            .prefill_in_row_chunks(&tokens, &valid, &mut cache, &[0, 1], true, chunk)
            .unwrap();
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
        let tables = m.decode_tables(&cache, 3).unwrap();
        let mut ids =
            Tensor::from_vec(out.next_tokens.clone().unwrap(), (5,), &Device::Cpu).unwrap();
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
        (
            out,
            cache.key_valid.clone(),
            cache.next_pos.clone(),
            cache.len,
            decoded,
        )
    };
    let (one, kv1, pos1, len1, dec1) = run(5);
    let (chunked, kv2, pos2, len2, dec2) = run(2);
    assert_eq!((kv1, pos1, len1), (kv2, pos2, len2));
    assert_eq!(one.next_tokens, chunked.next_tokens);
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "differ by {diff} (scale {scale})");
    };
    for (a, b) in one.last_hidden.iter().zip(&chunked.last_hidden) {
        assert_eq!(a.len(), 5);
        for (x, y) in a.iter().zip(b) {
            close(x, y);
        }
    }
    for (a, b) in dec1.iter().zip(&dec2) {
        for (x, y) in a.iter().zip(b) {
            close(x, y);
        }
    }
}
