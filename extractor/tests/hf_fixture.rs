//! The Hugging Face oracle: ../shared/fixtures/hf-tiny-qwen2 (transformers 5.17 + PEFT 0.21,
//! f32 on CPU). Prompts and ids must match exactly, greedy generations exactly, activations
//! within 1e-4 absolute, for the base model and both adapters (all 20 prompts, 28-411 tokens, in
//! one left-padded batch); batched equals one-at-a-time; the wrong-base adapter is refused.
//! PG_TEST_DEVICE=cuda runs them on a GPU (the CUDA build; `verify-fixture` does the same).

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::fixture_check::{bf16_vs_f32_worst_cosine, check_variant, FIXTURE_ID};
use extractor::lora::merge_adapter;
use extractor::weights::load_hf_dir;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    std::env::var_os("PG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/hf-tiny-qwen2")
        })
}

fn device() -> Device {
    match std::env::var("PG_TEST_DEVICE").as_deref() {
        Ok(d) if d.starts_with("cuda") => {
            extractor::study::device_from(Some(d)).expect("CUDA device")
        }
        _ => Device::Cpu,
    }
}

fn check(variant: &str, adapter: Option<&str>) {
    let r = check_variant(&fixture(), variant, adapter, &device(), DType::F32).unwrap();
    eprintln!("{variant}: {r:?}");
    assert!(r.mismatches.is_empty(), "{variant}: {:?}", r.mismatches);
    assert!(
        r.max_abs_method_a < 1e-4 && r.max_abs_method_b < 1e-4 && r.max_abs_templated < 1e-4,
        "{variant}: {r:?}"
    );
}

#[test]
fn base_matches_transformers() {
    check("base", None);
}

/// How `run_batch` cuts these prompts' prefill (left-padded as it pads them).
fn prefill_plan(prompts: &[Vec<u32>]) -> Vec<runtime::model::prefill_chunks::PrefillChunk> {
    let maxlen = prompts.iter().map(|p| p.len()).max().unwrap();
    let (tokens, valid) = extractor::extract::left_pad(prompts, maxlen);
    runtime::model::prefill_chunks::plan_prefill_chunks(
        &tokens,
        &valid,
        extractor::extract::PREFILL_ROWS,
        true,
    )
}

