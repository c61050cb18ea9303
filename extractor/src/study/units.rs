//! The extraction run's units (checkpoint x method x persona) in `<output>.parts/`, each
//! written atomically, and the manifest that makes `--resume` byte-identical.

use super::*;

/// One finished unit: (checkpoint, method, persona) over all questions.
#[derive(Serialize, Deserialize)]
pub(super) struct Unit {
    pub(super) config_hash: String,
    /// questions x layers x hidden
    pub(super) per_question: Vec<f32>,
    pub(super) valid: Vec<bool>,
    pub(super) texts: Vec<String>,
    pub(super) token_counts: Vec<u32>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Manifest {
    config_hash: String,
    created: String,
    /// Set in a shard's part directory (`extract --shard I/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<super::shard::ShardSpec>,
}

fn today() -> String {
    // Days since the epoch -> civil date (no chrono dependency for one line of provenance).
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let z = secs / 86_400 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

pub(super) fn unit_path(parts: &Path, ck: usize, m: Method, p: usize) -> PathBuf {
    parts.join(format!("ck{ck}_{}_p{p}.unit", m.name()))
}

/// The run directory of a whole-study run: `<output>.parts/`.
pub(super) fn parts_dir(output: &Path) -> PathBuf {
    PathBuf::from(format!("{}.parts", output.display()))
}

/// Opens (or, with `resume`, reopens) the run directory `parts` (`<output>.parts/`, or a shard's
/// part directory) of a run whose configuration hashes to `config_hash`: a directory of another
/// configuration or shard, or one left without `--resume`, is refused. Returns the run's
/// creation date.
pub(super) fn open_parts(
    parts: &Path,
    config_hash: &str,
    shard: Option<super::shard::ShardSpec>,
    resume: bool,
) -> Result<String> {
    let config_hash = config_hash.to_string();
    let manifest_path = parts.join("manifest.json");
    let created = if manifest_path.exists() {
        let m: Manifest = serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        if m.config_hash != config_hash {
            bail!(
                "{} holds units of a run with a different configuration (model files, adapters, personas, questions, layers, methods, generation or batch size changed); they are never mixed in. Delete that directory to start over, or restore the original study",
                parts.display()
            );
        }
        if m.shard != shard {
            bail!(
                "{} holds units of {}, not of {}; give the matching --shard, or delete that directory to start over",
                parts.display(),
                super::shard::describe(m.shard),
                super::shard::describe(shard)
            );
        }
        if !resume {
            bail!("{} holds units of an interrupted run of this study; pass --resume to continue it (or delete the directory to start over)", parts.display());
        }
        m.created
    } else {
        std::fs::create_dir_all(parts).with_context(|| format!("creating {}", parts.display()))?;
        let m = Manifest {
            config_hash: config_hash.clone(),
            created: today(),
            shard,
        };
        write_atomic(&manifest_path, serde_json::to_string_pretty(&m)?.as_bytes())?;
        m.created
    };
    Ok(created)
}

/// Where unit (checkpoint, method, persona) lies: one run directory, or (merge) the part that
/// holds it.
pub(super) type UnitLocator<'a> = &'a dyn Fn(usize, Method, usize) -> PathBuf;

/// The units of checkpoint `ck`, [method][persona], each checked to belong to this run.
pub(super) fn read_units(
    locate: UnitLocator,
    ck: usize,
    methods: &[Method],
    personas: usize,
    config_hash: &str,
    per_question_len: usize,
    questions: usize,
) -> Result<Vec<Vec<Unit>>> {
    let mut by_method: Vec<Vec<Unit>> = Vec::new();
    for &m in methods {
        let mut units = Vec::new();
        for pi in 0..personas {
            let up = locate(ck, m, pi);
            let u: Unit = postcard::from_bytes(
                &std::fs::read(&up).with_context(|| format!("reading {}", up.display()))?,
            )
            .with_context(|| {
                format!(
                    "{} is corrupt; delete it and rerun with --resume",
                    up.display()
                )
            })?;
            if u.config_hash != config_hash
                || u.per_question.len() != per_question_len
                || u.valid.len() != questions
            {
                bail!(
                    "{} does not belong to this run; delete it and rerun with --resume",
                    up.display()
                );
            }
            units.push(u);
        }
        by_method.push(units);
    }
    Ok(by_method)
}
