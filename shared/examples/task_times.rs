//! Times every kind of analysis task of one (method, layer) of a bundle (what one view of the
//! explorer page costs), natively on one thread. Usage: task_times BUNDLE [N]
use shared::analysis::{AnalysisConfig, Plan};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("read bundle");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let b = shared::Bundle::decode(&bytes).expect("decode");
    let cfg = AnalysisConfig {
        permutations: n,
        ..AnalysisConfig::default()
    };
    let t = Instant::now();
    let plan = Plan::new(&b, &cfg).expect("plan");
    println!("plan: {:.3} s", t.elapsed().as_secs_f64());
    let ml = plan.coords.len() / 2;
    let mut totals = std::collections::BTreeMap::new();
    for task in plan.tasks(ml, usize::MAX) {
        let t = Instant::now();
        plan.run_task(&task);
        let kind = format!("{:?}", task).split(' ').next().unwrap().to_string();
        *totals.entry(kind).or_insert(0.0) += t.elapsed().as_secs_f64();
    }
    for (k, v) in &totals {
        println!("{k}: {v:.3} s");
    }
    println!(
        "view total (1 thread): {:.3} s",
        totals.values().sum::<f64>()
    );
}
