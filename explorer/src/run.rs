//! The analysis on the page: starting it for the view's persona subset, N and seed, feeding
//! Web Worker results into cells, the report and verdict of what has finished, and the
//! permutation-null figures of the view.

use super::*;

pub(crate) fn ml_of(plan: &Plan, method: Method, layer: u32) -> Option<usize> {
    plan.coords
        .iter()
        .position(|c| c.method == method && c.layer == layer)
}

/// (Re)starts the analysis for the current persona subset, N and seed. Finished cells are
/// reused from the cache; the view on screen is computed first.
pub(crate) fn start_analysis(ctl: Ctl) {
    let key = ctl.key();
    let same = STATE.with(|s| {
        s.borrow()
            .analysis
            .as_ref()
            .map(|a| a.key == key)
            .unwrap_or(false)
    });
    if same {
        return;
    }
    let prepared = STATE.with(|s| -> Result<(Bundle, Rc<Vec<u8>>), String> {
        let s = s.borrow();
        let loaded = s.loaded.as_ref().ok_or("no bundle loaded")?;
        let sub = subset(&loaded.bundle, Some(&key.personas))?;
        Ok((sub, loaded.bytes.clone()))
    });
    let (bundle, bytes) = match prepared {
        Ok(x) => x,
        Err(e) => {
            ctl.error.set(Some(e));
            return;
        }
    };
    let cfg = page_config(key.permutations, key.seed);
    let plan = match Plan::new(&bundle, &cfg) {
        Ok(p) => p,
        Err(e) => {
            ctl.error.set(Some(e.to_string()));
            return;
        }
    };
    ctl.error.set(None);
    let n_ml = plan.coords.len();
    let selected = ml_of(&plan, ctl.method.get_untracked(), ctl.layer.get_untracked()).unwrap_or(0);
    // Stop the old workers before anything else (cancel).
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(old) = s.analysis.take() {
            let cells = old.cells;
            s.cache.insert(old.key, cells);
        }
    });
    let cells = STATE
        .with(|s| s.borrow().cache.get(&key).cloned())
        .unwrap_or_else(|| vec![None; n_ml]);
    // Chunks small enough for smooth progress and balance, large enough to amortise messages.
    let chunk = (key.permutations / 8).clamp(250, 2_500);
    let mut order: Vec<usize> = (0..n_ml).filter(|&ml| cells[ml].is_none()).collect();
    order.sort_by_key(|&ml| ml != selected);
    let mut tasks = Vec::new();
    let mut remaining = HashMap::new();
    for &ml in &order {
        let t = plan.tasks(ml, chunk);
        remaining.insert(ml, t.len());
        tasks.extend(t);
    }
    let total = tasks.len();
    let report = if cells.iter().any(|c| c.is_some()) {
        Some(Arc::new(plan.report(&bundle, &cells)))
    } else {
        None
    };
    let mut analysis = Analysis {
        key: key.clone(),
        bundle,
        plan,
        outputs: HashMap::new(),
        remaining,
        cells,
        previews: HashMap::new(),
        report,
        pool: None,
        started_ms: web::now_ms(),
        total,
        done: 0,
    };
    if analysis
        .cells
        .get(selected)
        .map(|c| c.is_none())
        .unwrap_or(false)
    {
        add_preview(&mut analysis, selected);
    }
    if total > 0 {
        let init = serde_json::to_string(&InitMessage {
            personas: Some(key.personas.clone()),
            config: cfg,
        })
        .expect("init message serialises");
        let workers = web::hardware_concurrency().min(total);
        match Pool::new(
            workers,
            bytes,
            init,
            move |t, o| on_result(ctl, t, o),
            move |e| {
                ctl.error.set(Some(e));
                ctl.computing.set(false);
            },
        ) {
            Ok(pool) => {
                pool.push(tasks);
                analysis.pool = Some(pool);
                ctl.computing.set(true);
            }
            Err(e) => ctl.error.set(Some(e)),
        }
    } else {
        ctl.computing.set(false);
    }
    web::mark(
        "workers",
        JsValue::from_f64(analysis.pool.as_ref().map(|p| p.workers()).unwrap_or(0) as f64),
    );
    ctl.progress.set((0, total));
    STATE.with(|s| s.borrow_mut().analysis = Some(analysis));
    ctl.bump();
}

/// Descriptive numbers (cosines, norms, projections, LDA accuracy) of one view before its
/// permutations finish, computed on the page's thread. Its p-values are not shown.
pub(crate) fn add_preview(a: &mut Analysis, ml: usize) {
    if a.previews.contains_key(&ml) {
        return;
    }
    let outs: Vec<(Task, TaskOutput)> = (0..a.plan.n_checkpoints)
        .map(|checkpoint| {
            let t = Task::LdaObserved { ml, checkpoint };
            let o = a.plan.run_task(&t);
            (t, o)
        })
        .collect();
    let mut cells = vec![None; a.plan.coords.len()];
    cells[ml] = Some(a.plan.cell_result(ml, &outs));
    a.previews
        .insert(ml, Arc::new(a.plan.report(&a.bundle, &cells)));
}

