//! The trainer against Hugging Face `Trainer` + PEFT (../shared/fixtures/lora-train, f32 CPU):
//! step-1 gradients of every LoRA tensor, per-step loss and grad norm, the final adapter; and
//! the gradients against central finite differences in f64 (an oracle independent of torch).
use candle_core::{DType, Device, Tensor};
use extractor::train::adapter::TrainableLora;
use extractor::train::data::{read_examples, tokenize_example, Tokenized};
use extractor::train::forward::MicroBatch;
use extractor::train::optim::{AdamW, AdamWConfig};
use extractor::train::{plan::plan_steps, schedule::linear_warmup_lr, trainer};
use std::collections::HashMap;

mod common;
use common::{fixtures, oracle};

struct Setup {
    model: extractor::model::Model,
    examples: Vec<Tokenized>,
}

fn setup(dtype: DType) -> Setup {
    let loaded = extractor::weights::load_hf_dir(&fixtures().join("hf-tiny-qwen2/model")).unwrap();
    let tpl = loaded.chat_template().unwrap();
    let data = fixtures().join("lora-train/train.jsonl");
    let examples = read_examples(&data, None)
        .unwrap()
        .iter()
        .map(|e| tokenize_example(&tpl, &loaded.tokenizer, e, 2048, &data).unwrap())
        .collect();
    let model =
        extractor::model::Model::new(loaded.cfg.clone(), loaded.weights, &Device::Cpu, dtype)
            .unwrap();
    Setup { model, examples }
}

/// The oracle's starting adapter (`adapter_init`) in `dtype`.
fn initial_adapter(s: &Setup, dtype: DType) -> TrainableLora {
    TrainableLora::load(
        &fixtures().join("lora-train/adapter_init"),
        &s.model.cfg,
        &Device::Cpu,
        dtype,
    )
    .unwrap()
}

