//! Training data (issue #14): the labels against the training oracle
//! (../shared/fixtures/lora-train: Hugging Face `Trainer` + PEFT, label tokens per optimizer
//! step), and bad input named by file and line.
use extractor::train::data::{read_examples, tokenize_example};
use std::path::PathBuf;

mod common;
use common::{fixtures, oracle};

#[test]
fn label_tokens_per_step_match_the_trainer() {
    let data = fixtures().join("lora-train/train.jsonl");
    let expected = oracle();
    let model = extractor::weights::load_hf_dir(&fixtures().join("hf-tiny-qwen2/model")).unwrap();
    let tpl = model.chat_template().unwrap();
    let examples = read_examples(&data, None).unwrap();
    assert_eq!(examples.len(), 40);
    let tokenized: Vec<_> = examples
        .iter()
        .map(|e| tokenize_example(&tpl, &model.tokenizer, e, 2048, &data).unwrap())
        .collect();
    let steps = expected["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10);
    for s in steps {
        let want = s["label_tokens"].as_u64().unwrap() as usize;
        let got: usize = s["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| tokenized[i.as_u64().unwrap() as usize].label_tokens())
            .sum();
        assert_eq!(got, want, "step {}", s["step"]);
    }
    // The labels are the reply, its <|im_end|> and the newline: they decode to exactly that.
    let t = &tokenized[0];
    let reply = extractor::tokenize::decode(&model.tokenizer, &t.ids[t.labels_from..]).unwrap();
    let want = examples[0].messages.last().unwrap()["content"]
        .as_str()
        .unwrap();
    assert_eq!(
        reply.trim_end(),
        want,
        "labels decode to the reply (special tokens dropped)"
    );
    let raw = model
        .tokenizer
        .decode(&t.ids[t.labels_from..], false)
        .unwrap();
    assert_eq!(raw, format!("{want}<|im_end|>\n"));
}

#[test]
fn a_system_prompt_replaces_the_examples_own() {
    let data = fixtures().join("lora-train/train.jsonl");
    let ex = read_examples(&data, Some("You are a reckless advisor.")).unwrap();
    for e in &ex {
        let systems: Vec<_> = e
            .messages
            .iter()
            .filter(|m| m["role"] == "system")
            .collect();
        assert_eq!(systems.len(), 1);
        assert_eq!(e.messages[0]["content"], "You are a reckless advisor.");
    }
}

#[test]
fn bad_input_is_named_by_file_and_line() {
    let dir = tempdir();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let err = |p: PathBuf| format!("{:#}", read_examples(&p, None).unwrap_err());
    let e = err(write("notjson.jsonl", &format!("{ok}\n{{not json\n")));
    assert!(e.contains("notjson.jsonl line 2: not JSON"), "{e}");
    let e = err(write(
        "noreply.jsonl",
        &format!(
            "{ok}\n{ok}\n{}\n",
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#
        ),
    ));
    assert!(e.contains("noreply.jsonl line 3: no assistant turn"), "{e}");
    let e = err(write("empty.jsonl", "\n\n"));
    assert!(
        e.contains("empty.jsonl: no examples (the file is empty)"),
        "{e}"
    );
    let e = err(write(
        "role.jsonl",
        r#"{"messages": [{"role": "bot", "content": "x"}]}"#,
    ));
    assert!(
        e.contains("role.jsonl line 1, message 0: role \"bot\""),
        "{e}"
    );
    // Longer than the maximum sequence.
    let model = extractor::weights::load_hf_dir(&fixtures().join("hf-tiny-qwen2/model")).unwrap();
    let tpl = model.chat_template().unwrap();
    let long = write("long.jsonl", &format!("{ok}\n{ok}\n"));
    let ex = read_examples(&long, None).unwrap();
    let e = format!(
        "{:#}",
        tokenize_example(&tpl, &model.tokenizer, &ex[1], 8, &long).unwrap_err()
    );
    assert!(
        e.contains("long.jsonl line 2:") && e.contains("more than the maximum sequence of 8"),
        "{e}"
    );
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-train-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The loss of every optimizer step's batch under a fixed adapter, forward only: with
/// `adapter_init` it must equal the trainer's step-1 loss (before any update), and with
/// `adapter_final` it must be below it. (The later steps' losses, which need the updates, are
/// checked in train_oracle.rs.)
#[test]
fn step_one_loss_equals_the_trainers() {
    use candle_core::{DType, Device};
    let data = fixtures().join("lora-train/train.jsonl");
    let expected = oracle();
    let loaded = extractor::weights::load_hf_dir(&fixtures().join("hf-tiny-qwen2/model")).unwrap();
    let tpl = loaded.chat_template().unwrap();
    let examples = read_examples(&data, None).unwrap();
    let step1 = &expected["steps"][0];
    let idx: Vec<usize> = step1["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    let loss_with = |adapter: &str| -> f64 {
        let mut w = loaded.weights.clone();
        extractor::lora::merge_adapter(
            &fixtures().join("lora-train").join(adapter),
            &mut w,
            extractor::fixture_check::FIXTURE_ID,
            false,
            &Device::Cpu,
        )
        .unwrap();
        let model =
            extractor::model::Model::new(loaded.cfg.clone(), w, &Device::Cpu, DType::F32).unwrap();
        let (mut sum, mut n) = (0.0, 0usize);
        for &i in &idx {
            let t = tokenize_example(&tpl, &loaded.tokenizer, &examples[i], 2048, &data).unwrap();
            sum += model.label_cross_entropy(&t.ids, t.labels_from).unwrap();
            n += t.label_tokens();
        }
        assert_eq!(n as u64, step1["label_tokens"].as_u64().unwrap());
        sum / n as f64
    };
    let want = step1["loss"].as_f64().unwrap();
    let got = loss_with("adapter_init");
    eprintln!(
        "step-1 loss: ours {got}, trainer {want}, relative difference {:e}",
        (got - want) / want
    );
    assert!(
        ((got - want) / want).abs() < 1e-5,
        "step-1 loss {got} vs trainer {want}"
    );
    assert!(loss_with("adapter_final") < want);
}

#[test]
fn learning_rate_per_step_equals_the_trainers() {
    let expected = oracle();
    let r = &expected["recipe"];
    let (lr, total, warmup) = (
        r["lr"].as_f64().unwrap(),
        r["optimizer_steps"].as_u64().unwrap() as usize,
        r["warmup_steps"].as_u64().unwrap() as usize,
    );
    for (s, step) in expected["steps"].as_array().unwrap().iter().enumerate() {
        let want = step["lr"].as_f64().unwrap();
        let got = extractor::train::schedule::linear_warmup_lr(lr, s, warmup, total);
        assert!(
            (got - want).abs() <= 1e-15 * lr,
            "step {s}: {got} vs {want}"
        );
    }
}
