//! One checkpoint of a study: its model (adapter merged, steering set, provenance) and the
//! extraction of its units.

use super::units::{unit_path, Unit};
use super::*;

/// What every checkpoint of a run shares.
pub(super) struct RunInputs<'a> {
    pub rs: &'a ResolvedStudy,
    pub loaded: &'a LoadedModel,
    pub template: &'a ChatTemplate,
    pub device: &'a Device,
    pub dtype: DType,
    pub config_hash: &'a str,
    /// `Prepared::prompt_ids`: [persona][question] token ids.
    pub prompt_ids: &'a [Vec<Vec<u32>>],
    pub parts: &'a Path,
}

/// The model of checkpoint `ck` (adapter merged, steering set) and its bundle entry.
pub(super) fn checkpoint_model(run: &RunInputs, ck: usize) -> Result<(Model, Checkpoint)> {
    let (rs, loaded, device, dtype) = (run.rs, run.loaded, run.device, run.dtype);
    let st = &rs.study;
    let cspec = &st.checkpoints[ck];
    let mut weights = loaded.weights.clone();
    let mut prov: Vec<(String, String)> = Vec::new();
    if let Some(arm) = &cspec.arm {
        prov.push(("arm".into(), arm.clone()));
    }
    if let Some(a) = &cspec.adapter {
        let rep = runtime::phases::time("merge adapter", || {
            merge_adapter(
                a,
                &mut weights,
                &st.model.id,
                cspec.allow_base_mismatch,
                device,
            )
        })
        .with_context(|| format!("checkpoint `{}`", cspec.name))?;
        prov.extend(rep.provenance);
    }
    let mut model = runtime::phases::time("build model on the device", || {
        Model::new(loaded.cfg.clone(), weights, device, dtype)
    })?;
    if let Some(s) = &cspec.steer {
        let v = steering_vector(s, run)
            .with_context(|| format!("checkpoint `{}`: steering", cspec.name))?;
        prov.push(("steer.layer".into(), s.layer.to_string()));
        prov.push(("steer.alpha".into(), s.alpha.to_string()));
        match s.random_seed {
            Some(seed) => prov.push((
                "steer.direction".into(),
                format!("random unit vector, seed {seed}"),
            )),
            None => prov.push((
                "steer.direction".into(),
                format!(
                    "unit(centroid({}) - centroid({})), Method A on base",
                    s.towards.clone().unwrap_or_default(),
                    s.away_from.clone().unwrap_or_default()
                ),
            )),
        }
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        prov.push(("steer.vector_sha256".into(), sha256_hex(&bytes)));
        model.set_steering(Some(Steering {
            layer: s.layer,
            vector: v,
        }))?;
    }
    let checkpoint = Checkpoint {
        name: cspec.name.clone(),
        role: Role::parse(&cspec.role),
        label: cspec.label.clone().unwrap_or_else(|| cspec.name.clone()),
        provenance: prov,
    };
    Ok((model, checkpoint))
}

/// How many personas' questions are batched together (decoded as one batch): as many as fit
/// in the study's batch size (`"auto"`: `MAX_AUTO_BATCH` rows), at least one. A function of the
/// study alone, never of the device or of what is done already, so that every run of a study
/// (whole, sharded, resumed) batches the same rows together and writes the same bytes: groups
/// are personas `g·k .. (g+1)·k`, and shards are cut at group boundaries (`shard::assign_groups`).
/// The default study (240 questions) decodes 3 personas (720 rows) at a time instead of one
/// (240 rows); a study of 40 questions all 12 at once.
pub(super) fn persona_group_size(st: &Study, questions: usize) -> usize {
    let rows = match st.batch_size {
        BatchSize::Fixed(n) => n,
        BatchSize::Named(_) => crate::extract::MAX_AUTO_BATCH,
    };
    (rows / questions.max(1)).max(1)
}

/// Which group persona `pi` is decoded in, for groups of `k` personas (`persona_group_size`):
/// personas g·k .. (g+1)·k form group g. Checkpoints and shards both cut by it.
pub(super) fn persona_group(pi: usize, k: usize) -> usize {
    pi / k.max(1)
}

/// One persona's results in a checkpoint: Method A and B per question and layer, which B
/// vectors exist (an empty answer has none), the answers and their token counts.
struct PersonaOut {
    a: Vec<f32>,
    b: Vec<f32>,
    b_valid: Vec<bool>,
    texts: Vec<String>,
    counts: Vec<u32>,
}

