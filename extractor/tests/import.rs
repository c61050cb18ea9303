//! `import`: the PyTorch cache fixture (written by torch itself) imports to exactly its
//! expected.json; export -> import round-trips to identical bytes; every validation error fires.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn pt_fixture() -> PathBuf {
    std::env::var_os("PG_PT_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/pt-cache")
        })
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_persona-geometry"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::write(&to, std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

const MAPPING: &str = r#"
[[checkpoints]]
name = "base"
role = "base"
dir = "base"
[[checkpoints]]
name = "em_assistant"
role = "em"
dir = "em_assistant"
"#;

fn import_tree(root: &Path, mapping: &str, extra: &[&str]) -> (bool, String, PathBuf) {
    let map = root.join("map.toml");
    std::fs::write(&map, mapping).unwrap();
    let out = root.join("out.pgb");
    let o = bin()
        .arg("import")
        .arg(root)
        .arg("--mapping")
        .arg(&map)
        .arg("-o")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
        out,
    )
}

/// Rewrites members of a torch zip (so that CRCs stay valid).
fn rewrite_pt(path: &Path, mut f: impl FnMut(&str, Vec<u8>) -> Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        let b = f(&name, b);
        out.start_file(name, opts).unwrap();
        out.write_all(&b).unwrap();
    }
    std::fs::write(path, out.finish().unwrap().into_inner()).unwrap();
}

#[test]
fn pt_cache_imports_to_exactly_the_expected_arrays() {
    let d = tmp("exact");
    copy_tree(&pt_fixture(), &d);
    let (ok, err, out) = import_tree(&d, MAPPING, &[]);
    assert!(ok, "{err}");
    let b = shared::Bundle::decode(&std::fs::read(&out).unwrap()).unwrap();
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pt_fixture().join("expected.json")).unwrap())
            .unwrap();
    let arrays = exp["arrays"].as_object().unwrap();
    let (q, h) = (b.n_questions(), b.hidden_size as usize);
    let mut checked = 0;
    for (ck, ckname) in ["base", "em_assistant"].iter().enumerate() {
        for (mname, m) in [
            ("method_a", shared::bundle::Method::A),
            ("method_b", shared::bundle::Method::B),
        ] {
            for (pi, persona) in ["assistant", "villain", "librarian"].iter().enumerate() {
                let idx: Vec<usize> = arrays
                    [&format!("{ckname}/{mname}/{persona}/question_indices")]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                let cents = &arrays[&format!("{ckname}/{mname}/{persona}/centroids")];
                for (li, l) in [1u32, 2, 3].iter().enumerate() {
                    let cell = b.cell(ck, m, *l).unwrap();
                    let pq = cell.per_question.to_f32();
                    let want = arrays[&format!("{ckname}/{mname}/{persona}/L{l}/per_question")]
                        .as_array()
                        .unwrap();
                    for qi in 0..q {
                        let row = idx.iter().position(|&x| x == qi);
                        assert_eq!(
                            cell.valid[pi * q + qi],
                            row.is_some(),
                            "{ckname} {mname} {persona} q{qi}"
                        );
                        if let Some(r) = row {
                            for j in 0..h {
                                assert_eq!(
                                    pq[(pi * q + qi) * h + j],
                                    want[r][j].as_f64().unwrap() as f32
                                );
                                checked += 1;
                            }
                        }
                    }
                    let c = cell.centroids.to_f32();
                    for j in 0..h {
                        assert_eq!(c[pi * h + j], cents[li][j].as_f64().unwrap() as f32);
                    }
                }
            }
        }
    }
    // 2 checkpoints x (15 + 14 rows) x 3 layers x 8 dims.
    assert_eq!(checked, 2 * 29 * 3 * 8);
    assert!(b
        .provenance
        .get("import.files_sha256")
        .unwrap()
        .contains("base/method_b/villain_question_indices.pt="));
    // analyze runs on it.
    let o = bin()
        .args([
            "analyze",
            "--permutations",
            "19",
            "--bootstrap",
            "5",
            "--m3-label-permutations",
            "2",
            "--folds",
            "2",
            "--axis-persona",
            "assistant",
        ])
        .arg(&out)
        .arg("--out")
        .arg(d.join("rep"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn export_import_round_trips_to_identical_bytes() {
    let d = tmp("roundtrip");
    let src = d.join("s.pgb");
    let o = bin()
        .args([
            "synth",
            "--personas",
            "4",
            "--questions",
            "12",
            "--hidden",
            "16",
            "--layers",
            "2,5",
        ])
        .arg("-o")
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success());
    let original = std::fs::read(&src).unwrap();
    for fmt in ["npz", "safetensors"] {
        let ex = d.join(format!("x.{fmt}"));
        assert!(bin()
            .arg("export")
            .arg(&src)
            .args(["--format", fmt])
            .arg("-o")
            .arg(&ex)
            .status()
            .unwrap()
            .success());
        let back = d.join(format!("back-{fmt}.pgb"));
        let o = bin()
            .arg("import")
            .arg(&ex)
            .arg("-o")
            .arg(&back)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read(&back).unwrap(),
            original,
            "{fmt} round trip changed the bundle"
        );
    }
}

