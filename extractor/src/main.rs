//! `persona-geometry`: extract persona activations, build and analyse bundles.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use extractor::cmd_analysis;
use shared::analysis::defaults;
use shared::analysis::{AnalysisConfig, M3Features};
use shared::synth::SynthSpec;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "persona-geometry",
    version,
    about = "What does emergent-misalignment finetuning do to the geometry of persona vectors?",
    long_about = "Extract persona activations (Method A: last prompt token; Method B: mean over the greedy response) from a decoder LM with LoRA checkpoints, store them in a bundle, and analyse inter-persona cosine compression (M1), rotation toward the EM axis (M2) and linear separability (M3) with permutation tests.\n\nLayer convention: layer l = output of decoder block l (0-based), i.e. a forward hook on model.layers[l]; the last block is taken before the final norm."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a study (TOML): persona x question activations of every checkpoint into a bundle.
    /// Finished units are kept in <output>.parts/; rerun with --resume after a crash or Ctrl-C.
    Extract {
        study: PathBuf,
        /// Bundle to write (default: the study's `output`).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Continue an interrupted run (or shard) of the same study.
        #[arg(long)]
        resume: bool,
        /// Run only shard I of N (0-based, `--shard 0/4`..`3/4`) into the part directory
        /// <output>.shard-I-of-N/; `merge` makes the bundle. Without it, a SLURM job array
        /// (SLURM_ARRAY_TASK_ID/_MIN/_COUNT) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX
        /// with PG_SHARD_COUNT) picks the shard; `--shard all` runs the whole study regardless.
        #[arg(long, conflicts_with = "devices")]
        shard: Option<String>,
        /// One worker per device (CUDA ordinals, e.g. 0,1,2,3), each a shard of the study, merged
        /// into the bundle at the end with one progress bar. On a CPU study: that many worker
        /// processes.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<usize>>,
        /// CUDA ordinal of this process (what `--devices` gives each worker).
        #[arg(long, hide = true)]
        cuda_device: Option<usize>,
    },
    /// Merge the part directories of a sharded extraction (`extract --shard I/N`) into the
    /// bundle: refuses parts of different studies and names missing or duplicated units; the
    /// result is byte-identical to a single run of the study.
    Merge {
        /// Every shard's part directory (<output>.shard-I-of-N).
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Analyse a bundle: report.json and report.md with every metric, test and verdict.
    Analyze {
        /// Bundle to analyse (full or compact).
        bundle: PathBuf,
        /// Output directory for report.json and report.md.
        #[arg(long)]
        out: PathBuf,
        /// Permutations per test (p floor = 1/(N+1)).
        #[arg(long, default_value_t = defaults::PERMUTATIONS)]
        permutations: usize,
        /// Label permutations of the per-checkpoint "M3 above chance" test.
        #[arg(long, default_value_t = defaults::M3_LABEL_PERMUTATIONS)]
        m3_label_permutations: usize,
        /// Seed of every random draw (permutations, bootstrap, randomized PCA).
        #[arg(long, default_value_t = defaults::SEED)]
        seed: u64,
        /// Bootstrap resamples over questions for the 95% CIs.
        #[arg(long, default_value_t = defaults::BOOTSTRAP)]
        bootstrap: usize,
        /// Residual principal components of the above-chance test's pooled LDA, and of M3 with
        /// `--m3-features components` (ignored for compact bundles). M1/M2 always use every
        /// hidden dimension of a full bundle (exact draws).
        #[arg(long, default_value_t = defaults::COMPONENTS)]
        components: usize,
        /// What M3 (scikit-learn's shrinkage LDA) is fitted on in a full bundle: `full` = every
        /// hidden dimension of the activations; `components` = the top --components residual
        /// PCs (what a compact bundle, and so the page, has; faster).
        #[arg(long, default_value = "full", value_parser = ["full", "components"])]
        m3_features: String,
        /// Also fit the logistic probe (scikit-learn `LogisticRegression(C=1)` objective, on the
        /// --components residual PCs): M3's robustness rows `M3_probe_*`, outside the families.
        #[arg(long)]
        logistic_probe: bool,
        /// Cross-validation folds for M3 (GroupKFold by question).
        #[arg(long, default_value_t = defaults::FOLDS)]
        folds: usize,
        /// Significance level on BH-adjusted p-values for the verdict.
        #[arg(long, default_value_t = defaults::ALPHA)]
        alpha: f64,
        /// Equivalence margin of the kill rule's second form (every 95% CI inside ±this).
        #[arg(long, default_value_t = defaults::EQUIVALENCE_DELTA)]
        equivalence_delta: f64,
        /// Persona whose shift defines the EM axis.
        #[arg(long, default_value = defaults::AXIS_PERSONA)]
        axis_persona: String,
        /// EM/benign ratio thresholds of the sensitivity rows (comma-separated).
        #[arg(long, default_value = "1.5,2,3", value_delimiter = ',')]
        thresholds: Vec<f64>,
        /// Also write every figure as SVG into OUT/figures/ (the explorer's pictures, same code).
        #[arg(long)]
        figures: bool,
    },
    /// Compact a full bundle for the browser: shared basis per (method, layer), f16 residual PCs.
    Compact {
        bundle: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        /// Residual principal components kept per (method, layer).
        #[arg(long, default_value_t = defaults::COMPONENTS)]
        components: usize,
        /// Keep Method-B response texts (token counts are always kept).
        #[arg(long)]
        keep_texts: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// report.json of `analyze` on this full bundle (the published analysis): its exact
        /// rows, verdicts, settings and tool version travel inside the compact bundle; the page
        /// shows that verdict at once, re-verifies it, and shows the exact rows beside its own
        /// approximate values.
        #[arg(long, alias = "with-report")]
        reference: Option<PathBuf>,
    },
    /// Write a synthetic bundle with planted effects (for tests and demos).
    Synth {
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long, default_value_t = 12)]
        personas: usize,
        #[arg(long, default_value_t = 60)]
        questions: usize,
        #[arg(long, default_value_t = 128)]
        hidden: usize,
        /// Layers (comma-separated).
        #[arg(long, default_value = "7,14,20,21,27", value_delimiter = ',')]
        layers: Vec<u32>,
        /// Methods (A, B or A,B).
        #[arg(long, default_value = "A,B")]
        methods: String,
        /// Shrink persona offsets by this fraction in `em` (M1 compression).
        #[arg(long, default_value_t = 0.0)]
        compression: f64,
        /// Shift every persona along a shared axis by this times sqrt(hidden) in `em` (M2).
        #[arg(long, default_value_t = 0.0)]
        rotation: f64,
        /// Scale the within-persona noise by (1 + this) in `em` (M3 separability loss).
        #[arg(long, default_value_t = 0.0)]
        separability_loss: f64,
        /// Anisotropy of the within-persona noise: power-law spectrum, std along hidden
        /// dimension j ∝ (j+1)^(−decay/2) (0 = isotropic).
        #[arg(long, default_value_t = 0.0)]
        spectrum_decay: f64,
        /// Within-persona noise scale (per hidden dimension, on average; persona offsets have
        /// scale 1). Large values make M3 unsaturated at full width.
        #[arg(long, default_value_t = 1.0)]
        noise: f64,
        /// Fraction of each effect given to the `benign` checkpoint.
        #[arg(long, default_value_t = 0.25)]
        benign_scale: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Export a full bundle for Python: .npz (arrays + meta.json), .safetensors (meta.json in
    /// its metadata) or .json. Arrays: {checkpoint}/{method}/L{layer}/{centroids,per_question,valid}.
    Export {
        bundle: PathBuf,
        /// npz, safetensors or json.
        #[arg(long, default_value = "npz")]
        format: String,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Throughput benchmark: the study's workload shape (default 2,880 prompts of 60-110 tokens,
    /// 200 new tokens, layers 7,14,20,21,27) on random weights of Qwen2.5-7B's shape (or a
    /// config.json). Compare with bench/hf_reference_workload.py on the same machine.
    BenchWorkload {
        /// A Hugging Face config.json (default: Qwen2.5-7B-Instruct's shape).
        #[arg(long, conflicts_with = "arch")]
        config: Option<PathBuf>,
        /// A built-in shape: qwen2.5-7b (default), qwen3-8b or gemma2-9b (bench/configs/).
        #[arg(long, value_parser = ["qwen2.5-7b", "qwen3-8b", "gemma2-9b"])]
        arch: Option<String>,
        #[arg(long, default_value_t = 2880)]
        prompts: usize,
        #[arg(long, default_value_t = 60)]
        min_len: usize,
        #[arg(long, default_value_t = 110)]
        max_len: usize,
        #[arg(long, default_value_t = 200)]
        new_tokens: usize,
        /// Prompts per Method-A prefill batch (0 = from free device memory).
        #[arg(long, default_value_t = 64)]
        batch_a: usize,
        /// Prompts per Method-B decoding batch (0 = from free device memory).
        #[arg(long, default_value_t = 256)]
        batch_b: usize,
        #[arg(long, default_value = "7,14,20,21,27", value_delimiter = ',')]
        layers: Vec<usize>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
        #[arg(long)]
        dtype: Option<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Which methods to time: a, b or a,b.
        #[arg(long, default_value = "a,b", value_delimiter = ',')]
        methods: Vec<String>,
        /// Also time Method B with the fused CUDA kernels off (candle ops), same process.
        #[arg(long)]
        compare_unfused: bool,
        /// The whole study from disk to bundle instead: write a random-weight checkpoint of
        /// Qwen2.5-7B-Instruct's shape (or --config's) and two r = 32 adapters into DIR, run the
        /// real `extract` on base + em + benign (12 personas x --questions, --new-tokens,
        /// --layers) and print the time of every phase.
        #[arg(long, value_name = "DIR", conflicts_with = "arch")]
        full_study: Option<PathBuf>,
        /// With --full-study: a directory holding the Qwen2.5 tokenizer.json and
        /// tokenizer_config.json (e.g. the hf-tiny-qwen2 fixture's model/).
        #[arg(long, requires = "full_study")]
        tokenizer_from: Option<PathBuf>,
        /// With --full-study: questions per persona (the default study: 240).
        #[arg(long, default_value_t = 240)]
        questions: usize,
        /// Time the default study's own prompts instead of random ones: 12 personas x 240
        /// questions rendered with the chat template and tokenizer in DIR (tokenizer.json,
        /// tokenizer_config.json; e.g. the hf-tiny-qwen2 fixture's model/), sorted by persona
        /// then length. --prompts, --min-len and --max-len do not apply.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["full_study", "prompts", "min_len", "max_len"])]
        study_prompts: Option<PathBuf>,
        /// Write the prompts' token ids as JSON (for bench/hf_reference_workload.py
        /// --prompts-file, so that both sides run the same prompts).
        #[arg(long, value_name = "FILE", conflicts_with = "full_study")]
        dump_prompts: Option<PathBuf>,
    },
    /// Check this build against the Hugging Face fixture (hf-tiny-qwen2) on a device: prompts,
    /// ids and greedy generations exact, activations within 1e-4 (f32), bf16 agreement.
    VerifyFixture {
        /// The fixture directory (expected.json, model/, adapters/).
        fixture: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Train a LoRA adapter (SFT on chat conversations, Hugging Face Trainer + PEFT semantics):
    /// writes a PEFT adapter that `extract` merges. See docs/training.md.
    Train {
        #[command(flatten)]
        args: extractor::train::cli::TrainArgs,
    },
    /// Answer conversations (JSON Lines of {"messages": [...]}) with the model's own greedy
    /// replies: e.g. the null finetune's data (self-distillation). See docs/training.md.
    Generate {
        #[command(flatten)]
        args: extractor::generate::GenerateArgs,
    },
    /// Print a human summary of a bundle (shapes, provenance, sizes, validity counts).
    Inspect {
        bundle: PathBuf,
        /// Also write BUNDLE.head.json beside a compact bundle (what `compact` writes now): the
        /// page's first screen for bundles compacted before heads existed.
        #[arg(long)]
        write_head: bool,
    },
    /// Build a bundle from existing activations: an export (.npz, .safetensors, or a directory of
    /// .npy + meta.json), or a PyTorch .pt cache directory with --mapping.
    Import {
        source: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        /// TOML naming checkpoints (name, role, dir), methods and optional persona/question files;
        /// needed for a .pt cache (see README).
        #[arg(long)]
        mapping: Option<PathBuf>,
        /// What to do when a persona's question set differs between checkpoints.
        #[arg(long, value_enum, default_value = "refuse")]
        on_mismatch: extractor::import::OnMismatch,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Extract {
            study,
            out,
            resume,
            shard,
            devices,
            cuda_device,
        } => {
            use extractor::study::{resolve_shard, run_on_devices, run_study_with, ExtractOptions};
            let mut opts = ExtractOptions {
                output_override: out,
                resume,
                shard: None,
                cuda_ordinal: cuda_device,
            };
            match devices {
                Some(devices) => run_on_devices(&study, &opts, &devices).map(|_| ()),
                None => {
                    opts.shard = resolve_shard(shard.as_deref())?;
                    run_study_with(&study, &opts).map(|_| ())
                }
            }
        }
        Cmd::Merge { parts, out } => extractor::study::merge_parts(&parts, &out).map(|_| ()),
        Cmd::Analyze {
            bundle,
            out,
            permutations,
            m3_label_permutations,
            seed,
            bootstrap,
            components,
            m3_features,
            logistic_probe,
            folds,
            alpha,
            equivalence_delta,
            axis_persona,
            thresholds,
            figures,
        } => {
            extractor::keep_freed_memory();
            let primary = if thresholds.contains(&2.0) {
                2.0
            } else {
                thresholds.first().copied().unwrap_or(2.0)
            };
            let cfg = AnalysisConfig {
                permutations,
                m3_label_permutations,
                bootstrap,
                seed,
                components,
                folds,
                alpha,
                equivalence_delta,
                thresholds,
                primary_threshold: primary,
                axis_persona,
                m3_features: if m3_features == "components" {
                    M3Features::Components
                } else {
                    M3Features::FullActivations
                },
                logistic_probe,
                ..AnalysisConfig::default()
            };
            cmd_analysis::run_analyze(&bundle, &out, &cfg, figures)
        }
        Cmd::Compact {
            bundle,
            out,
            components,
            keep_texts,
            seed,
            reference,
        } => cmd_analysis::run_compact(
            &bundle,
            &out,
            components,
            keep_texts,
            seed,
            reference.as_deref(),
        ),
        Cmd::Synth {
            out,
            personas,
            questions,
            hidden,
            layers,
            methods,
            compression,
            rotation,
            separability_loss,
            benign_scale,
            spectrum_decay,
            noise,
            seed,
        } => {
            anyhow::ensure!(
                personas >= 2 && questions >= 5 && hidden >= 2,
                "synth needs >= 2 personas, >= 5 questions and hidden >= 2"
            );
            let spec = SynthSpec {
                personas,
                questions,
                hidden,
                layers,
                methods: cmd_analysis::parse_methods(&methods)?,
                compression,
                rotation,
                separability_loss,
                benign_scale,
                spectrum_decay,
                noise,
                seed,
                ..SynthSpec::default()
            };
            cmd_analysis::run_synth(&out, &spec)
        }
        Cmd::Export {
            bundle,
            format,
            out,
        } => cmd_analysis::run_export(&bundle, &format, &out),
        Cmd::Inspect { bundle, write_head } => cmd_analysis::run_inspect(&bundle, write_head),
        Cmd::Train { args } => {
            let cfg = args.to_config()?;
            extractor::train::run::run_train(&cfg, args.resume).map(|_| ())
        }
        Cmd::Generate { args } => extractor::generate::run_generate(&args),
        Cmd::VerifyFixture { fixture, device } => extractor::fixture_check::verify(
            &fixture,
            &extractor::study::device_from(Some(&device))?,
        ),
        Cmd::BenchWorkload {
            config,
            arch,
            prompts,
            min_len,
            max_len,
            new_tokens,
            batch_a,
            batch_b,
            layers,
            device,
            dtype,
            seed,
            methods,
            compare_unfused,
            full_study,
            tokenizer_from,
            questions,
            study_prompts,
            dump_prompts,
        } => {
            if let Some(dir) = full_study {
                let device_name = device.clone();
                let device = extractor::study::device_from(Some(&device))?;
                let dtype = extractor::study::dtype_from(dtype.as_deref(), &device)?;
                let config_json = match &config {
                    Some(p) => std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                    None => extractor::full_study::QWEN25_7B_CONFIG.to_string(),
                };
                return extractor::full_study::run(&extractor::full_study::FullStudyArgs {
                    dir,
                    tokenizer_from: tokenizer_from.context(
                        "--full-study needs --tokenizer-from DIR (the Qwen2.5 tokenizer.json and tokenizer_config.json)",
                    )?,
                    config_json,
                    questions,
                    new_tokens,
                    layers,
                    device,
                    device_name,
                    dtype,
                });
            }
            anyhow::ensure!(
                methods.iter().all(|m| m == "a" || m == "b"),
                "bench-workload --methods: expected a, b or a,b, got {}",
                methods.join(",")
            );
            anyhow::ensure!(
                min_len >= 1 && max_len >= min_len && prompts >= 1,
                "bench-workload: need 1 <= min_len <= max_len and at least one prompt (batch 0 = from free device memory)"
            );
            let device = extractor::study::device_from(Some(&device))?;
            let dtype = extractor::study::dtype_from(dtype.as_deref(), &device)?;
            extractor::workload::run(&extractor::workload::WorkloadArgs {
                config,
                arch,
                prompts,
                min_len,
                max_len,
                new_tokens,
                batch_a,
                batch_b,
                layers,
                device,
                dtype,
                seed,
                method_a: methods.iter().any(|m| m == "a"),
                method_b: methods.iter().any(|m| m == "b"),
                compare_unfused,
                study_prompts,
                dump_prompts,
            })
        }
        Cmd::Import {
            source,
            out,
            mapping,
            on_mismatch,
        } => {
            let b = extractor::import::import(&source, mapping.as_deref(), on_mismatch)?;
            let n = extractor::io_util::write_bundle(&out, &b)?;
            eprintln!(
                "wrote {} ({:.2} MB): {} checkpoints, {} personas, {} questions, hidden {}",
                out.display(),
                n as f64 / 1e6,
                b.checkpoints.len(),
                b.n_personas(),
                b.n_questions(),
                b.hidden_size
            );
            Ok(())
        }
    }
}
