//! Loading and refusal paths that the HF fixture test does not reach: the Hugging Face cache by
//! repo id, transformers 4.x config layouts, and every adapter feature the merge cannot honour.

use extractor::lora::merge_adapter;
use extractor::model::Config;
use extractor::weights::{load_hf_dir, resolve_model_path};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    std::env::var_os("PG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/hf-tiny-qwen2")
        })
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn hf_cache_is_resolved_by_repo_id_and_a_missing_model_says_how_to_fix_it() {
    let hub = tmp("hub");
    let repo = hub.join("models--persona-fixture--tiny-qwen2");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
    std::os::unix::fs::symlink(fixture().join("model"), repo.join("snapshots/abc123")).unwrap();
    // Each test process has its own environment; this test owns HF_HUB_CACHE.
    std::env::set_var("HF_HUB_CACHE", &hub);
    let p = resolve_model_path("persona-fixture/tiny-qwen2", None, None).unwrap();
    assert_eq!(p, repo.join("snapshots/abc123"));
    let m = load_hf_dir(&p).unwrap();
    assert_eq!(m.cfg.num_layers, 4);
    let err = resolve_model_path("Qwen/Qwen2.5-7B-Instruct", None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not in the Hugging Face cache")
            && err.contains("huggingface-cli download")
            && err.contains("`path`"),
        "{err}"
    );
    let err = resolve_model_path("persona-fixture/tiny-qwen2", None, Some("deadbeef"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("revision `deadbeef`"), "{err}");
}

#[test]
fn transformers_4_config_layout_is_read() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "rope_scaling": null, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    let c = Config::from_hf_json(&v, "config.json").unwrap();
    assert_eq!(
        (
            c.head_dim,
            c.num_kv_heads,
            c.rope_theta,
            c.tie_embeddings,
            c.attention_bias
        ),
        (64, 3, 100000.0, true, false)
    );
    let v3: serde_json::Value = serde_json::from_str(
        r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}"#,
    )
    .unwrap();
    assert_eq!(
        Config::from_hf_json(&v3, "config.json")
            .unwrap()
            .rope_llama3,
        Some((8.0, 1.0, 4.0, 8192.0))
    );
    let bad: serde_json::Value =
        serde_json::from_str(r#"{"model_type": "gpt2", "hidden_size": 8}"#).unwrap();
    assert!(Config::from_hf_json(&bad, "config.json")
        .unwrap_err()
        .to_string()
        .contains("model_type `gpt2` is not supported"));
}

/// A copy of the r4 adapter with one field of adapter_config.json changed.
fn adapter_with(name: &str, key: &str, value: serde_json::Value) -> PathBuf {
    let d = tmp(name);
    let src = fixture().join("adapters/lora_r4");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg[key] = value;
    std::fs::write(
        d.join("adapter_config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        d.join("adapter_model.safetensors"),
    )
    .unwrap();
    d
}

fn refusal(dir: &Path) -> String {
    let m = load_hf_dir(&fixture().join("model")).unwrap();
    let mut w = m.weights.clone();
    merge_adapter(
        dir,
        &mut w,
        "persona-fixture/tiny-qwen2",
        false,
        &candle_core::Device::Cpu,
    )
    .err()
    .expect("must be refused")
    .to_string()
}

#[test]
fn unsupported_adapters_are_refused_with_the_reason() {
    use serde_json::json;
    for (key, value, needle) in [
        ("use_dora", json!(true), "DoRA"),
        ("fan_in_fan_out", json!(true), "fan_in_fan_out"),
        ("bias", json!("all"), "biases"),
        ("modules_to_save", json!(["lm_head"]), "modules_to_save"),
        ("layers_to_transform", json!([0, 1]), "layers_to_transform"),
        ("peft_type", json!("IA3"), "LORA only"),
        ("r", json!(8), "do not fit"),
    ] {
        let err = refusal(&adapter_with(key, key, value));
        assert!(err.contains(needle), "{key}: {err}");
    }
    let d = adapter_with("nofile", "r", json!(4));
    std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
    assert!(refusal(&d).contains("adapter_model.safetensors not found"));
}