#[test]
fn missing_layer_is_named() {
    let d = tmp("missing");
    copy_tree(&pt_fixture(), &d);
    std::fs::remove_file(d.join("em_assistant/method_a/librarian_perquestion_L2.pt")).unwrap();
    let (ok, err, _) = import_tree(&d, MAPPING, &[]);
    assert!(
        !ok && err.contains("persona `librarian` lacks layer 2") && err.contains("em_assistant"),
        "{err}"
    );
}

#[test]
fn differing_question_sets_are_refused_or_intersected() {
    let d = tmp("mismatch");
    copy_tree(&pt_fixture(), &d);
    // em's Method A villain stack becomes the Method-B one (question 3 missing).
    for l in 1..=3 {
        let f = format!("villain_perquestion_L{l}.pt");
        std::fs::copy(
            d.join("em_assistant/method_b").join(&f),
            d.join("em_assistant/method_a").join(&f),
        )
        .unwrap();
    }
    std::fs::copy(
        d.join("em_assistant/method_b/villain_question_indices.pt"),
        d.join("em_assistant/method_a/villain_question_indices.pt"),
    )
    .unwrap();
    let (ok, err, _) = import_tree(&d, MAPPING, &[]);
    assert!(
        !ok && err.contains("question indices differ") && err.contains("--on-mismatch intersect"),
        "{err}"
    );
    let (ok, err, out) = import_tree(&d, MAPPING, &["--on-mismatch", "intersect"]);
    assert!(ok, "{err}");
    let b = shared::Bundle::decode(&std::fs::read(out).unwrap()).unwrap();
    let base_a = b.cell(0, shared::bundle::Method::A, 1).unwrap();
    assert!(
        !base_a.valid[5 + 3],
        "question 3 of the villain must be dropped in base too"
    );
    assert!(b
        .provenance
        .get("import.question_intersection")
        .unwrap()
        .contains("villain"));
}

#[test]
fn nan_is_named_with_file_row_and_column() {
    let d = tmp("nan");
    copy_tree(&pt_fixture(), &d);
    rewrite_pt(
        &d.join("base/method_a/assistant_perquestion_L3.pt"),
        |name, mut b| {
            if name.ends_with("data/0") {
                b[4 * 10..4 * 11].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            b
        },
    );
    let (ok, err, _) = import_tree(&d, MAPPING, &[]);
    assert!(
        !ok && err.contains("assistant_perquestion_L3.pt")
            && err.contains("NaN/Inf at row 1, column 2"),
        "{err}"
    );
}

#[test]
fn hidden_size_mismatch_is_named() {
    let d = tmp("hidden");
    copy_tree(&pt_fixture(), &d);
    // Reshape one (5, 8) stack to (10, 4) by editing the pickled size and stride.
    rewrite_pt(
        &d.join("em_assistant/method_a/librarian_perquestion_L1.pt"),
        |name, b| {
            if name.ends_with("data.pkl") {
                let s = b
                    .windows(5)
                    .position(|w| w == b"K\x05K\x08\x86")
                    .expect("size tuple");
                let mut b = b;
                b[s..s + 5].copy_from_slice(b"K\x0aK\x04\x86");
                let t = b
                    .windows(5)
                    .position(|w| w == b"K\x08K\x01\x86")
                    .expect("stride tuple");
                b[t..t + 5].copy_from_slice(b"K\x04K\x01\x86");
                b
            } else {
                b
            }
        },
    );
    let (ok, err, _) = import_tree(&d, MAPPING, &[]);
    assert!(
        !ok && err.contains("hidden size mismatch") && err.contains("librarian_perquestion_L1.pt"),
        "{err}"
    );
}

#[test]
fn duplicate_personas_are_refused() {
    let d = tmp("dup");
    copy_tree(&pt_fixture(), &d);
    let (ok, err, _) = import_tree(
        &d,
        &format!("personas = [\"assistant\", \"villain\", \"assistant\"]\n{MAPPING}"),
        &[],
    );
    assert!(
        !ok && err.contains("persona `assistant` is listed twice"),
        "{err}"
    );
}
