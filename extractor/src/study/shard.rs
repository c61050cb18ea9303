//! Sharded extraction (scale-out): a deterministic, token-balanced split of a study's units over
//! N processes (SLURM array tasks, Kubernetes Indexed Job pods, one worker per GPU of a host),
//! each writing a part directory, and `merge`, which checks that the parts come from one study
//! and hold every unit exactly once, then assembles the bundle a single run writes, byte for
//! byte (same [`assemble_bundle`], same header, same units).
//!
//! The split's unit is (checkpoint, persona) over all questions and methods: a single run
//! extracts exactly these units with the same batches, so a shard's unit files are the same
//! bytes as a single run's. (Splitting one persona's questions over shards would change the
//! batches, and with them the last bits of bf16 arithmetic.)

use super::assemble::{assemble_bundle, bundle_header, BundleHeader};
use super::checkpoint::{checkpoint_model, extract_checkpoint, persona_group, persona_group_size};
use super::run::{ExtractOptions, Prepared};
use super::units::{open_parts, unit_path};
use super::*;
use std::collections::BTreeMap;

/// Shard `index` of `count` (0-based, as SLURM array task ids and Kubernetes completion
/// indexes are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl ShardSpec {
    pub fn new(index: usize, count: usize, what: &str) -> Result<Self> {
        if count == 0 {
            bail!("{what}: the shard count must be at least 1");
        }
        if index >= count {
            bail!("{what}: shard index {index} is not below the shard count {count} (indexes are 0-based: 0..{})", count - 1);
        }
        Ok(ShardSpec { index, count })
    }

    /// `I/N`, 0-based: `--shard 0/4` .. `--shard 3/4`.
    pub fn parse(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s}: expected I/N, e.g. 0/4 (0-based index)"))?;
        let num = |x: &str| -> Result<usize> {
            x.trim()
                .parse()
                .with_context(|| format!("--shard {s}: `{x}` is not a whole number"))
        };
        Self::new(num(i)?, num(n)?, &format!("--shard {s}"))
    }

    /// The shard the scheduler assigned, from the environment: a SLURM job array
    /// (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN`, over `SLURM_ARRAY_TASK_COUNT`, stepping
    /// by `SLURM_ARRAY_TASK_STEP`) first, then a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`
    /// over `PG_SHARD_COUNT`, which the Job's manifest sets to its `completions`). Returns the
    /// shard and where it came from, or None outside such jobs.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<(Self, String)>> {
        let num = |name: &str| -> Result<Option<usize>> {
            env(name)
                .map(|v| {
                    v.trim().parse::<usize>().with_context(|| {
                        format!("environment variable {name}={v:?} is not a whole number")
                    })
                })
                .transpose()
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let count = num("SLURM_ARRAY_TASK_COUNT")?.context(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; give --shard I/N",
            )?;
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            if id < min || (id - min) % step != 0 {
                bail!("SLURM_ARRAY_TASK_ID={id} is not in the array {min}..(step {step}); give --shard I/N");
            }
            let what = format!("SLURM_ARRAY_TASK_ID={id} (min {min}, step {step}, count {count})");
            return Ok(Some((Self::new((id - min) / step, count, &what)?, what)));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("PG_SHARD_COUNT")?.context(
                "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but PG_SHARD_COUNT is not: set it to the Job's `completions` in the manifest (docs/scale-out.md), or give --shard I/N",
            )?;
            let what = format!("JOB_COMPLETION_INDEX={index}, PG_SHARD_COUNT={count}");
            return Ok(Some((Self::new(index, count, &what)?, what)));
        }
        Ok(None)
    }

    /// The part directory of this shard of the bundle `output`.
    pub fn part_dir(&self, output: &Path) -> PathBuf {
        PathBuf::from(format!(
            "{}.shard-{}-of-{}",
            output.display(),
            self.index,
            self.count
        ))
    }
}

pub(super) fn describe(shard: Option<ShardSpec>) -> String {
    match shard {
        Some(s) => format!("shard {}/{}", s.index, s.count),
        None => "a whole-study run".into(),
    }
}

