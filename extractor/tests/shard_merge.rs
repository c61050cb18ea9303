//! Scale-out on the HF fixture study (3 checkpoints x 4 personas = 12 units): shards run in any
//! order (one killed and resumed, two picked by the SLURM and Kubernetes variables) merge to the
//! single run's bytes, and so does `--devices`; parts of another study, a missing part, a
//! duplicated part and an unfinished part are refused with the unit or shard named.

mod common;
use common::{pg, tiny_study, tmp_dir};
use std::path::{Path, PathBuf};
use std::process::Output;

fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

fn failed(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected a refusal, got success: {err}"
    );
    err
}

fn part(d: &Path, i: usize, n: usize) -> PathBuf {
    d.join(format!("out.pgb.shard-{i}-of-{n}"))
}

fn merge(parts: &[PathBuf], out: &Path) -> Output {
    pg().arg("merge")
        .args(parts)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// The single run's bytes, for comparison.
fn single_run(name: &str) -> Vec<u8> {
    let d = tmp_dir(name);
    let s = tiny_study(&d, "", "lora_r4");
    ok(pg()
        .arg("extract")
        .arg(&s)
        .arg("--shard")
        .arg("all")
        .output()
        .unwrap());
    std::fs::read(d.join("out.pgb")).unwrap()
}

#[test]
fn shards_in_any_order_and_devices_merge_to_the_single_run_bytes() {
    let single = single_run("shard-single");
    let d = tmp_dir("shards");
    let s = tiny_study(&d, "", "lora_r4");
    // Shard 2 first, picked by a Kubernetes Indexed Job's variables.
    let err = ok(pg()
        .arg("extract")
        .arg(&s)
        .env("JOB_COMPLETION_INDEX", "2")
        .env("PG_SHARD_COUNT", "3")
        .output()
        .unwrap());
    assert!(err.contains("shard 2/3 from JOB_COMPLETION_INDEX"), "{err}");
    assert!(part(&d, 2, 3).join("part.json").exists());
    assert!(!d.join("out.pgb").exists(), "a shard writes no bundle");
    // Shard 0 killed after one unit: merge names it unfinished; without --resume it is refused.
    let out = pg()
        .args(["extract", "--shard", "0/3"])
        .arg(&s)
        .env("PG_TEST_ABORT_AFTER_UNITS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
    let err = failed(merge(
        &[part(&d, 0, 3), part(&d, 2, 3)],
        &d.join("merged.pgb"),
    ));
    assert!(
        err.contains("did not finish") && err.contains("--resume"),
        "{err}"
    );
    let err = failed(
        pg().args(["extract", "--shard", "0/3"])
            .arg(&s)
            .output()
            .unwrap(),
    );
    assert!(err.contains("--resume"), "{err}");
    ok(pg()
        .args(["extract", "--shard", "0/3", "--resume"])
        .arg(&s)
        .output()
        .unwrap());
    // Shard 1 from a SLURM array 1-3 (task id 2, min 1).
    let err = ok(pg()
        .arg("extract")
        .arg(&s)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap());
    assert!(err.contains("shard 1/3 from SLURM_ARRAY_TASK_ID"), "{err}");
    // Rerunning a finished shard does nothing.
    let err = ok(pg()
        .args(["extract", "--shard", "1/3"])
        .arg(&s)
        .output()
        .unwrap());
    assert!(err.contains("already finished"), "{err}");
    // Every unit in exactly one part, every part holding some.
    let mut held = 0;
    for i in 0..3 {
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(part(&d, i, 3).join("part.json")).unwrap())
                .unwrap();
        let n = rec["units"].as_array().unwrap().len();
        assert!((3..=5).contains(&n), "shard {i}: {n} units");
        held += n;
    }
    assert_eq!(held, 12);
    // Merged in any order: the single run's bytes.
    for order in [[0, 1, 2], [2, 0, 1]] {
        let parts: Vec<PathBuf> = order.iter().map(|&i| part(&d, i, 3)).collect();
        ok(merge(&parts, &d.join("merged.pgb")));
        assert!(
            std::fs::read(d.join("merged.pgb")).unwrap() == single,
            "merged bundle (order {order:?}) differs from the single run's"
        );
    }
    // Two workers (CPU: two processes), merged at the end, parts removed.
    let d2 = tmp_dir("devices");
    let s2 = tiny_study(&d2, "", "lora_r4");
    ok(pg()
        .arg("extract")
        .arg(&s2)
        .args(["--devices", "0,1"])
        .output()
        .unwrap());
    assert!(
        std::fs::read(d2.join("out.pgb")).unwrap() == single,
        "--devices bundle differs from the single run's"
    );
    assert!(!part(&d2, 0, 2).exists() && !part(&d2, 1, 2).exists());
}

#[test]
fn merge_refuses_other_studies_missing_and_duplicate_parts() {
    let d = tmp_dir("merge-refusals");
    let s = tiny_study(&d, "", "lora_r4");
    for i in 0..3 {
        ok(pg()
            .args(["extract", "--shard", &format!("{i}/3")])
            .arg(&s)
            .output()
            .unwrap());
    }
    let all: Vec<PathBuf> = (0..3).map(|i| part(&d, i, 3)).collect();
    let out = d.join("merged.pgb");
    // Missing part: its units and the shard named.
    let err = failed(merge(&[all[0].clone(), all[2].clone()], &out));
    assert!(
        err.contains("in no part") && err.contains("Shard(s) not given: 1/3"),
        "{err}"
    );
    assert!(
        err.contains("checkpoint `") && err.contains("persona `"),
        "{err}"
    );
    // The same part twice.
    let err = failed(merge(
        &[
            all[0].clone(),
            all[1].clone(),
            all[1].clone(),
            all[2].clone(),
        ],
        &out,
    ));
    assert!(err.contains("in more than one part"), "{err}");
    // A part of another split of the same study overlaps.
    ok(pg()
        .args(["extract", "--shard", "0/2"])
        .arg(&s)
        .output()
        .unwrap());
    let mut mixed = all.clone();
    mixed.push(part(&d, 0, 2));
    let err = failed(merge(&mixed, &out));
    assert!(err.contains("in more than one part"), "{err}");
    // A part of another study (another seed): the difference named.
    let other = tmp_dir("merge-other");
    let s_other = tiny_study(&other, "seed = 7", "lora_r4");
    ok(pg()
        .args(["extract", "--shard", "1/3"])
        .arg(&s_other)
        .output()
        .unwrap());
    let err = failed(merge(
        &[all[0].clone(), part(&other, 1, 3), all[2].clone()],
        &out,
    ));
    assert!(
        err.contains("different studies") && err.contains("differ in seed"),
        "{err}"
    );
    assert!(!out.exists(), "a refused merge writes nothing");
    // Not a part directory at all.
    let err = failed(merge(&[d.clone()], &out));
    assert!(err.contains("not a part directory"), "{err}");
}
