//! `persona-geometry train` end to end on the training oracle (../shared/fixtures/lora-train):
//! the written PEFT adapter equals the Trainer's final adapter, `extract`'s merge loads it (and
//! the merged model's loss equals the adapted one's), a run killed with SIGKILL and resumed
//! gives the same bytes as one that never stopped, and bad input is refused by name.
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_persona-geometry"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-train-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The oracle's recipe as a TRAIN.toml writing to `out`.
fn oracle_toml(dir: &Path, out: &str, checkpoint_every: usize) -> PathBuf {
    let f = fixtures();
    let text = format!(
        r#"data = "{data}"
output = "{out}"
init_adapter = "{init}"
checkpoint_every = {checkpoint_every}
[model]
id = "persona-fixture/tiny-qwen2"
path = "{model}"
[recipe]
r = 4
lora_alpha = 8
lora_dropout = 0.0
learning_rate = 2e-3
warmup_steps = 1
max_grad_norm = 0.5
micro_batch = 2
grad_accum = 4
epochs = 2
shuffle = false
"#,
        data = f.join("lora-train/train.jsonl").display(),
        init = f.join("lora-train/adapter_init").display(),
        model = f.join("hf-tiny-qwen2/model").display(),
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "command failed: {err}");
    err
}

fn run_err(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(!o.status.success(), "command should have failed");
    String::from_utf8_lossy(&o.stderr).to_string()
}

const OUTPUTS: [&str; 6] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "training.json",
    "loss.csv",
    "loss.svg",
    "loss.png",
];

#[test]
fn trains_the_oracle_adapter_and_extract_merges_it() {
    let dir = tempdir("oracle");
    let toml = oracle_toml(&dir, "out", 0);
    run_ok(bin().arg("train").arg(&toml));
    let out = dir.join("out");
    for f in OUTPUTS {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(!out.join("checkpoint").exists());
    // The adapter equals the Trainer's, tensor by tensor, within 1e-5 of each tensor's scale.
    let got = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let want = candle_core::safetensors::load(
        fixtures().join("lora-train/adapter_final/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let g = got.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let max_abs = |t: &candle_core::Tensor| -> f32 {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let (d, s) = (max_abs(&(g - w).unwrap()), max_abs(w));
        assert!(d / s < 1e-5, "{name}: {d} of {s}");
    }
    // PEFT's config fields that loaders read.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["base_model_name_or_path"], "persona-fixture/tiny-qwen2");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    // Per-step records equal the oracle's; the provenance names data, recipe and adapter.
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lora-train/expected.json")).unwrap(),
    )
    .unwrap();
    for (got, want) in prov["steps"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["steps"].as_array().unwrap())
    {
        let rel = |k: &str| {
            (got[k].as_f64().unwrap() - want[k].as_f64().unwrap()).abs()
                / want[k].as_f64().unwrap().abs().max(1e-12)
        };
        assert!(rel("loss") < 1e-5 && rel("grad_norm_before_clip") < 1e-5);
        assert_eq!(got["lr"].as_f64(), want["lr"].as_f64());
    }
    assert_eq!(prov["data"]["examples"], 40);
    assert_eq!(prov["resolved"]["optimizer_steps"], 10);
    assert_eq!(prov["tool_version"], shared::TOOL_VERSION);
    assert_eq!(
        prov["data"]["sha256"].as_str().unwrap(),
        extractor::io_util::sha256_file(&fixtures().join("lora-train/train.jsonl")).unwrap()
    );
    assert_eq!(
        prov["adapter_sha256"].as_str().unwrap(),
        extractor::io_util::sha256_file(&out.join("adapter_model.safetensors")).unwrap()
    );
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11);
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.contains("<title>Training loss: train.jsonl</title>") && svg.contains("<polyline"));

    // `extract`'s merge loads it: the merged model's loss on a training example equals the
    // training forward's with the adapter unmerged (W + s·B·A vs W·x + s·B·(A·x)).
    let loaded = extractor::weights::load_hf_dir(&fixtures().join("hf-tiny-qwen2/model")).unwrap();
    let tpl = loaded.chat_template().unwrap();
    let data = fixtures().join("lora-train/train.jsonl");
    let ex = extractor::train::data::read_examples(&data, None).unwrap();
    let t = extractor::train::data::tokenize_example(&tpl, &loaded.tokenizer, &ex[3], 2048, &data)
        .unwrap();
    let mut w = loaded.weights.clone();
    let report = extractor::lora::merge_adapter(
        &out,
        &mut w,
        "persona-fixture/tiny-qwen2",
        false,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(report.merged_modules, 28);
    let merged = cpu_f32_model(&loaded, w);
    let merged_loss = merged.label_cross_entropy(&t.ids, t.labels_from).unwrap();
    let base = cpu_f32_model(&loaded, loaded.weights.clone());
    let lora =
        extractor::train::adapter::TrainableLora::load(&out, &base.cfg, &Device::Cpu, DType::F32)
            .unwrap();
    let mb = extractor::train::forward::MicroBatch::new(&[&t], 151643, 8, &Device::Cpu).unwrap();
    let adapted = extractor::train::forward::TrainForward {
        model: &base,
        lora: &lora,
    }
    .summed_label_loss(&mb, None)
    .unwrap()
    .to_scalar::<f32>()
    .unwrap() as f64;
    assert!(
        ((merged_loss - adapted) / adapted).abs() < 1e-5,
        "merged {merged_loss} vs adapted {adapted}"
    );
}