/// The shard of every unit: units (in order) split into `count` contiguous ranges of about
/// equal total cost. A unit goes to the shard whose share of the total holds the unit's
/// midpoint, so every shard's cost is within one unit of total/count, and a shard touches few
/// checkpoints (few adapter merges). Integer arithmetic: the same on every host.
pub fn assign(costs: &[u64], count: usize) -> Vec<usize> {
    let total: u128 = costs.iter().map(|&c| c as u128).sum::<u128>().max(1);
    let mut before = 0u128;
    costs
        .iter()
        .map(|&c| {
            let mid2 = 2 * before + c as u128;
            before += c as u128;
            ((mid2 * count as u128) / (2 * total)).min(count as u128 - 1) as usize
        })
        .collect()
}

/// `assign` over groups of units rather than units: the units of a checkpoint's personas
/// `g·k .. (g+1)·k` (`personas` per checkpoint, units in checkpoint-major order) go to one
/// shard together, since they are batched together (`persona_group_size`): a shard then runs
/// the same batches as the whole study and writes the same bytes.
pub fn assign_groups(costs: &[u64], personas: usize, k: usize, count: usize) -> Vec<usize> {
    let group_of = |u: usize| (u / personas.max(1), persona_group(u % personas.max(1), k));
    let mut group_costs: Vec<u64> = Vec::new();
    let mut group_index = Vec::with_capacity(costs.len());
    for (u, &c) in costs.iter().enumerate() {
        if u == 0 || group_of(u) != group_of(u - 1) {
            group_costs.push(0);
        }
        *group_costs.last_mut().expect("pushed above") += c;
        group_index.push(group_costs.len() - 1);
    }
    let owner = assign(&group_costs, count);
    group_index.into_iter().map(|g| owner[g]).collect()
}

/// What a finished shard leaves in `part.json` beside its unit files: enough for `merge` to
/// check it and assemble the bundle without the model.
#[derive(Serialize, Deserialize)]
pub(super) struct PartRecord {
    pub format: String,
    pub shard: ShardSpec,
    pub config_hash: String,
    /// What the configuration hash is of (to name what differs between parts).
    pub config: serde_json::Value,
    pub created: String,
    pub header: BundleHeader,
    /// Checkpoint names, all of the study's (units name their checkpoint by index).
    pub checkpoint_names: Vec<String>,
    /// The (checkpoint, persona) units of this shard, each with every method.
    pub units: Vec<(usize, usize)>,
    /// The bundle entries of the checkpoints this shard ran (adapter provenance, ...).
    pub checkpoints: Vec<(usize, Checkpoint)>,
}

const PART_FORMAT: &str = "persona-geometry part 1";
const PART_RECORD: &str = "part.json";

/// The cost of each (checkpoint, persona) unit in tokens: the prompts' lengths plus the new
/// tokens Method B may generate, summed over questions.
fn unit_costs(pr: &Prepared) -> Vec<u64> {
    let rs = &pr.rs;
    let st = &rs.study;
    let new_tokens = if rs.methods.contains(&Method::B) {
        st.generation.max_new_tokens as u64
    } else {
        0
    };
    let per_persona: Vec<u64> = pr
        .prompt_ids
        .iter()
        .map(|ids| ids.iter().map(|p| p.len() as u64 + new_tokens).sum())
        .collect();
    (0..st.checkpoints.len())
        .flat_map(|_| per_persona.iter().copied())
        .collect()
}

