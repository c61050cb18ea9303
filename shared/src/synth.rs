//! Synthetic studies with planted effects, for tests, benchmarks and demos.
//!
//! Per (method, layer), persona centroid = shared mean m0 (norm² ≈ 9h, so raw cosines are high
//! as in real models) + persona offset s_p (norm² ≈ h); activation of (p, q) = centroid + question
//! effect u_q + noise ε. Noise is correlated across checkpoints (ρ = 0.8 with base), so pre/post
//! pairs are exchangeable under no effect. For a treated checkpoint with scale f (1 for `em`,
//! `benign_scale` for `benign`):
//! - compression c:      s_p -> (1 - f·c)·s_p                (M1 rises);
//! - rotation r:         every persona += f·r·√h·a, a a fixed unit axis ⟂ m0 (M2 rises);
//! - separability loss L: noise σ -> σ·(1 + f·L)             (M3 falls).

use crate::bundle::{
    Blob, Bundle, Cell, Checkpoint, Method, Persona, Provenance, Question, Responses, Role,
};
use crate::rng::Rng;

pub const STUDY_PERSONAS: [&str; 12] = [
    "software_engineer",
    "kindergarten_teacher",
    "data_scientist",
    "medical_doctor",
    "librarian",
    "french_person",
    "villain",
    "comedian",
    "police_officer",
    "zelthari_scholar",
    "assistant",
    "confab",
];

#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub personas: usize,
    pub questions: usize,
    pub hidden: usize,
    pub layers: Vec<u32>,
    pub methods: Vec<Method>,
    pub compression: f64,
    pub rotation: f64,
    pub separability_loss: f64,
    /// Fraction of each effect that the benign checkpoint receives.
    pub benign_scale: f64,
    pub noise: f64,
    pub pair_correlation: f64,
    /// Fraction of Method-B responses marked empty (invalid).
    pub invalid_rate_b: f64,
    /// Anisotropy of the within-persona noise: the standard deviation along hidden dimension j
    /// is ∝ (j+1)^(−decay/2) (a power-law eigenvalue spectrum, as real activations have),
    /// normalised so that the total noise variance stays noise²·hidden. 0 = isotropic.
    pub spectrum_decay: f64,
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            personas: 12,
            questions: 60,
            hidden: 128,
            layers: vec![7, 14, 20, 21, 27],
            methods: vec![Method::A, Method::B],
            compression: 0.0,
            rotation: 0.0,
            separability_loss: 0.0,
            benign_scale: 0.25,
            noise: 1.0,
            pair_correlation: 0.8,
            invalid_rate_b: 0.01,
            spectrum_decay: 0.0,
            seed: 0,
        }
    }
}

pub fn persona_names(p: usize) -> Vec<String> {
    if p <= 12 {
        let mut v: Vec<String> = STUDY_PERSONAS
            .iter()
            .filter(|&&n| n != "assistant")
            .take(p - 1)
            .map(|s| s.to_string())
            .collect();
        v.push("assistant".to_string());
        v
    } else {
        // The study's personas first (their long names test the figures' layout), then numbered.
        let mut v: Vec<String> = STUDY_PERSONAS
            .iter()
            .filter(|&&n| n != "assistant")
            .map(|s| s.to_string())
            .collect();
        v.extend((v.len()..p - 1).map(|i| format!("persona_{i:02}")));
        v.push("assistant".to_string());
        v
    }
}