fn micro_batches(s: &Setup, micro: &[Vec<usize>]) -> Vec<MicroBatch> {
    micro
        .iter()
        .map(|ids| {
            let ex: Vec<&Tokenized> = ids.iter().map(|&i| &s.examples[i]).collect();
            MicroBatch::new(&ex, 151643, 8, &Device::Cpu).unwrap()
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a − b| / max |b| over a tensor.
fn rel_to_max(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

#[test]
fn step_one_gradients_equal_the_trainers() {
    let s = setup(DType::F32);
    let lora = initial_adapter(&s, DType::F32);
    let plan = plan_steps(s.examples.len(), 2, 4, 2, None);
    let mbs = micro_batches(&s, &plan[0]);
    let (mut grads, loss) =
        trainer::accumulated_gradients(&s.model, &lora, &mbs, &[None, None, None, None]).unwrap();
    // The fixture's README says "before clipping", but its generator saves `v.grad` after
    // `clip_grad_norm_` (which scales in place: gen_lora_train.py lines 133–135), so the file
    // holds the clipped gradients. Our unclipped ones must give the recorded norm, and
    // clipped as torch clips, the file's values.
    let norm = extractor::train::optim::clip_global_norm(&mut grads, 0.5).unwrap();
    let want_norm = oracle()["steps"][0]["grad_norm_before_clip"]
        .as_f64()
        .unwrap();
    assert!(
        ((norm - want_norm) / want_norm).abs() < 1e-5,
        "{norm} vs {want_norm}"
    );
    assert!(
        norm > 0.5,
        "this step is clipped, so the comparison checks the clipping too"
    );
    let want: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixtures().join("lora-train/step1_grads.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let names = lora.named_vars();
    assert_eq!(names.len(), want.len());
    assert_eq!(names.len(), 4 * 7 * 2);
    let mut worst = (0.0f64, String::new());
    for ((name, _), g) in names.iter().zip(&grads) {
        // The oracle names parameters as PEFT's model does (`.lora_A.default.weight`).
        let key = name
            .replace(".lora_A.weight", ".lora_A.default.weight")
            .replace(".lora_B.weight", ".lora_B.default.weight");
        let w = want
            .get(&key)
            .unwrap_or_else(|| panic!("oracle lacks {key}"));
        let r = rel_to_max(g, w);
        if r > worst.0 {
            worst = (r, name.clone());
        }
        assert!(
            r < 1e-5,
            "{name}: gradient differs by {r:e} of its largest value"
        );
    }
    eprintln!("step-1 gradients: worst {:e} ({})", worst.0, worst.1);
    let want_loss = oracle()["steps"][0]["loss"].as_f64().unwrap();
    assert!(
        ((loss - want_loss) / want_loss).abs() < 1e-5,
        "{loss} vs {want_loss}"
    );
}

#[test]
fn ten_steps_reproduce_the_trainers_losses_norms_and_final_adapter() {
    let s = setup(DType::F32);
    let expected = oracle();
    let r = &expected["recipe"];
    let lora = initial_adapter(&s, DType::F32);
    let vars: Vec<_> = lora.named_vars().into_iter().map(|(_, v)| v).collect();
    let mut adam = AdamW::new(
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: r["weight_decay"].as_f64().unwrap(),
        },
        &vars,
    )
    .unwrap();
    let plan = plan_steps(s.examples.len(), 2, 4, 2, None);
    assert_eq!(plan.len(), 10);
    for (i, step) in plan.iter().enumerate() {
        let mbs = micro_batches(&s, step);
        let lr = linear_warmup_lr(r["lr"].as_f64().unwrap(), i, 1, 10);
        let rec =
            trainer::optimizer_step(&s.model, &lora, &mut adam, &mbs, &[None; 4], lr, 0.5).unwrap();
        let want = &expected["steps"][i];
        let rel = |got: f64, key: &str| {
            let w = want[key].as_f64().unwrap();
            (got - w).abs() / w.abs()
        };
        eprintln!(
            "step {}: loss {} ({:e}), grad norm {} ({:e})",
            i + 1,
            rec.loss,
            rel(rec.loss, "loss"),
            rec.grad_norm_before_clip,
            rel(rec.grad_norm_before_clip, "grad_norm_before_clip")
        );
        assert!(rel(rec.loss, "loss") < 1e-5, "step {} loss", i + 1);
        assert!(
            rel(rec.grad_norm_before_clip, "grad_norm_before_clip") < 1e-5,
            "step {} grad norm",
            i + 1
        );
        assert_eq!(
            rec.label_tokens as u64,
            want["label_tokens"].as_u64().unwrap()
        );
    }
    let final_want = candle_core::safetensors::load(
        fixtures().join("lora-train/adapter_final/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let got = lora.tensors().unwrap();
    assert_eq!(got.len(), final_want.len());
    let mut worst = 0.0f64;
    for (name, t) in &got {
        let r = rel_to_max(t, &final_want[name]);
        worst = worst.max(r);
        assert!(r < 1e-5, "{name}: final adapter differs by {r:e}");
    }
    eprintln!("final adapter: worst {worst:e} of each tensor's largest value");
}

/// Central finite differences of the loss in f64 against the backward pass in f64, for a few
/// entries of several LoRA tensors (A and B, attention and MLP, first and last block).
#[test]
fn gradients_equal_finite_differences() {
    let s = setup(DType::F64);
    let lora = initial_adapter(&s, DType::F64);
    let mbs = micro_batches(&s, &[vec![0, 1], vec![5]]);
    let (grads, _) = trainer::accumulated_gradients(&s.model, &lora, &mbs, &[None, None]).unwrap();
    let loss = |lora: &TrainableLora| -> f64 {
        trainer::accumulated_gradients(&s.model, lora, &mbs, &[None, None])
            .unwrap()
            .1
    };
    let named = lora.named_vars();
    let pick = [0usize, 1, 12, 13, named.len() - 2, named.len() - 1];
    let h = 1e-5;
    for &ti in &pick {
        let (name, var) = &named[ti];
        let g = flat(&grads[ti]);
        let base = flat(var.as_tensor());
        let shape = var.as_tensor().shape().clone();
        // The entry with the largest gradient and one at the end.
        let largest = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for &e in &[largest, g.len() - 1] {
            let at = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[e] += delta;
                var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&lora)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            at(0.0);
            let scale = g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(
                (fd - g[e]).abs() < 1e-6 * scale.max(1e-3),
                "{name}[{e}]: backward {} vs finite difference {fd}",
                g[e]
            );
        }
    }
}

/// Block-by-block recomputation (gradient checkpointing) gives the gradients of one graph of
/// the whole pass (f64, so only summation order can differ).
#[test]
fn checkpointed_gradients_equal_the_whole_graphs() {
    let s = setup(DType::F64);
    let lora = initial_adapter(&s, DType::F64);
    let mbs = micro_batches(&s, &[vec![0, 1], vec![2, 3, 4]]);
    let n: usize = mbs.iter().map(|m| m.label_tokens).sum();
    let (checkpointed, loss) =
        trainer::accumulated_gradients(&s.model, &lora, &mbs, &[None, None]).unwrap();
    // The head in chunks of 3 label rows (the default, 256, holds every row of these
    // micro-batches): the same gradients and loss.
    assert!(mbs
        .iter()
        .all(|m| m.label_tokens > 3 && m.label_tokens <= 256));
    let (chunked, chunked_loss) =
        trainer::accumulated_gradients_with(&s.model, &lora, &mbs, &[None, None], 3).unwrap();
    assert!(
        (loss - chunked_loss).abs() <= 1e-12 * loss.abs(),
        "{loss} vs {chunked_loss}"
    );
    for (a, b) in checkpointed.iter().zip(&chunked) {
        assert!(rel_to_max(b, a) < 1e-12);
    }
    let fwd = extractor::train::forward::TrainForward {
        model: &s.model,
        lora: &lora,
    };
    let named = lora.named_vars();
    let mut whole: Vec<Tensor> = Vec::new();
    for mb in &mbs {
        let g = (fwd.summed_label_loss(mb, None).unwrap() / n as f64)
            .unwrap()
            .backward()
            .unwrap();
        for (i, (_, v)) in named.iter().enumerate() {
            let gi = g.get(v.as_tensor()).unwrap().clone();
            if whole.len() <= i {
                whole.push(gi);
            } else {
                whole[i] = (&whole[i] + gi).unwrap();
            }
        }
    }
    for ((name, _), (a, b)) in named.iter().zip(checkpointed.iter().zip(&whole)) {
        let r = rel_to_max(a, b);
        assert!(r < 1e-12, "{name}: {r:e}");
    }
}