pub(crate) fn on_result(ctl: Ctl, task: Task, out: TaskOutput) {
    let ml = task.method_layer();
    let selected = (ctl.method.get_untracked(), ctl.layer.get_untracked());
    let finished = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(a) = s.analysis.as_mut() else {
            return None;
        };
        a.done += 1;
        a.outputs.entry(ml).or_default().push((task, out));
        let left = a.remaining.entry(ml).or_insert(1);
        *left -= 1;
        let mut cell_done = false;
        if *left == 0 {
            let outs = a.outputs.remove(&ml).unwrap_or_default();
            a.cells[ml] = Some(a.plan.cell_result(ml, &outs));
            a.report = Some(Arc::new(a.plan.report(&a.bundle, &a.cells)));
            cell_done = true;
            let c = &a.plan.coords[ml];
            if (c.method, c.layer) == selected {
                web::mark("view_ms", JsValue::from_f64(web::now_ms() - a.started_ms));
            }
        }
        let all = a.done == a.total;
        if all {
            a.pool = None;
            web::mark("all_ms", JsValue::from_f64(web::now_ms() - a.started_ms));
        }
        Some((a.done, a.total, cell_done, all))
    });
    if let Some((done, total, cell_done, all)) = finished {
        ctl.progress.set((done, total));
        if all {
            ctl.computing.set(false);
        }
        if cell_done {
            ctl.bump();
        }
    }
}

pub(crate) fn cancel(ctl: Ctl) {
    STATE.with(|s| {
        if let Some(a) = s.borrow_mut().analysis.as_mut() {
            a.pool = None;
        }
    });
    ctl.computing.set(false);
    ctl.status
        .set("cancelled: finished views are kept; press \"compute\" to continue".into());
}

pub(crate) fn resume(ctl: Ctl) {
    // Forget the in-progress analysis (its finished cells go to the cache) and start again.
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(old) = s.analysis.take() {
            s.cache.insert(old.key, old.cells);
        }
    });
    ctl.status.set(String::new());
    start_analysis(ctl);
}

/// The report for the (method, layer) on screen: the finished one, else the preview.
pub(crate) fn view_report(ctl: Ctl) -> Option<(Arc<Report>, bool)> {
    let (m, l) = (ctl.method.get(), ctl.layer.get());
    ctl.version.get();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let a = s.analysis.as_mut()?;
        let ml = ml_of(&a.plan, m, l)?;
        if a.cells[ml].is_some() {
            return a.report.clone().map(|r| (r, true));
        }
        add_preview(a, ml);
        a.previews.get(&ml).cloned().map(|r| (r, false))
    })
}

/// Every (method, layer) cell of the analysis on screen is computed (the report is final).
pub(crate) fn every_view_computed(ctl: Ctl) -> bool {
    ctl.version.get();
    STATE.with(|s| {
        s.borrow()
            .analysis
            .as_ref()
            .is_some_and(|a| a.every_cell_computed())
    })
}

/// Whether the bundle on screen gives `metric`'s point estimate exactly (see
/// `shared::analysis::point_estimate_exact`).
pub(crate) fn point_estimate_exact(metric: &str) -> bool {
    STATE.with(|s| {
        s.borrow()
            .analysis
            .as_ref()
            .is_some_and(|a| shared::analysis::point_estimate_exact(&a.bundle, metric))
    })
}

pub(crate) fn full_report(ctl: Ctl) -> Option<Arc<Report>> {
    ctl.version.get();
    STATE.with(|s| s.borrow().analysis.as_ref().and_then(|a| a.report.clone()))
}

/// Sensitivity rows and verdicts under the chosen α and threshold (plus the presets).
pub(crate) fn verdicts(ctl: Ctl) -> Option<(Vec<SensitivityRow>, Vec<Verdict>, String, bool)> {
    let alpha = ctl.alpha.get();
    let thr = ctl.threshold.get();
    let report = full_report(ctl)?;
    STATE.with(|s| {
        let s = s.borrow();
        let a = s.analysis.as_ref()?;
        let mut thresholds: Vec<f64> = PRESET_THRESHOLDS.to_vec();
        if let Some(t) = thr {
            if !thresholds.iter().any(|x| (x - t).abs() < 1e-12) {
                thresholds.push(t);
            }
        }
        let cfg = shared::analysis::AnalysisConfig {
            alpha,
            thresholds,
            ..a.plan.cfg.clone()
        };
        let (sens, v) =
            sensitivity_and_verdicts(&a.bundle, &report.rows, &report.ratio_draws, &cfg);
        let chosen = thr
            .map(shared::analysis::criterion_name)
            .unwrap_or_else(|| "p-only".into());
        Some((sens, v, chosen, a.every_cell_computed()))
    })
}

/// Permutation nulls of the view on screen (treated vs base).
pub(crate) fn null_figures(ctl: Ctl) -> Vec<Figure> {
    let (m, l, treated, centred) = (
        ctl.method.get(),
        ctl.layer.get(),
        ctl.treated.get(),
        ctl.centred.get(),
    );
    ctl.version.get();
    STATE.with(|s| {
        let s = s.borrow();
        let Some(a) = s.analysis.as_ref() else {
            return vec![];
        };
        let Some(ml) = ml_of(&a.plan, m, l) else {
            return vec![];
        };
        let Some(cell) = a.cells[ml].as_ref() else {
            return vec![];
        };
        let Some(tck) = a.bundle.checkpoints.iter().position(|c| c.name == treated) else {
            return vec![];
        };
        shared::figures::null_figures(&a.plan, &a.bundle, cell, m, l, tck, &[centred])
    })
}