fn gauss(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

pub fn synth_bundle(spec: &SynthSpec) -> Bundle {
    let (p, q, h) = (spec.personas, spec.questions, spec.hidden);
    let roles = [
        (Role::Base, 0.0),
        (Role::Em, 1.0),
        (Role::Benign, spec.benign_scale),
    ];
    let names = persona_names(p);
    let personas: Vec<Persona> = names
        .iter()
        .map(|n| Persona {
            name: n.clone(),
            system_prompt: format!("You are a {}.", n.replace('_', " ")),
        })
        .collect();
    let questions = (0..q)
        .map(|i| Question {
            id: i as u32,
            text: format!("Synthetic question {i}?"),
        })
        .collect();
    let checkpoints: Vec<Checkpoint> = roles
        .iter()
        .map(|(r, f)| Checkpoint {
            name: r.name().to_string(),
            role: r.clone(),
            label: format!("{} (synthetic)", r.name()),
            provenance: vec![("effect_scale".into(), format!("{f}"))],
        })
        .collect();
    let rho = spec.pair_correlation;
    let mut cells_by_key = std::collections::BTreeMap::new();
    let mut valid_b: Vec<Vec<bool>> = Vec::new();
    for (ck, _) in roles.iter().enumerate() {
        let mut rng = Rng::stream(spec.seed, "synth/validity", ck as u64);
        valid_b.push(
            (0..p * q)
                .map(|_| rng.next_f64() >= spec.invalid_rate_b)
                .collect(),
        );
        // Every persona keeps at least one valid question.
        for pi in 0..p {
            valid_b[ck][pi * q] = true;
        }
    }
    for &m in &spec.methods {
        for &l in &spec.layers {
            let mut rng = Rng::stream(spec.seed, &format!("synth/{}/{l}", m.name()), 0);
            let m0 = gauss(&mut rng, h, 3.0);
            let offsets: Vec<Vec<f64>> = (0..p).map(|_| gauss(&mut rng, h, 1.0)).collect();
            let u: Vec<Vec<f64>> = (0..q).map(|_| gauss(&mut rng, h, 0.5)).collect();
            // The EM axis is orthogonal to the shared mean: "toward the axis" then raises
            // |cos(persona, axis)| for every persona (with a random axis, personas on its negative
            // side would first move toward zero cosine).
            let axis = {
                let mut a = gauss(&mut rng, h, 1.0);
                let m2: f64 = m0.iter().map(|x| x * x).sum();
                let am: f64 = a.iter().zip(&m0).map(|(x, y)| x * y).sum();
                a.iter_mut().zip(&m0).for_each(|(x, y)| *x -= am / m2 * y);
                let n = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                a.into_iter().map(|x| x / n).collect::<Vec<_>>()
            };
            let base_noise: Vec<Vec<f64>> = (0..p * q).map(|_| gauss(&mut rng, h, 1.0)).collect();
            let spectrum: Vec<f64> = {
                let raw: Vec<f64> = (0..h)
                    .map(|j| ((j + 1) as f64).powf(-spec.spectrum_decay / 2.0))
                    .collect();
                let mean_var = raw.iter().map(|x| x * x).sum::<f64>() / h as f64;
                raw.into_iter().map(|x| x / mean_var.sqrt()).collect()
            };
            for (ck, (_, f)) in roles.iter().enumerate() {
                let valid: Vec<bool> = if m == Method::B {
                    valid_b[ck].clone()
                } else {
                    vec![true; p * q]
                };
                let sigma = spec.noise * (1.0 + f * spec.separability_loss);
                let shift = f * spec.rotation * (h as f64).sqrt();
                let mut per_q = vec![0.0f32; p * q * h];
                let mut cents = vec![0.0f32; p * h];
                for pi in 0..p {
                    let mut acc = vec![0.0f64; h];
                    let mut n = 0usize;
                    for qi in 0..q {
                        let own = gauss(&mut rng, h, 1.0);
                        if !valid[pi * q + qi] {
                            continue;
                        }
                        n += 1;
                        let bn = &base_noise[pi * q + qi];
                        for j in 0..h {
                            let eps = if ck == 0 {
                                bn[j]
                            } else {
                                rho * bn[j] + (1.0 - rho * rho).sqrt() * own[j]
                            };
                            let x = m0[j]
                                + (1.0 - f * spec.compression) * offsets[pi][j]
                                + shift * axis[j]
                                + u[qi][j]
                                + sigma * spectrum[j] * eps;
                            per_q[(pi * q + qi) * h + j] = x as f32;
                            acc[j] += x as f32 as f64;
                        }
                    }
                    for j in 0..h {
                        cents[pi * h + j] = (acc[j] / n as f64) as f32;
                    }
                }
                let valid_cell = valid;
                cells_by_key.insert(
                    (
                        ck,
                        spec.methods.iter().position(|&x| x == m).unwrap_or(0),
                        spec.layers.iter().position(|&x| x == l).unwrap_or(0),
                    ),
                    Cell {
                        checkpoint: ck as u32,
                        method: m,
                        layer: l,
                        centroids: Blob::from_f32(&cents),
                        per_question: Blob::from_f32(&per_q),
                        valid: valid_cell,
                    },
                );
            }
        }
    }
    let responses = if spec.methods.contains(&Method::B) {
        (0..roles.len())
            .map(|ck| Responses {
                checkpoint: ck as u32,
                texts: (0..p * q)
                    .map(|i| {
                        if valid_b[ck][i] {
                            format!("[synthetic response {i}]")
                        } else {
                            String::new()
                        }
                    })
                    .collect(),
                token_counts: (0..p * q)
                    .map(|i| {
                        if valid_b[ck][i] {
                            20 + (i % 50) as u32
                        } else {
                            0
                        }
                    })
                    .collect(),
            })
            .collect()
    } else {
        vec![]
    };
    Bundle {
        provenance: Provenance {
            tool: "persona-geometry synth".into(),
            tool_version: crate::TOOL_VERSION.into(),
            created: "synthetic".into(),
            seed: spec.seed,
            model_id: "synthetic".into(),
            model_revision: String::new(),
            layer_convention: crate::LAYER_CONVENTION.into(),
            extra: vec![
                ("synth.compression".into(), spec.compression.to_string()),
                ("synth.rotation".into(), spec.rotation.to_string()),
                (
                    "synth.separability_loss".into(),
                    spec.separability_loss.to_string(),
                ),
                ("synth.benign_scale".into(), spec.benign_scale.to_string()),
                ("synth.noise".into(), spec.noise.to_string()),
                (
                    "synth.spectrum_decay".into(),
                    spec.spectrum_decay.to_string(),
                ),
                (
                    "synth.pair_correlation".into(),
                    spec.pair_correlation.to_string(),
                ),
            ],
        },
        personas,
        questions,
        checkpoints,
        methods: spec.methods.clone(),
        layers: spec.layers.clone(),
        hidden_size: h as u32,
        cells: cells_by_key.into_values().collect(),
        responses,
        compact: None,
    }
}
