//! End to end on the HF fixture: extract (base + two LoRA checkpoints) -> bundle -> analyze,
//! a resumed run gives the same bytes, a changed study is refused, bad adapters are named.

mod common;
use common::{pg as bin, tiny_study as study, tmp_dir as tmp};

#[test]
fn extract_analyze_and_resume_give_identical_bytes() {
    let d = tmp("resume");
    let s = study(&d, "", "lora_r4");
    let out = bin().arg("extract").arg(&s).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = std::fs::read(d.join("out.pgb")).unwrap();
    let b = shared::Bundle::decode(&full).unwrap();
    assert_eq!(
        (
            b.n_personas(),
            b.n_questions(),
            b.hidden_size,
            b.cells.len()
        ),
        (4, 6, 48, 3 * 2 * 2)
    );
    assert!(b.checkpoints[1]
        .provenance
        .iter()
        .any(|(k, v)| k == "adapter.base_check" && v.starts_with("ok")));
    // Crash after 6 units (the base checkpoint's personas 0-1 and 2, villain, assistant and
    // confab: the group of confab and librarian is half done), then resume: identical bytes,
    // so the resumed group was decoded whole again, not librarian alone (its rows padded to
    // its own prompts' length rather than confab's ~400 tokens).
    std::fs::remove_file(d.join("out.pgb")).unwrap();
    let out = bin()
        .arg("extract")
        .arg(&s)
        .env("PG_TEST_ABORT_AFTER_UNITS", "6")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(d.join("out.pgb.parts").is_dir() && !d.join("out.pgb").exists());
    let out = bin().arg("extract").arg(&s).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--resume"));
    let out = bin()
        .arg("extract")
        .arg(&s)
        .arg("--resume")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(d.join("out.pgb")).unwrap(),
        full,
        "resumed bundle differs from the uninterrupted one"
    );
    // analyze reads it.
    let out = bin()
        .args([
            "analyze",
            "--permutations",
            "99",
            "--bootstrap",
            "20",
            "--m3-label-permutations",
            "5",
            "--components",
            "16",
        ])
        .arg(d.join("out.pgb"))
        .arg("--out")
        .arg(d.join("report"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report/report.json")).unwrap()).unwrap();
    // 3 comparisons x 2 methods x 2 layers x every metric.
    assert_eq!(
        report["rows"].as_array().unwrap().len(),
        3 * 2 * 2 * shared::analysis::ALL_METRICS.len()
    );
}

#[test]
fn changed_study_is_refused_not_mixed() {
    let d = tmp("changed");
    let s = study(&d, "", "lora_r4");
    let out = bin()
        .arg("extract")
        .arg(&s)
        .env("PG_TEST_ABORT_AFTER_UNITS", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
    let s = study(&d, "seed = 5", "lora_r4");
    let out = bin()
        .arg("extract")
        .arg(&s)
        .arg("--resume")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("different configuration"),
        "{err}"
    );
}

#[test]
fn wrong_base_adapter_is_refused_with_the_fix() {
    let d = tmp("wrongbase");
    let s = study(&d, "", "lora_wrong_base");
    let out = bin().arg("extract").arg(&s).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("allow_base_mismatch")
            && err.contains("checkpoint `em`"),
        "{err}"
    );
}

#[test]
fn nan_activations_stop_the_run_naming_the_unit() {
    let d = tmp("nan");
    // A steering vector of norm 1e40 overflows f32 (inf in the residual stream): the unit must be refused.
    let s = study(&d, "", "lora_r4");
    let text = std::fs::read_to_string(&s).unwrap().replacen(
        "name = \"em\"\nrole = \"em\"",
        "name = \"em\"\nrole = \"em\"\nsteer = { layer = 0, alpha = 1e40, random_seed = 1 }",
        1,
    );
    std::fs::write(&s, text).unwrap();
    let out = bin().arg("extract").arg(&s).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("produced NaN/Inf")
            && err.contains("checkpoint `em`"),
        "{err}"
    );
    assert!(!d.join("out.pgb").exists());
}

#[test]
fn all_empty_responses_are_an_error_not_a_silent_average() {
    let d = tmp("empty");
    let s = study(&d, "", "lora_r4");
    let text = std::fs::read_to_string(&s)
        .unwrap()
        .replace("max_new_tokens = 6", "max_new_tokens = 0");
    std::fs::write(&s, text).unwrap();
    let out = bin().arg("extract").arg(&s).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("empty response to every question"),
        "{err}"
    );
}
