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

fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The permalink: every usable parameter is applied, every other one is named with what was
/// done instead, and the query written back reads into the same controls with no notice.
#[wasm_bindgen_test]
fn the_permalink_round_trips_and_names_what_it_ignores() {
    use explorer::controls::Ctl;
    use leptos::prelude::*;
    use shared::bundle::Method;
    let ctl = Ctl::new();
    ctl.apply_query(pairs(&[
        ("method", "B"),
        ("layer", "4"),
        ("treated", "em"),
        ("centre", "centred"),
        ("personas", "assistant,villain"),
        ("threshold", "3x"),
        ("alpha", "0.01"),
        ("n", "0"),
        ("seed", "7"),
        ("metric", "M2_em_axis"),
        ("bogus", "1"),
        ("layer", "top"),
    ]));
    assert_eq!(ctl.method.get_untracked(), Method::B);
    assert_eq!(ctl.layer.get_untracked(), 4);
    assert!(ctl.centred.get_untracked());
    assert_eq!(ctl.threshold.get_untracked(), Some(3.0));
    assert_eq!(ctl.alpha.get_untracked(), 0.01);
    assert_eq!(ctl.permutations.get_untracked(), 1);
    assert_eq!(ctl.seed.get_untracked(), 7);
    assert_eq!(ctl.metric.get_untracked(), "M2_em_axis");
    let notes = ctl.url_notices.get_untracked();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(
        notes[0].contains("n=0 ignored: N = 1 is used instead"),
        "{notes:?}"
    );
    assert!(
        notes[1].contains("bogus=1 ignored: unknown parameter"),
        "{notes:?}"
    );
    assert!(
        notes[2].contains("layer=top ignored: not a layer number"),
        "{notes:?}"
    );
    let back = Ctl::new();
    back.apply_query(ctl.query());
    assert_eq!(back.query(), ctl.query());
    assert!(back.url_notices.get_untracked().is_empty());
    assert_eq!(back.key(), ctl.key());
    // p-only survives the trip as "p".
    ctl.threshold.set(None);
    assert!(ctl.query().contains(&("threshold".into(), "p".into())));
}

/// A loaded bundle keeps the controls that fit it and replaces the others by the defaults.
#[wasm_bindgen_test]
fn controls_fit_a_loaded_bundle() {
    use explorer::controls::{Ctl, Meta};
    use leptos::prelude::*;
    let compact = compact_bundle(&study(), 16, false, 0).unwrap();
    let meta = Meta::of("s.compact.pgb", 1234, &compact);
    assert_eq!(meta.layers, vec![2, 4]);
    let ctl = Ctl::new();
    ctl.apply_query(pairs(&[
        ("layer", "3"),
        ("treated", "base"),
        ("personas", "assistant,nobody"),
    ]));
    ctl.fit_to(&meta);
    // Layer 3 is not in the bundle: the middle layer; base cannot be the treated one: em;
    // one usable persona is not a subset: every persona.
    assert_eq!(ctl.layer.get_untracked(), 4);
    assert_eq!(ctl.treated.get_untracked(), "em");
    assert_eq!(ctl.personas.get_untracked().len(), 5);
    let names: Vec<String> = meta.personas.iter().map(|p| p.0.clone()).collect();
    let ctl = Ctl::new();
    ctl.apply_query(pairs(&[
        ("layer", "2"),
        ("treated", "benign"),
        ("personas", &format!("{},{}", names[3], names[1])),
    ]));
    ctl.fit_to(&meta);
    assert_eq!(ctl.layer.get_untracked(), 2);
    assert_eq!(ctl.treated.get_untracked(), "benign");
    // Kept, in the bundle's order.
    assert_eq!(
        ctl.personas.get_untracked(),
        vec![names[1].clone(), names[3].clone()]
    );
}