/// The fixture's batch (20 prompts in expected.json's order) computes the confab persona's
/// 383-token prefix once for its 4 rows: the comparisons with transformers above (and
/// `verify-fixture` on the GPU, every family) check that path against HF's activations.
#[test]
fn the_fixture_batch_computes_the_confab_prompt_once() {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let prompts: Vec<Vec<u32>> = exp["variants"]["base"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let shared: Vec<_> = prefill_plan(&prompts)
        .iter()
        .map(|c| (c.r0, c.n, c.shared))
        .collect();
    assert_eq!(shared, vec![(0, 8, 0), (8, 4, 383), (12, 8, 0)]);
}

#[test]
fn lora_r4_matches_peft() {
    check("lora_r4", Some("lora_r4"));
}

#[test]
fn lora_rslora_with_patterns_matches_peft() {
    check("lora_rslora", Some("lora_rslora"));
}

#[test]
fn batched_equals_one_at_a_time() {
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let model = loaded.model(&device(), DType::F32).unwrap();
    let template = loaded.chat_template().unwrap();
    let layers = [3usize];
    let ex = Extractor::of(&model, &loaded, &template, &layers);
    let personas =
        extractor::study::parse_personas(extractor::study::DEFAULT_PERSONAS, "personas").unwrap();
    let prompts: Vec<Vec<u32>> = personas
        .iter()
        .map(|p| {
            ex.prompt_ids(&p.system_prompt, "Why do people travel?")
                .unwrap()
        })
        .collect();
    let batched = ex.run_batch(&prompts, 12, true).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let single = ex
            .run_batch(std::slice::from_ref(p), 12, true)
            .unwrap()
            .remove(0);
        assert_eq!(single.generated, b.generated);
        let d = single.method_a[0]
            .iter()
            .zip(&b.method_a[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "batched vs single method A differ by {d}");
    }
}

/// A batch larger than `PREFILL_ROWS` is prefilled in chunks of rows, each only as long as its
/// longest prompt, then decoded together: every row as if run alone (greedy tokens exactly,
/// Method A and B within 1e-4), the chunk boundary included. Sorted by length, only the
/// confab persona's 6 rows (its ~400-token system prompt) share a prefix worth computing once.
#[test]
fn a_batch_of_several_prefill_chunks_equals_one_at_a_time() {
    several_prefill_chunks_equal_one_at_a_time(&QUESTIONS[..6], false);
}

/// The same with 16 questions and the prompts sorted by persona (as a study runs them): the
/// chunks whose rows share a persona's prompt compute it once and copy it into each row's
/// cache columns (at a different column per row: they are right-aligned).
#[test]
fn a_persona_prompt_computed_once_equals_each_prompt_alone() {
    several_prefill_chunks_equal_one_at_a_time(&QUESTIONS, true);
}

const QUESTIONS: [&str; 16] = [
    "Why?",
    "Why do people travel?",
    "What would you do with a free afternoon in a city you have never visited before?",
    "Name a colour.",
    "How should a small team decide what to build next, and who should decide it?",
    "Is it ever right to lie?",
    "What is a good breakfast?",
    "Tell me about the sea.",
    "Should I learn the piano or the violin, and why would you pick one over the other?",
    "What makes a friendship last?",
    "Explain rain to a child.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "How do you say thank you in three languages?",
    "What is the best way to apologise?",
    "Describe your ideal weekend.",
    "Is mathematics invented or discovered?",
];

fn several_prefill_chunks_equal_one_at_a_time(questions: &[&str], by_persona: bool) {
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let model = loaded.model(&device(), DType::F32).unwrap();
    let template = loaded.chat_template().unwrap();
    let layers = [1usize, 3];
    let ex = Extractor::of(&model, &loaded, &template, &layers);
    let personas =
        extractor::study::parse_personas(extractor::study::DEFAULT_PERSONAS, "personas").unwrap();
    let mut prompts: Vec<(usize, Vec<u32>)> = Vec::new();
    for (pi, p) in personas.iter().enumerate() {
        for q in questions.iter().copied() {
            prompts.push((pi, ex.prompt_ids(&p.system_prompt, q).unwrap()));
        }
    }
    prompts.sort_by_key(|(pi, p)| (if by_persona { *pi } else { 0 }, p.len()));
    let prompts: Vec<Vec<u32>> = prompts.into_iter().map(|(_, p)| p).collect();
    let n = prompts.len();
    let plan = prefill_plan(&prompts);
    let shared: Vec<_> = plan.iter().filter(|c| c.shared > 0).collect();
    if by_persona {
        // 12 personas x 16 rows: all but the shortest persona prompts are shared (15 rows x
        // 16+ tokens), confab's ~400 tokens among them.
        assert!(shared.len() >= 9, "{plan:?}");
        assert_eq!(plan.len(), 12, "one chunk per persona: {plan:?}");
    } else {
        assert_eq!(shared.len(), 1, "{plan:?}");
    }
    assert!(shared.iter().any(|c| c.shared > 300), "{shared:?}");
    eprintln!("prefill chunks: {plan:?}");
    assert!(
        n > extractor::extract::PREFILL_ROWS,
        "{n} prompts fit in one chunk"
    );
    let (first, last) = (prompts[0].len(), prompts[n - 1].len());
    assert!(
        last > first + 10,
        "lengths {first}..{last} too alike to test the cut"
    );
    let batched = ex.run_batch(&prompts, 6, true).unwrap();
    let rows = extractor::extract::PREFILL_ROWS;
    let mut checked = 0;
    // In each shared chunk its first and last rows (the shortest and longest questions: the
    // copy's extreme columns) and one in the middle.
    let shared_rows: Vec<usize> = shared
        .iter()
        .flat_map(|c| [c.r0, c.r0 + c.n / 2, c.r0 + c.n - 1])
        .collect();
    for i in (0..n).filter(|i| {
        i % 9 == 0 || *i == rows - 1 || *i == rows || *i == n - 1 || shared_rows.contains(i)
    }) {
        let single = ex
            .run_batch(std::slice::from_ref(&prompts[i]), 6, true)
            .unwrap()
            .remove(0);
        let b = &batched[i];
        assert_eq!(single.generated, b.generated, "prompt {i}");
        for l in 0..layers.len() {
            let diff = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(a, c)| (a - c).abs())
                    .fold(0f32, f32::max)
            };
            let da = diff(&single.method_a[l], &b.method_a[l]);
            let db = diff(
                &single.method_b.as_ref().unwrap()[l],
                &b.method_b.as_ref().unwrap()[l],
            );
            assert!(
                da < 1e-4 && db < 1e-4,
                "prompt {i}, layer {l}: A {da}, B {db}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10);
}

/// bf16 compute agrees with f32 per vector (Method A, every layer, all 20 prompts). This tiny
/// model has random weights of std 0.2 and is chaotic (errors grow from block to block), so its
/// bound is 0.997; the real-model bound (0.999) is checked on SmolLM2 in smollm2_smoke.rs.
#[test]
fn bf16_agrees_with_f32() {
    let worst = bf16_vs_f32_worst_cosine(&fixture(), &device()).unwrap();
    eprintln!(
        "bf16 vs f32 on {:?}: worst per-vector cosine {worst:.6}",
        device()
    );
    assert!(worst > 0.997, "bf16 vs f32 cosine {worst}");
}

#[test]
fn adapter_for_another_base_is_refused_unless_overridden() {
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let mut w = loaded.weights.clone();
    let err = merge_adapter(
        &fixture().join("adapters/lora_wrong_base"),
        &mut w,
        FIXTURE_ID,
        false,
        &Device::Cpu,
    )
    .err()
    .expect("must be refused")
    .to_string();
    assert!(
        err.contains("base_model_name_or_path") && err.contains("allow_base_mismatch"),
        "{err}"
    );
    let rep = merge_adapter(
        &fixture().join("adapters/lora_wrong_base"),
        &mut w,
        FIXTURE_ID,
        true,
        &Device::Cpu,
    )
    .unwrap();
    assert!(rep
        .provenance
        .iter()
        .any(|(k, v)| k == "adapter.base_check" && v.starts_with("OVERRIDDEN")));
}
