//! Extraction throughput on this CPU (a benchmark that prints figures, not a timed test):
//! prefill tokens/s (Method A) and decode tokens/s (Method B's greedy loop with pooling) for the
//! tiny HF fixture and, when `models/SmolLM2-135M-Instruct.Q4_1.gguf` is present
//! (scripts/fetch_smollm2.sh), for SmolLM2-135M-Instruct in f32.

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::weights::load;
use std::path::PathBuf;
use std::time::Instant;

fn bench(name: &str, path: PathBuf, layers: Vec<usize>, batch: usize, new_tokens: usize) {
    let t = Instant::now();
    let loaded = load(&path).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let model = loaded.model(&Device::Cpu, DType::F32).unwrap();
    let template = loaded.chat_template().unwrap();
    let personas = shared_personas();
    let questions =
        extractor::study::parse_questions(extractor::study::DEFAULT_QUESTIONS, "questions")
            .unwrap();
    // No stop ids: every sequence decodes exactly `new_tokens` tokens, so the count is exact.
    let ex = Extractor {
        model: &model,
        tokenizer: &loaded.tokenizer,
        template: &template,
        stop_ids: &[],
        layers: &layers,
    };
    // As in a study unit: one persona, a batch of its questions, sorted by length (little padding).
    let mut prompts: Vec<Vec<u32>> = (0..batch)
        .map(|i| ex.prompt_ids(&personas[0], &questions[i].text).unwrap())
        .collect();
    prompts.sort_by_key(|p| p.len());
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    // Warm-up, then prefill only (Method A).
    ex.run_batch(&prompts[..1], 0, false).unwrap();
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        ex.run_batch(&prompts, 0, false).unwrap();
    }
    let prefill = t.elapsed().as_secs_f64() / reps as f64;
    let t = Instant::now();
    let r = ex.run_batch(&prompts, new_tokens, true).unwrap();
    let total = t.elapsed().as_secs_f64();
    let generated: usize = r.iter().map(|x| x.response.len()).sum();
    let decode = (total - prefill).max(1e-9);
    println!(
        "{name}: load {load_s:.1} s; prefill {prompt_tokens} tokens (batch {batch}) in {prefill:.2} s = {:.0} tok/s; decode {generated} tokens ({new_tokens} steps x {batch}) in {decode:.2} s = {:.0} tok/s",
        prompt_tokens as f64 / prefill,
        generated as f64 / decode
    );
}

fn shared_personas() -> Vec<String> {
    extractor::study::parse_personas(extractor::study::DEFAULT_PERSONAS, "personas")
        .unwrap()
        .into_iter()
        .map(|p| p.system_prompt)
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixture = std::env::var_os("PG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/fixtures/hf-tiny-qwen2"));
    println!(
        "threads: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    bench(
        "tiny HF fixture (4 layers, hidden 48)",
        fixture.join("model"),
        vec![0, 1, 2, 3],
        16,
        32,
    );
    let smol = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smol.exists() {
        bench(
            "SmolLM2-135M-Instruct (f32, 30 layers)",
            smol,
            vec![7, 15, 22, 29],
            16,
            32,
        );
    } else {
        println!("SmolLM2 skipped: run scripts/fetch_smollm2.sh first");
    }
}