/// SIGKILL after a checkpoint, `--resume`: every output byte equals an uninterrupted run's.
/// Also: an existing checkpoint without --resume, a changed configuration, a finished
/// directory are refused.
#[test]
fn a_killed_run_resumes_to_the_same_bytes() {
    let dir = tempdir("resume");
    let straight = oracle_toml(&dir, "straight", 0);
    run_ok(bin().arg("train").arg(&straight));
    let killed = oracle_toml(&dir, "killed", 1);
    let mut child = bin()
        .arg("train")
        .arg(&killed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let index = dir.join("killed/checkpoint/state.json");
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&index) {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
            if v["step"].as_u64().unwrap_or(0) >= 3 {
                break;
            }
        }
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !dir.join("killed/training.json").exists(),
        "the run finished before the kill; the test needs a slower step"
    );
    // Without --resume: refused, the checkpoint kept.
    let e = run_err(bin().arg("train").arg(&killed));
    assert!(e.contains("pass --resume"), "{e}");
    // Another recipe against this checkpoint: refused.
    let e = run_err(
        bin()
            .arg("train")
            .arg(&killed)
            .args(["--resume", "--lr", "1e-3"]),
    );
    assert!(e.contains("checkpoint of a different training run"), "{e}");
    let err = run_ok(bin().arg("train").arg(&killed).arg("--resume"));
    assert!(err.contains("resuming after step"), "{err}");
    for f in OUTPUTS {
        let a = std::fs::read(dir.join("straight").join(f)).unwrap();
        let b = std::fs::read(dir.join("killed").join(f)).unwrap();
        assert!(
            a == b,
            "{f} differs between the straight and the resumed run"
        );
    }
    // A finished directory is never overwritten.
    let e = run_err(bin().arg("train").arg(&straight));
    assert!(e.contains("already holds a finished training run"), "{e}");
}

