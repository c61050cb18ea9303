//! `bench-workload --full-study` on the CPU with the tiny fixture's shape: it writes a sharded
//! checkpoint and two adapters, runs the real `extract` on base + em + benign, and reports every
//! phase. (On the GPU the same command times Qwen2.5-7B-Instruct's shape: docs/benchmarks.md.)

mod common;
use common::*;
use shared::bundle::{Bundle, Method};

#[test]
fn full_study_writes_a_checkpoint_and_adapters_and_times_the_real_extract() {
    let dir = tmp_dir("full-study");
    let f = fixture().join("model");
    let out = pg()
        .args([
            "bench-workload",
            "--device",
            "cpu",
            "--questions",
            "3",
            "--new-tokens",
            "5",
        ])
        .args(["--layers", "0,2", "--full-study"])
        .arg(&dir)
        .arg("--config")
        .arg(f.join("config.json"))
        .arg("--tokenizer-from")
        .arg(&f)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every phase of the run was timed once or more.
    for phase in [
        "read model weights",
        "hash model files (after reading)",
        "build model on the device",
        "merge adapter",
        "Method A: prefill",
        "Method B: decoding + pooling",
        "write units",
        "assemble and write the bundle",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("phase\t{phase}\t")))
            .unwrap_or_else(|| panic!("no phase `{phase}` in\n{stdout}"));
        let n: usize = line.rsplit('\t').next().unwrap().parse().unwrap();
        // 3 checkpoints (2 adapters); 12 personas x 3 questions decoded as one group (batch
        // "auto" counts as 720 rows: all 12 personas' 36 rows), cut into the CPU's automatic
        // batch of 16 rows: 3 batches per checkpoint; the units of 2 methods each.
        let expected = match phase {
            "build model on the device" => 3,
            "merge adapter" => 2,
            "assemble and write the bundle"
            | "read model weights"
            | "hash model files (after reading)" => 1,
            "Method A: prefill" | "Method B: decoding + pooling" => 9,
            "write units" => 72,
            other => unreachable!("{other}"),
        };
        assert_eq!(n, expected, "{phase}");
    }
    // The bundle: the study's shape, the adapters' hashes in provenance, and merged adapters
    // that change the activations.
    let b = Bundle::decode(&std::fs::read(dir.join("full-study.pgb")).unwrap()).unwrap();
    assert_eq!(b.checkpoints.len(), 3);
    assert_eq!((b.n_personas(), b.n_questions()), (12, 3));
    assert_eq!(b.layers, vec![0, 2]);
    let em = &b.checkpoints[1];
    let sha =
        runtime::hash::sha256_file(&dir.join("adapters/em/adapter_model.safetensors")).unwrap();
    assert!(
        em.provenance
            .iter()
            .any(|(k, v)| k == "adapter.weights_sha256" && *v == sha),
        "{:?}",
        em.provenance
    );
    let base = b.cell(0, Method::A, 2).unwrap().centroids.to_f32();
    let post = b.cell(1, Method::A, 2).unwrap().centroids.to_f32();
    let moved = base
        .iter()
        .zip(&post)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-4, "the em adapter changed nothing: {moved}");
    // The index maps every tensor to the shard that holds it.
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model/model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert!(index["weight_map"]["lm_head.weight"].is_string());
    let _ = std::fs::remove_dir_all(&dir);
}
