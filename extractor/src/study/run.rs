//! Running a study: units (checkpoint x method x persona) written atomically to
//! `<output>.parts/`, the manifest that makes `--resume` byte-identical, and the bundle.

use super::*;
/// One finished unit: (checkpoint, method, persona) over all questions.
#[derive(Serialize, Deserialize)]
struct Unit {
    config_hash: String,
    /// questions x layers x hidden
    per_question: Vec<f32>,
    valid: Vec<bool>,
    texts: Vec<String>,
    token_counts: Vec<u32>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Manifest {
    config_hash: String,
    created: String,
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

fn unit_path(parts: &Path, ck: usize, m: Method, p: usize) -> PathBuf {
    parts.join(format!("ck{ck}_{}_p{p}.unit", m.name()))
}

pub fn run_study(path: &Path, output_override: Option<&Path>, resume: bool) -> Result<PathBuf> {
    let rs = read_study(path, output_override)?;
    let st = &rs.study;
    let device = device_from(st.model.device.as_deref())?;
    let dtype = dtype_from(st.model.dtype.as_deref(), &device)?;
    let model_path = resolve_model_path(
        &st.model.id,
        st.model.path.as_deref(),
        st.model.revision.as_deref(),
    )?;
    eprintln!("loading {} from {}", st.model.id, model_path.display());
    let loaded = load(&model_path)?;
    let n_layers = loaded.cfg.num_layers;
    for &l in &st.layers {
        if l >= n_layers {
            bail!(
                "{}: layer {l} does not exist: the model has {n_layers} blocks (layers 0..{})",
                path.display(),
                n_layers - 1
            );
        }
    }
    let template = loaded.chat_template()?;

    // Everything that determines the result goes into the configuration hash.
    let mut adapter_hashes = Vec::new();
    for c in &st.checkpoints {
        if let Some(a) = &c.adapter {
            let w = a.join("adapter_model.safetensors");
            let cfgp = a.join("adapter_config.json");
            adapter_hashes.push((
                c.name.clone(),
                crate::io_util::sha256_file(&cfgp)?,
                crate::io_util::sha256_file(&w).unwrap_or_default(),
            ));
        }
    }
    let hash_input = serde_json::json!({
        "tool": shared::TOOL_VERSION,
        "model": {"id": st.model.id, "revision": st.model.revision, "files": loaded.files, "dtype": format!("{dtype:?}"), "device": st.model.device},
        "checkpoints": st.checkpoints.iter().map(|c| serde_json::json!({"name": c.name, "role": c.role, "label": c.label, "steer": c.steer, "allow_base_mismatch": c.allow_base_mismatch})).collect::<Vec<_>>(),
        "adapters": adapter_hashes,
        "personas": rs.personas,
        "questions": rs.questions,
        "layers": st.layers,
        "methods": rs.methods,
        "generation": st.generation,
        "batch_size": st.batch_size.describe(),
        "seed": st.seed,
    });
    let config_hash = sha256_hex(serde_json::to_string(&hash_input)?.as_bytes());
    let parts = PathBuf::from(format!("{}.parts", rs.output.display()));
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
        if !resume {
            bail!("{} holds units of an interrupted run of this study; pass --resume to continue it (or delete the directory to start over)", parts.display());
        }
        m.created
    } else {
        std::fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
        let m = Manifest {
            config_hash: config_hash.clone(),
            created: today(),
        };
        write_atomic(&manifest_path, serde_json::to_string_pretty(&m)?.as_bytes())?;
        m.created
    };

    let (p, q, nl) = (rs.personas.len(), rs.questions.len(), st.layers.len());
    let mut units_written = 0usize;
    let h = loaded.cfg.hidden_size;
    let mut checkpoints = Vec::new();
    for (ck, cspec) in st.checkpoints.iter().enumerate() {
        let mut weights = loaded.weights.clone();
        let mut prov: Vec<(String, String)> = Vec::new();
        if let Some(a) = &cspec.adapter {
            let rep = merge_adapter(
                a,
                &mut weights,
                &st.model.id,
                cspec.allow_base_mismatch,
                &device,
            )
            .with_context(|| format!("checkpoint `{}`", cspec.name))?;
            prov.extend(rep.provenance);
        }
        let mut model = Model::new(loaded.cfg.clone(), weights, &device, dtype)?;
        if let Some(s) = &cspec.steer {
            let v = steering_vector(s, &loaded, &template, &rs, &device, dtype)
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
        checkpoints.push(Checkpoint {
            name: cspec.name.clone(),
            role: Role::parse(&cspec.role),
            label: cspec.label.clone().unwrap_or_else(|| cspec.name.clone()),
            provenance: prov,
        });
        let todo: Vec<usize> = (0..p)
            .filter(|&pi| {
                rs.methods
                    .iter()
                    .any(|&m| !unit_path(&parts, ck, m, pi).exists())
            })
            .collect();
        if todo.is_empty() {
            eprintln!("checkpoint {}: all units already done", cspec.name);
            continue;
        }
        let ex = Extractor {
            model: &model,
            tokenizer: &loaded.tokenizer,
            template: &template,
            stop_ids: &loaded.stop_ids,
            layers: &st.layers,
        };
        let bar = indicatif::ProgressBar::new((todo.len() * q) as u64);
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
        for &pi in &todo {
            let persona = &rs.personas[pi];
            let prompts: Vec<Vec<u32>> = rs
                .questions
                .iter()
                .map(|qq| ex.prompt_ids(&persona.system_prompt, &qq.text))
                .collect::<Result<_>>()?;
            let mut order: Vec<usize> = (0..q).collect();
            order.sort_by_key(|&i| (prompts[i].len(), i));
            let want_b = rs.methods.contains(&Method::B);
            let mut a_out = vec![0f32; q * nl * h];
            let mut b_out = vec![0f32; q * nl * h];
            let mut b_valid = vec![false; q];
            let mut texts = vec![String::new(); q];
            let mut counts = vec![0u32; q];
            let max_prompt = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
            let batch = st.batch_size.resolve(
                &model,
                max_prompt,
                if want_b {
                    st.generation.max_new_tokens
                } else {
                    0
                },
                q,
            )?;
            for chunk in order.chunks(batch) {
                let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
                let res = ex.run_batch(&batch, st.generation.max_new_tokens, want_b)?;
                for (&qi, r) in chunk.iter().zip(res) {
                    tokens_done += prompts[qi].len() + r.generated.len();
                    for l in 0..nl {
                        a_out[(qi * nl + l) * h..(qi * nl + l + 1) * h]
                            .copy_from_slice(&r.method_a[l]);
                    }
                    if want_b {
                        let pooled = if st.generation.span == "templated" {
                            ex.method_b_templated(
                                &persona.system_prompt,
                                &rs.questions[qi].text,
                                prompts[qi].len(),
                                &r.response,
                            )?
                            .1
                            .filter(|_| !r.response.is_empty())
                        } else {
                            r.method_b.clone()
                        };
                        if let Some(b) = pooled {
                            b_valid[qi] = true;
                            for l in 0..nl {
                                b_out[(qi * nl + l) * h..(qi * nl + l + 1) * h]
                                    .copy_from_slice(&b[l]);
                            }
                        }
                        texts[qi] = crate::tokenize::decode(&loaded.tokenizer, &r.response)?;
                        counts[qi] = r.response.len() as u32;
                    }
                    bar.inc(1);
                }
                bar.set_message(format!(
                    "{:.0} tok/s",
                    tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
                ));
            }
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
                (Method::A, &a_out, vec![true; q]),
                (Method::B, &b_out, b_valid.clone()),
            ] {
                if !rs.methods.contains(&m) {
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
                    texts: texts.clone(),
                    token_counts: counts.clone(),
                };
                write_atomic(
                    &unit_path(&parts, ck, m, pi),
                    &postcard::to_allocvec(&unit)?,
                )?;
                units_written += 1;
                // Test hook: simulate a crash after N units (the resume test uses it).
                if std::env::var("PG_TEST_ABORT_AFTER_UNITS")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    == Some(units_written)
                {
                    eprintln!("aborting after {units_written} units (PG_TEST_ABORT_AFTER_UNITS)");
                    std::process::exit(130);
                }
            }
        }
        bar.finish();
        if bar.is_hidden() {
            eprintln!(
                "checkpoint {}: {} personas done, {:.0} tok/s",
                cspec.name,
                todo.len(),
                tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }

    // Assemble the bundle from the units.
    let mut cells = Vec::new();
    let mut responses = Vec::new();
    for ck in 0..st.checkpoints.len() {
        let mut by_method: Vec<Vec<Unit>> = Vec::new();
        for &m in &rs.methods {
            let mut units = Vec::new();
            for pi in 0..p {
                let up = unit_path(&parts, ck, m, pi);
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
                    || u.per_question.len() != q * nl * h
                    || u.valid.len() != q
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
        for (mi, &m) in rs.methods.iter().enumerate() {
            for (li, &l) in st.layers.iter().enumerate() {
                let mut per_q = vec![0f32; p * q * h];
                let mut cents = vec![0f32; p * h];
                let mut valid = vec![false; p * q];
                for pi in 0..p {
                    let u = &by_method[mi][pi];
                    let mut acc = vec![0f64; h];
                    let mut n = 0usize;
                    for qi in 0..q {
                        valid[pi * q + qi] = u.valid[qi];
                        if !u.valid[qi] {
                            continue;
                        }
                        let src = &u.per_question[(qi * nl + li) * h..(qi * nl + li + 1) * h];
                        per_q[(pi * q + qi) * h..(pi * q + qi + 1) * h].copy_from_slice(src);
                        for (a, &x) in acc.iter_mut().zip(src) {
                            *a += x as f64;
                        }
                        n += 1;
                    }
                    if n == 0 {
                        bail!(
                            "checkpoint `{}`, method {}: persona `{}` produced an empty response to every question; Method B has nothing to average (raise max_new_tokens or check the chat template)",
                            st.checkpoints[ck].name,
                            m.name(),
                            rs.personas[pi].name
                        );
                    }
                    for j in 0..h {
                        cents[pi * h + j] = (acc[j] / n as f64) as f32;
                    }
                }
                cells.push(Cell {
                    checkpoint: ck as u32,
                    method: m,
                    layer: l as u32,
                    centroids: Blob::from_f32(&cents),
                    per_question: Blob::from_f32(&per_q),
                    valid,
                });
            }
            if m == Method::B {
                responses.push(Responses {
                    checkpoint: ck as u32,
                    texts: by_method[mi]
                        .iter()
                        .flat_map(|u| u.texts.iter().cloned())
                        .collect(),
                    token_counts: by_method[mi]
                        .iter()
                        .flat_map(|u| u.token_counts.iter().copied())
                        .collect(),
                });
            }
        }
    }
    let mut extra = vec![
        ("model.source".into(), loaded.source.clone()),
        ("model.architecture".into(), format!("{:?}", loaded.cfg.arch)),
        ("model.num_layers".into(), n_layers.to_string()),
        ("model.files_sha256".into(), loaded.files.iter().map(|(f, h)| format!("{f}={h}")).collect::<Vec<_>>().join(", ")),
        ("compute.dtype".into(), format!("{dtype:?}")),
        ("compute.device".into(), st.model.device.clone().unwrap_or_else(|| "cpu".into())),
        ("method_a".into(), "hidden state at the last token of the chat-templated prompt with the generation prompt".into()),
        ("method_b".into(), format!("mean over response tokens ({} span), greedy, max_new_tokens {}, stop ids {:?} excluded", st.generation.span, st.generation.max_new_tokens, loaded.stop_ids)),
        ("chat_template_sha256".into(), sha256_hex(loaded.chat_template.as_deref().unwrap_or_default().as_bytes())),
        ("batch_size".into(), st.batch_size.describe()),
        ("config_sha256".into(), config_hash.clone()),
        ("study.toml".into(), rs.source_text.clone()),
    ];
    extra.retain(|(_, v)| !v.is_empty());
    let bundle = Bundle {
        provenance: Provenance {
            tool: "persona-geometry extract".into(),
            tool_version: shared::TOOL_VERSION.into(),
            created,
            seed: st.seed,
            model_id: st.model.id.clone(),
            model_revision: st.model.revision.clone().unwrap_or_default(),
            layer_convention: shared::LAYER_CONVENTION.into(),
            extra,
        },
        personas: rs.personas.clone(),
        questions: rs.questions.clone(),
        checkpoints,
        methods: rs.methods.clone(),
        layers: st.layers.iter().map(|&l| l as u32).collect(),
        hidden_size: h as u32,
        cells,
        responses,
        compact: None,
    };
    let n = write_bundle(&rs.output, &bundle)?;
    std::fs::remove_dir_all(&parts).with_context(|| format!("removing {}", parts.display()))?;
    eprintln!("wrote {} ({:.2} MB)", rs.output.display(), n as f64 / 1e6);
    Ok(rs.output.clone())
}

/// The steering vector: alpha x a unit direction (persona difference on base, or random).
fn steering_vector(
    s: &SteerSpec,
    loaded: &LoadedModel,
    template: &ChatTemplate,
    rs: &ResolvedStudy,
    device: &Device,
    dtype: DType,
) -> Result<Vec<f32>> {
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
                let persona = rs
                    .personas
                    .iter()
                    .find(|p| p.name == name)
                    .with_context(|| {
                        format!("steering persona `{name}` is not among the study's personas")
                    })?;
                let mut acc = vec![0f64; h];
                let prompts: Vec<Vec<u32>> = rs
                    .questions
                    .iter()
                    .map(|q| ex.prompt_ids(&persona.system_prompt, &q.text))
                    .collect::<Result<_>>()?;
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