#[test]
fn bad_input_is_refused_with_the_file_and_the_fix() {
    let dir = tempdir("bad");
    let model = fixtures().join("hf-tiny-qwen2/model");
    let ok = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let train = |data: &str, extra: &[&str]| -> String {
        let p = dir.join("data.jsonl");
        std::fs::write(&p, data).unwrap();
        run_err(
            bin()
                .arg("train")
                .args(["--model-id", "persona-fixture/tiny-qwen2", "--model-path"])
                .arg(&model)
                .arg("--data")
                .arg(&p)
                .arg("--out")
                .arg(dir.join("o"))
                .args(extra),
        )
    };
    let e = train(&format!("{ok}\nnot json\n"), &[]);
    assert!(e.contains("data.jsonl line 2: not JSON"), "{e}");
    let e = train(r#"{"messages": [{"role": "user", "content": "hi"}]}"#, &[]);
    assert!(e.contains("data.jsonl line 1: no assistant turn"), "{e}");
    let e = train("", &[]);
    assert!(e.contains("no examples (the file is empty)"), "{e}");
    let e = train(ok, &["--max-seq", "5"]);
    assert!(
        e.contains("data.jsonl line 1:") && e.contains("maximum sequence of 5"),
        "{e}"
    );
    let e = train(ok, &["--lr=-1"]);
    assert!(
        e.contains("recipe.learning_rate must be a finite number >= 0"),
        "{e}"
    );
    // A starting adapter of another shape: the tensor is named.
    let wrong = dir.join("wrong-adapter");
    std::fs::create_dir_all(&wrong).unwrap();
    let init = fixtures().join("lora-train/adapter_init");
    let cfg = std::fs::read_to_string(init.join("adapter_config.json"))
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(wrong.join("adapter_config.json"), cfg).unwrap();
    std::fs::copy(
        init.join("adapter_model.safetensors"),
        wrong.join("adapter_model.safetensors"),
    )
    .unwrap();
    let e = train(ok, &["--init-adapter", wrong.to_str().unwrap()]);
    assert!(
        e.contains("lora_A.weight` has shape [4, 48], the model needs [8, 48]"),
        "{e}"
    );
    // Neither a file nor the required flags.
    let e = run_err(bin().arg("train"));
    assert!(e.contains("--model-id, --data and --out"), "{e}");
}

/// The upstream defaults (dropout 0.05, shuffled, fresh adapter) run and are reproducible:
/// two runs give the same bytes; another seed gives another adapter.
#[test]
fn default_recipe_runs_reproducibly() {
    let dir = tempdir("defaults");
    let model = fixtures().join("hf-tiny-qwen2/model");
    let data = fixtures().join("lora-train/train.jsonl");
    let run = |name: &str, seed: &str| {
        run_ok(
            bin()
                .arg("train")
                .args(["--model-id", "persona-fixture/tiny-qwen2", "--model-path"])
                .arg(&model)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(dir.join(name))
                .args(["--max-steps", "2", "--r", "8", "--seed", seed]),
        );
        std::fs::read(dir.join(name).join("adapter_model.safetensors")).unwrap()
    };
    let a = run("a", "42");
    let b = run("b", "42");
    let c = run("c", "7");
    assert!(a == b, "same seed, different bytes");
    assert!(a != c, "another seed, same adapter");
    let prov: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("a").join("training.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(prov["recipe"]["lora_dropout"], 0.05);
    assert_eq!(prov["recipe"]["shuffle"], true);
    assert_eq!(prov["resolved"]["optimizer_steps"], 2);
    // A fresh adapter starts with B = 0, so step 1's loss is the base model's on that step's
    // (shuffled) examples, whatever the dropout: the forward-only loss of `Model` is the oracle.
    let loaded = extractor::weights::load_hf_dir(&model).unwrap();
    let tpl = loaded.chat_template().unwrap();
    let ex = extractor::train::data::read_examples(&data, None).unwrap();
    let base = cpu_f32_model(&loaded, loaded.weights.clone());
    let step1 = &extractor::train::plan::plan_steps(ex.len(), 4, 4, 1, Some(42))[0];
    let (mut sum, mut n) = (0.0, 0usize);
    for &i in step1.iter().flatten() {
        let t =
            extractor::train::data::tokenize_example(&tpl, &loaded.tokenizer, &ex[i], 2048, &data)
                .unwrap();
        sum += base.label_cross_entropy(&t.ids, t.labels_from).unwrap();
        n += t.label_tokens();
    }
    let got = prov["steps"][0]["loss"].as_f64().unwrap();
    assert!(
        ((got - sum / n as f64) / got).abs() < 1e-5,
        "step-1 loss {got} vs the base model's {}",
        sum / n as f64
    );
    assert_eq!(prov["steps"][0]["label_tokens"], n);
}

/// The model of `loaded` with these weights, on the CPU in f32 (the oracle's precision).
fn cpu_f32_model(
    loaded: &extractor::weights::LoadedModel,
    weights: std::collections::HashMap<String, candle_core::Tensor>,
) -> extractor::model::Model {
    extractor::model::Model::new(loaded.cfg.clone(), weights, &Device::Cpu, DType::F32).unwrap()
}