/// Extracts the units of checkpoint `ck` for the personas `personas` (all of them, or a shard's
/// share) that are not on disk yet, a group of personas (`persona_group_size`) at a time: a
/// group with any unit missing is computed whole (the same batches as a run that did it in one
/// go) and its missing units are written. `units_written` counts units across checkpoints (the
/// resume test's abort hook).
pub(super) fn extract_checkpoint(
    run: &RunInputs,
    ck: usize,
    personas: &[usize],
    model: &Model,
    units_written: &mut usize,
) -> Result<()> {
    let (rs, loaded, template, parts) = (run.rs, run.loaded, run.template, run.parts);
    let st = &rs.study;
    let cspec = &st.checkpoints[ck];
    let config_hash = run.config_hash.to_string();
    let (q, nl) = (rs.questions.len(), st.layers.len());
    let h = loaded.cfg.hidden_size;
    let missing = |pi: usize, m: Method| !unit_path(parts, ck, m, pi).exists();
    let k = persona_group_size(st, q);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &pi in personas {
        match groups.last_mut() {
            Some(g) if persona_group(g[0], k) == persona_group(pi, k) => g.push(pi),
            _ => groups.push(vec![pi]),
        }
    }
    groups.retain(|g| {
        g.iter()
            .any(|&pi| rs.methods.iter().any(|&m| missing(pi, m)))
    });
    if groups.is_empty() {
        eprintln!("checkpoint {}: all units already done", cspec.name);
        return Ok(());
    }
    let ex = Extractor {
        model,
        tokenizer: &loaded.tokenizer,
        template,
        stop_ids: &loaded.stop_ids,
        layers: &st.layers,
    };
    let n_personas: usize = groups.iter().map(|g| g.len()).sum();
    let bar = indicatif::ProgressBar::new((n_personas * q) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} prompts {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!(
        "{} ({})",
        cspec.name,
        rs.methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join("+")
    ));
    let t0 = std::time::Instant::now();
    let mut tokens_done = 0usize;
    let want_b = rs.methods.contains(&Method::B);
    for group in &groups {
        // Every (persona, question) of the group: persona by persona (a persona's rows share
        // its system prompt, computed once per prefill chunk), each persona's questions by
        // length (short prefill chunks).
        let prompts: Vec<&Vec<Vec<u32>>> = group.iter().map(|&pi| &run.prompt_ids[pi]).collect();
        let mut order: Vec<(usize, usize)> = Vec::with_capacity(group.len() * q);
        for (gi, ids) in prompts.iter().enumerate() {
            let mut mine: Vec<usize> = (0..q).collect();
            mine.sort_by_key(|&i| (ids[i].len(), i));
            order.extend(mine.into_iter().map(|qi| (gi, qi)));
        }
        let mut outs: Vec<PersonaOut> = group
            .iter()
            .map(|_| PersonaOut {
                a: vec![0f32; q * nl * h],
                b: vec![0f32; q * nl * h],
                b_valid: vec![false; q],
                texts: vec![String::new(); q],
                counts: vec![0u32; q],
            })
            .collect();
        let max_prompt = prompts
            .iter()
            .flat_map(|ids| ids.iter().map(|p| p.len()))
            .max()
            .unwrap_or(1);
        let batch = st.batch_size.resolve(
            model,
            max_prompt,
            if want_b {
                st.generation.max_new_tokens
            } else {
                0
            },
            order.len(),
        )?;
        for chunk in order.chunks(batch) {
            let batch: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&(gi, qi)| prompts[gi][qi].clone())
                .collect();
            let res = ex.run_batch(&batch, st.generation.max_new_tokens, want_b)?;
            for (&(gi, qi), r) in chunk.iter().zip(res) {
                let (persona, out) = (&rs.personas[group[gi]], &mut outs[gi]);
                tokens_done += prompts[gi][qi].len() + r.generated.len();
                for l in 0..nl {
                    out.a[(qi * nl + l) * h..(qi * nl + l + 1) * h].copy_from_slice(&r.method_a[l]);
                }
                if want_b {
                    let pooled = if st.generation.span == "templated" {
                        ex.method_b_templated(
                            &persona.system_prompt,
                            &rs.questions[qi].text,
                            prompts[gi][qi].len(),
                            &r.response,
                        )?
                        .1
                        .filter(|_| !r.response.is_empty())
                    } else {
                        r.method_b.clone()
                    };
                    if let Some(b) = pooled {
                        out.b_valid[qi] = true;
                        for l in 0..nl {
                            out.b[(qi * nl + l) * h..(qi * nl + l + 1) * h].copy_from_slice(&b[l]);
                        }
                    }
                    out.texts[qi] = crate::tokenize::decode(&loaded.tokenizer, &r.response)?;
                    out.counts[qi] = r.response.len() as u32;
                }
                bar.inc(1);
            }
            bar.set_message(format!(
                "{:.0} tok/s",
                tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
            ));
        }
        for (&pi, out) in group.iter().zip(outs) {
            let persona = &rs.personas[pi];
            if bar.is_hidden() {
                // Not a terminal (CI, nohup): one line per persona instead of a bar.
                eprintln!(
                    "[{:>6.0}s] checkpoint {}: persona {} done ({}/{} prompts, {:.0} tok/s)",
                    t0.elapsed().as_secs_f64(),
                    cspec.name,
                    persona.name,
                    bar.position(),
                    bar.length().unwrap_or(0),
                    tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
                );
            }
            for (m, data, valid) in [
                (Method::A, &out.a, vec![true; q]),
                (Method::B, &out.b, out.b_valid.clone()),
            ] {
                // Units on disk are finished work (a resumed group recomputes them: not
                // rewritten).
                if !rs.methods.contains(&m) || !missing(pi, m) {
                    continue;
                }
                if let Some(bad) = data.iter().position(|x| !x.is_finite()) {
                    let qi = bad / (nl * h);
                    let l = st.layers[(bad / h) % nl];
                    bail!(
                        "unit (checkpoint `{}`, method {}, persona `{}`) produced NaN/Inf at question {} layer {l}; nothing of this unit was written (try dtype = \"f32\")",
                        cspec.name,
                        m.name(),
                        persona.name,
                        rs.questions[qi].id
                    );
                }
                let unit = Unit {
                    config_hash: config_hash.clone(),
                    per_question: data.clone(),
                    valid,
                    texts: out.texts.clone(),
                    token_counts: out.counts.clone(),
                };
                runtime::phases::time("write units", || {
                    write_atomic(&unit_path(parts, ck, m, pi), &postcard::to_allocvec(&unit)?)
                })?;
                *units_written += 1;
                // Test hook: simulate a crash after N units (the resume test uses it).
                if std::env::var("PG_TEST_ABORT_AFTER_UNITS")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    == Some(*units_written)
                {
                    eprintln!("aborting after {units_written} units (PG_TEST_ABORT_AFTER_UNITS)");
                    std::process::exit(130);
                }
            }
        }
    }
    bar.finish();
    if bar.is_hidden() {
        eprintln!(
            "checkpoint {}: {} personas done, {:.0} tok/s",
            cspec.name,
            n_personas,
            tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// The steering vector: alpha x a unit direction (persona difference on base, or random).
fn steering_vector(s: &SteerSpec, run: &RunInputs) -> Result<Vec<f32>> {
    let (rs, loaded, template) = (run.rs, run.loaded, run.template);
    let (device, dtype) = (run.device, run.dtype);
    let h = loaded.cfg.hidden_size;
    let dir: Vec<f64> = match (s.random_seed, &s.towards, &s.away_from) {
        (Some(seed), _, _) => {
            let mut rng = shared::rng::Rng::new(seed);
            (0..h).map(|_| rng.normal()).collect()
        }
        (None, Some(to), Some(from)) => {
            let base = Model::new(loaded.cfg.clone(), loaded.weights.clone(), device, dtype)?;
            let layers = [s.layer];
            let ex = Extractor {
                model: &base,
                tokenizer: &loaded.tokenizer,
                template,
                stop_ids: &loaded.stop_ids,
                layers: &layers,
            };
            let centroid = |name: &str| -> Result<Vec<f64>> {
                let pi = rs
                    .personas
                    .iter()
                    .position(|p| p.name == name)
                    .with_context(|| {
                        format!("steering persona `{name}` is not among the study's personas")
                    })?;
                let mut acc = vec![0f64; h];
                let prompts = &run.prompt_ids[pi];
                let max_prompt = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
                let batch = rs
                    .study
                    .batch_size
                    .resolve(ex.model, max_prompt, 0, prompts.len())?;
                for chunk in prompts.chunks(batch) {
                    for r in ex.run_batch(chunk, 0, false)? {
                        for (a, &x) in acc.iter_mut().zip(&r.method_a[0]) {
                            *a += x as f64;
                        }
                    }
                }
                Ok(acc.into_iter().map(|x| x / prompts.len() as f64).collect())
            };
            let a = centroid(to)?;
            let b = centroid(from)?;
            a.iter().zip(&b).map(|(x, y)| x - y).collect()
        }
        _ => bail!("steer needs either `random_seed` or both `towards` and `away_from`"),
    };
    let n = dir.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n == 0.0 {
        bail!("steering direction is zero");
    }
    Ok(dir.iter().map(|x| (s.alpha * x / n) as f32).collect())
}