/// Runs shard `shard` of the study into its part directory and records it as finished.
pub(super) fn run_shard(pr: &Prepared, shard: ShardSpec, resume: bool) -> Result<PathBuf> {
    let rs = &pr.rs;
    let st = &rs.study;
    let dir = shard.part_dir(&rs.output);
    let record_path = dir.join(PART_RECORD);
    if record_path.exists() {
        let rec = read_record(&dir)?;
        if rec.config_hash == pr.config_hash && rec.shard == shard {
            eprintln!(
                "{}: shard {}/{} is already finished; nothing to do",
                dir.display(),
                shard.index,
                shard.count
            );
            return Ok(dir);
        }
        bail!(
            "{} holds a finished part of {} of another study configuration; delete it to run this one",
            dir.display(),
            describe(Some(rec.shard))
        );
    }
    let created = open_parts(&dir, &pr.config_hash, Some(shard), resume)?;
    let p = rs.personas.len();
    let costs = unit_costs(pr);
    let owner = assign_groups(
        &costs,
        p,
        persona_group_size(st, rs.questions.len()),
        shard.count,
    );
    let mine: Vec<usize> = (0..owner.len())
        .filter(|&u| owner[u] == shard.index)
        .collect();
    let my_tokens: u64 = mine.iter().map(|&u| costs[u]).sum();
    let mut by_checkpoint: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &u in &mine {
        by_checkpoint.entry(u / p).or_default().push(u % p);
    }
    eprintln!(
        "shard {}/{}: {} of {} units (checkpoint x persona), ~{} of {} tokens, checkpoints [{}]; part directory {}",
        shard.index,
        shard.count,
        mine.len(),
        owner.len(),
        my_tokens,
        costs.iter().sum::<u64>(),
        by_checkpoint
            .keys()
            .map(|&ck| st.checkpoints[ck].name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    );
    if mine.is_empty() {
        eprintln!(
            "warning: shard {}/{} has no units (more shards than units); its part is empty",
            shard.index, shard.count
        );
    }
    let run = pr.inputs(&dir);
    let mut units_written = 0usize;
    let mut checkpoints = Vec::new();
    // Adapters are merged once per shard, for the checkpoints it has units of.
    for (&ck, personas) in &by_checkpoint {
        let (model, checkpoint) = checkpoint_model(&run, ck)?;
        checkpoints.push((ck, checkpoint));
        extract_checkpoint(&run, ck, personas, &model, &mut units_written)?;
    }
    let rec = PartRecord {
        format: PART_FORMAT.into(),
        shard,
        config_hash: pr.config_hash.clone(),
        config: pr.config.clone(),
        created,
        header: bundle_header(&run),
        checkpoint_names: st.checkpoints.iter().map(|c| c.name.clone()).collect(),
        units: mine.iter().map(|&u| (u / p, u % p)).collect(),
        checkpoints,
    };
    write_atomic(&record_path, serde_json::to_string(&rec)?.as_bytes())?;
    eprintln!(
        "shard {}/{} finished: {}. When every shard has finished: persona-geometry merge {}.shard-*-of-{} -o {}",
        shard.index,
        shard.count,
        dir.display(),
        rs.output.display(),
        shard.count,
        rs.output.display()
    );
    Ok(dir)
}

fn read_record(dir: &Path) -> Result<PartRecord> {
    let path = dir.join(PART_RECORD);
    if !path.exists() {
        let started = dir.join("manifest.json").exists();
        bail!(
            "{}: {}; rerun that shard (`persona-geometry extract STUDY --shard I/N{}` with its I/N, from the directory name), then merge again",
            dir.display(),
            if started {
                "this shard did not finish (no part.json)"
            } else if dir.is_dir() {
                "not a part directory of `extract --shard` (no part.json)"
            } else {
                "no such directory"
            },
            if started { " --resume" } else { "" }
        );
    }
    let rec: PartRecord = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is damaged; rerun that shard", path.display()))?;
    if rec.format != PART_FORMAT {
        bail!(
            "{}: format `{}` is not `{PART_FORMAT}` (written by another version of the tool); rerun that shard with this one",
            path.display(),
            rec.format
        );
    }
    Ok(rec)
}

/// The top-level entries of two study configurations that differ (`model`, `adapters`, ...).
fn config_differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["(unreadable configuration)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

/// `merge PARTS... -o BUNDLE`: checks that every part is a finished shard of the same study and
/// that every unit is held exactly once, then writes the bundle (byte-identical to a single
/// run's of that study on the day the earliest shard started). The parts are left in place.
pub fn merge_parts(parts: &[PathBuf], out: &Path) -> Result<PathBuf> {
    if parts.is_empty() {
        bail!("merge: give the part directories of every shard (`<output>.shard-I-of-N`)");
    }
    let records: Vec<PartRecord> = parts
        .iter()
        .map(|d| read_record(d))
        .collect::<Result<_>>()?;
    let first = &records[0];
    for (d, r) in parts.iter().zip(&records).skip(1) {
        if r.config_hash != first.config_hash {
            bail!(
                "{} and {} come from different studies (configuration hash {} vs {}): they differ in {}. Parts of one study only: rerun the odd shard with the study's files",
                parts[0].display(),
                d.display(),
                first.config_hash.get(..12).unwrap_or(&first.config_hash),
                r.config_hash.get(..12).unwrap_or(&r.config_hash),
                config_differences(&first.config, &r.config).join(", ")
            );
        }
        if r.header != first.header {
            let fields: Vec<String> = first
                .header
                .provenance
                .extra
                .iter()
                .filter(|e| !r.header.provenance.extra.contains(e))
                .map(|(k, _)| k.clone())
                .collect();
            bail!(
                "{} and {} have the same configuration but different bundle provenance ({}): were the shards run from different model paths or study files? Run every shard with the same files and paths",
                parts[0].display(),
                d.display(),
                if fields.is_empty() { "header".into() } else { fields.join(", ") }
            );
        }
    }
    let header = &first.header;
    let names = &first.checkpoint_names;
    let (n_ck, n_p) = (names.len(), header.personas.len());
    let unit_name = |ck: usize, p: usize| {
        format!(
            "checkpoint `{}`, persona `{}`",
            names.get(ck).map(String::as_str).unwrap_or("?"),
            header
                .personas
                .get(p)
                .map(|x| x.name.as_str())
                .unwrap_or("?")
        )
    };
    // Who holds each unit.
    let mut holders: Vec<Vec<usize>> = vec![Vec::new(); n_ck * n_p];
    for (i, r) in records.iter().enumerate() {
        for &(ck, p) in &r.units {
            if ck >= n_ck || p >= n_p {
                bail!(
                    "{}: unit (checkpoint {ck}, persona {p}) is outside the study ({n_ck} checkpoints x {n_p} personas); the part is damaged: rerun that shard",
                    parts[i].display()
                );
            }
            holders[ck * n_p + p].push(i);
        }
    }
    let duplicates: Vec<String> = holders
        .iter()
        .enumerate()
        .filter(|(_, h)| h.len() > 1)
        .map(|(u, h)| {
            format!(
                "{} (in {})",
                unit_name(u / n_p, u % n_p),
                h.iter()
                    .map(|&i| parts[i].display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        })
        .collect();
    if !duplicates.is_empty() {
        bail!(
            "{} unit(s) are in more than one part: {}{}. Give each shard's part once (parts of one split: the same N)",
            duplicates.len(),
            duplicates[..duplicates.len().min(5)].join("; "),
            if duplicates.len() > 5 { "; ..." } else { "" }
        );
    }
    let missing: Vec<usize> = (0..n_ck * n_p).filter(|&u| holders[u].is_empty()).collect();
    if !missing.is_empty() {
        let counts: Vec<usize> = records.iter().map(|r| r.shard.count).collect();
        let absent: Vec<String> = if counts.iter().all(|&c| c == counts[0]) {
            (0..counts[0])
                .filter(|i| !records.iter().any(|r| r.shard.index == *i))
                .map(|i| format!("{i}/{}", counts[0]))
                .collect()
        } else {
            Vec::new()
        };
        bail!(
            "{} unit(s) are in no part: {}{}.{}",
            missing.len(),
            missing[..missing.len().min(5)]
                .iter()
                .map(|&u| unit_name(u / n_p, u % n_p))
                .collect::<Vec<_>>()
                .join("; "),
            if missing.len() > 5 { "; ..." } else { "" },
            if absent.is_empty() {
                String::new()
            } else {
                format!(
                    " Shard(s) not given: {} (run `persona-geometry extract STUDY --shard I/N` for each, then merge every part)",
                    absent.join(", ")
                )
            }
        );
    }
    // One entry per checkpoint; shards that ran the same checkpoint must agree on it.
    let mut checkpoints: Vec<Option<Checkpoint>> = vec![None; n_ck];
    for (i, r) in records.iter().enumerate() {
        for (ck, c) in &r.checkpoints {
            match &checkpoints[*ck] {
                Some(prev) if prev != c => bail!(
                    "{}: checkpoint `{}` has different provenance than in another part (adapter files changed between shards?); rerun the shards with the same files",
                    parts[i].display(),
                    c.name
                ),
                _ => checkpoints[*ck] = Some(c.clone()),
            }
        }
    }
    let checkpoints: Vec<Checkpoint> = checkpoints
        .into_iter()
        .enumerate()
        .map(|(ck, c)| {
            c.with_context(|| {
                format!(
                    "checkpoint `{}` has units but no entry in their part; the part is damaged: rerun its shard",
                    names[ck]
                )
            })
        })
        .collect::<Result<_>>()?;
    let created = records
        .iter()
        .map(|r| r.created.clone())
        .min()
        .unwrap_or_default();
    let locate =
        |ck: usize, m: Method, p: usize| unit_path(&parts[holders[ck * n_p + p][0]], ck, m, p);
    let bundle = assemble_bundle(header, checkpoints, created, &locate)?;
    let n = write_bundle(out, &bundle)?;
    eprintln!(
        "merged {} parts ({} units) into {} ({:.2} MB)",
        parts.len(),
        n_ck * n_p,
        out.display(),
        n as f64 / 1e6
    );
    Ok(out.to_path_buf())
}

/// `extract --devices 0,1,..`: one worker process per device, each running shard k of N with
/// CUDA ordinal devices[k], one combined progress bar (units on disk), then the merge; the part
/// directories are removed once the bundle is written. A worker that fails leaves its part for
/// `--resume`; the others finish first.
pub fn run_on_devices(path: &Path, opts: &ExtractOptions, devices: &[usize]) -> Result<PathBuf> {
    if devices.is_empty() {
        bail!("--devices: give at least one device ordinal, e.g. --devices 0,1");
    }
    let rs = read_study(path, opts.output_override.as_deref())?;
    let n = devices.len();
    let total_units = (rs.study.checkpoints.len() * rs.personas.len() * rs.methods.len()) as u64;
    let exe = std::env::current_exe().context("locating this program to start its workers")?;
    if let Some(dir) = rs.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let shards: Vec<ShardSpec> = (0..n).map(|k| ShardSpec { index: k, count: n }).collect();
    let mut children = Vec::new();
    for (shard, &dev) in shards.iter().zip(devices) {
        let log = PathBuf::from(format!("{}.log", shard.part_dir(&rs.output).display()));
        let logf = std::fs::File::create(&log)
            .with_context(|| format!("creating worker log {}", log.display()))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("extract")
            .arg(path)
            .arg("--shard")
            .arg(format!("{}/{}", shard.index, n))
            .arg("--cuda-device")
            .arg(dev.to_string())
            .arg("--out")
            .arg(&rs.output)
            .stdout(logf.try_clone()?)
            .stderr(logf);
        if opts.resume {
            cmd.arg("--resume");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting worker {} on device {dev}", shard.index))?;
        children.push((shard, dev, log, child));
    }
    eprintln!(
        "{n} workers (devices {:?}), logs in {}.shard-*-of-{n}.log",
        devices,
        rs.output.display()
    );
    let bar = indicatif::ProgressBar::new(total_units);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} units ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{n} devices"));
    let count_units = || -> u64 {
        shards
            .iter()
            .filter_map(|s| std::fs::read_dir(s.part_dir(&rs.output)).ok())
            .flat_map(|d| d.filter_map(|e| e.ok()))
            .filter(|e| e.file_name().to_string_lossy().ends_with(".unit"))
            .count() as u64
    };
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let mut last_line = std::time::Instant::now();
    while status.iter().any(Option::is_none) {
        for (k, (_, _, _, child)) in children.iter_mut().enumerate() {
            if status[k].is_none() {
                status[k] = child.try_wait()?;
            }
        }
        let done = count_units();
        bar.set_position(done);
        if bar.is_hidden() && last_line.elapsed().as_secs() >= 30 {
            eprintln!("{done}/{total_units} units on disk");
            last_line = std::time::Instant::now();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bar.finish();
    let failed: Vec<String> = children
        .iter()
        .zip(&status)
        .filter(|(_, s)| !s.is_some_and(|s| s.success()))
        .map(|((shard, dev, log, _), s)| {
            let tail = std::fs::read_to_string(log)
                .ok()
                .and_then(|t| t.lines().last().map(str::to_string))
                .unwrap_or_default();
            format!(
                "worker {}/{} on device {dev} ({}): {tail} (log {})",
                shard.index,
                n,
                s.map(|s| s.to_string()).unwrap_or_default(),
                log.display()
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {n} workers failed; finished units are kept, rerun the same command with --resume:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    let dirs: Vec<PathBuf> = shards.iter().map(|s| s.part_dir(&rs.output)).collect();
    merge_parts(&dirs, &rs.output)?;
    for ((_, _, log, _), d) in children.iter().zip(&dirs) {
        std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        let _ = std::fs::remove_file(log);
    }
    Ok(rs.output.clone())
}

/// The shard this `extract` runs: `--shard` (`all` = the whole study, ignoring the scheduler's
/// variables), else the scheduler's environment, else none.
pub fn resolve_shard(flag: Option<&str>) -> Result<Option<ShardSpec>> {
    match flag {
        Some("all") => Ok(None),
        Some(s) => ShardSpec::parse(s).map(Some),
        None => Ok(
            ShardSpec::from_env(&|k| std::env::var(k).ok())?.map(|(s, what)| {
                eprintln!(
                    "shard {}/{} from {what} (give --shard all to run the whole study instead)",
                    s.index, s.count
                );
                s
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_is_contiguous_balanced_and_covers_every_shard() {
        // 12 personas x 10 checkpoints with uneven costs, 8 shards.
        let costs: Vec<u64> = (0..120).map(|u| 1000 + (u as u64 % 12) * 37).collect();
        let owner = assign(&costs, 8);
        assert!(owner.windows(2).all(|w| w[0] <= w[1]), "contiguous");
        assert_eq!((owner[0], owner[119]), (0, 7));
        let total: u64 = costs.iter().sum();
        let max_unit = *costs.iter().max().unwrap();
        for s in 0..8 {
            let c: u64 = (0..120).filter(|&u| owner[u] == s).map(|u| costs[u]).sum();
            assert!(
                (c as i64 - (total / 8) as i64).unsigned_abs() <= max_unit,
                "shard {s}: {c} vs {}",
                total / 8
            );
        }
        // Known answer: equal costs split evenly.
        assert_eq!(assign(&[5; 6], 3), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(assign(&[5; 6], 1), vec![0; 6]);
        // More shards than units: each unit its own shard, some shards empty.
        assert_eq!(assign(&[1, 1], 4), vec![1, 3]);
        // Groups of personas stay in one shard: 2 checkpoints x 4 personas in pairs, 3
        // shards; equal costs give 4 groups of 2 units to 3 shards, cut between groups only.
        assert_eq!(
            assign_groups(&[5; 8], 4, 2, 3),
            vec![0, 0, 1, 1, 1, 1, 2, 2]
        );
        // Group size 1 is `assign`; a last group may be short (5 personas in pairs).
        assert_eq!(assign_groups(&[5; 6], 3, 1, 3), assign(&[5; 6], 3));
        // Group costs [2, 2, 1, 18, 18, 9] (total 50): midpoints 1, 3, 4.5, 14 fall in the
        // first half, 32 and 45.5 in the second; checkpoint 1's first pair stays together.
        assert_eq!(
            assign_groups(&[1, 1, 1, 1, 1, 9, 9, 9, 9, 9], 5, 2, 2),
            vec![0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
        );
    }

    #[test]
    fn shard_from_flag_and_scheduler_environment() {
        assert_eq!(
            ShardSpec::parse("2/4").unwrap(),
            ShardSpec { index: 2, count: 4 }
        );
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(ShardSpec::parse(bad).is_err(), "{bad}");
        }
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = ShardSpec::from_env(&env(&[])).unwrap();
        assert!(none.is_none());
        // SLURM: --array=1-8 gives ids 1..8, min 1.
        let (s, _) = ShardSpec::from_env(&env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s, ShardSpec { index: 2, count: 8 });
        // SLURM comes before Kubernetes.
        let (s, what) = ShardSpec::from_env(&env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("JOB_COMPLETION_INDEX", "1"),
            ("PG_SHARD_COUNT", "4"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s, what.contains("SLURM")),
            (ShardSpec { index: 0, count: 2 }, true)
        );
        let (s, _) = ShardSpec::from_env(&env(&[
            ("JOB_COMPLETION_INDEX", "3"),
            ("PG_SHARD_COUNT", "4"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s, ShardSpec { index: 3, count: 4 });
        let e = ShardSpec::from_env(&env(&[("JOB_COMPLETION_INDEX", "3")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PG_SHARD_COUNT"), "{e}");
        let e = ShardSpec::from_env(&env(&[
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not below"), "{e}");
    }
}
