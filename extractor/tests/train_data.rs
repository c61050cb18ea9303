//! Training data (issue #14): the labels against the training oracle
//! (../shared/fixtures/lora-train: Hugging Face `Trainer` + PEFT, label tokens per optimizer
//! step), and bad input named by file and line.
use extractor::train_data::{read_examples, tokenize_example};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

#[test]
fn label_tokens_per_step_match_the_trainer() {
    let data = fixtures().join("lora-train/train.jsonl");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lora-train/expected.json")).unwrap(),
    )
    .unwrap();
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
    let want = examples[0].messages.last().unwrap()["content"].as_str().unwrap();
    assert_eq!(reply.trim_end(), want, "labels decode to the reply (special tokens dropped)");
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
        let systems: Vec<_> = e.messages.iter().filter(|m| m["role"] == "system").collect();
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
        &format!("{ok}\n{ok}\n{}\n", r#"{"messages": [{"role": "user", "content": "hi"}]}"#),
    ));
    assert!(e.contains("noreply.jsonl line 3: no assistant turn"), "{e}");
    let e = err(write("empty.jsonl", "\n\n"));
    assert!(e.contains("empty.jsonl: no examples (the file is empty)"), "{e}");
    let e = err(write("role.jsonl", r#"{"messages": [{"role": "bot", "content": "x"}]}"#));
    assert!(e.contains("role.jsonl line 1, message 0: role \"bot\""), "{e}");
    // Longer than the maximum sequence.
    let model = extractor::weights::load_hf_dir(&fixtures().join("hf-tiny-qwen2/model")).unwrap();
    let tpl = model.chat_template().unwrap();
    let long = write("long.jsonl", &format!("{ok}\n{ok}\n"));
    let ex = read_examples(&long, None).unwrap();
    let e = format!("{:#}", tokenize_example(&tpl, &model.tokenizer, &ex[1], 8, &long).unwrap_err());
    assert!(e.contains("long.jsonl line 2:") && e.contains("more than the maximum sequence of 8"), "{e}");
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-train-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
