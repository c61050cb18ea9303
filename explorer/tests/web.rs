//! Rust-level tests of the page's non-UI code, run inside headless Chromium
//! (wasm-bindgen-test-runner + chromedriver; scripts/test_browser.sh): what the page and its
//! workers do with bundle bytes, in the browser's wasm, against the same code's answers.

use explorer::{decode_for_page, page_config, subset, InitMessage};
use shared::analysis::{analyze, CellResult, Plan, Task, TaskOutput};
use shared::coords::compact_bundle;
use shared::synth::{synth_bundle, SynthSpec};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn study() -> shared::Bundle {
    synth_bundle(&SynthSpec {
        personas: 5,
        questions: 30,
        hidden: 40,
        layers: vec![2, 4],
        compression: 0.3,
        seed: 9,
        ..SynthSpec::default()
    })
}

#[wasm_bindgen_test]
fn the_page_reads_compact_bundles_and_refuses_full_and_broken_ones() {
    let full = study();
    let compact = compact_bundle(&full, 16, false, 0).unwrap();
    let bytes = compact.encode().unwrap();
    let b = decode_for_page("s.compact.pgb", &bytes).unwrap();
    assert_eq!(b, compact);
    let err = decode_for_page("s.pgb", &full.encode().unwrap()).unwrap_err();
    assert!(
        err.contains("persona-geometry compact s.pgb -o s.compact.pgb"),
        "{err}"
    );
    let err = decode_for_page("cut.pgb", &bytes[..bytes.len() - 7]).unwrap_err();
    assert!(
        err.contains("cut.pgb") && err.contains("truncated"),
        "{err}"
    );
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 0x40;
    assert!(decode_for_page("flip.pgb", &flipped)
        .unwrap_err()
        .contains("checksum"));
}

/// What the workers compute (task by task, messages encoded as they travel) assembles into
/// exactly the report `analyze` makes in the same wasm, for a persona subset too.
#[wasm_bindgen_test]
fn worker_tasks_over_the_wire_give_the_analyze_report() {
    let compact = compact_bundle(&study(), 16, false, 0).unwrap();
    // Three personas, the EM-axis persona (assistant) among them.
    let pick: Vec<String> = compact
        .personas
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| n == "assistant")
        .chain(compact.personas.iter().take(2).map(|p| p.name.clone()))
        .collect();
    assert_eq!(pick.len(), 3);
    for personas in [None, Some(pick)] {
        let cfg = page_config(199, 5);
        let init = InitMessage {
            personas: personas.clone(),
            config: cfg.clone(),
        };
        let init: InitMessage =
            serde_json::from_str(&serde_json::to_string(&init).unwrap()).unwrap();
        let b = subset(&compact, init.personas.as_deref()).unwrap();
        let plan = Plan::new(&b, &init.config).unwrap();
        let mut pairs = Vec::new();
        for ml in 0..plan.coords.len() {
            for task in plan.tasks(ml, 50) {
                let task: Task =
                    serde_json::from_str(&serde_json::to_string(&task).unwrap()).unwrap();
                let bytes = postcard::to_allocvec(&plan.run_task(&task)).unwrap();
                let out: TaskOutput = postcard::from_bytes(&bytes).unwrap();
                pairs.push((task, out));
            }
        }
        let cells: Vec<Option<CellResult>> = (0..plan.coords.len())
            .map(|ml| Some(plan.cell_result(ml, &pairs)))
            .collect();
        let page = plan.report(&b, &cells);
        let cli = analyze(&b, &cfg, &|_| {}).unwrap();
        assert_eq!(page, cli);
        assert_eq!(page.personas.len(), if personas.is_some() { 3 } else { 5 });
    }
}
