//! The trainable LoRA adapter: A and B of every targeted projection as candle `Var`s (f32 on
//! the training device), read from and written to PEFT's layout, so that what `train` writes
//! is what PEFT 0.21 loads and what `extract` merges (`crate::lora`).
//!
//! PEFT's forward for a targeted linear layer: y = W·x (+ b) + scale · B·(A·dropout(x)), with
//! scale = alpha / r (alpha / √r with rsLoRA).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::path::Path;

use crate::model::Config;

/// The projections LoRA can target in a Qwen2/Llama block, in the order the forward uses them.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The HF module path of projection `p` of block `l` (`model.layers.3.mlp.up_proj`).
pub fn module_path(l: usize, p: &str) -> String {
    let group = if ["gate_proj", "up_proj", "down_proj"].contains(&p) {
        "mlp"
    } else {
        "self_attn"
    };
    format!("model.layers.{l}.{group}.{p}")
}

/// (out, in) of projection `p` for a model configuration.
fn projection_shape(cfg: &Config, p: &str) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    match p {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_proj" | "up_proj" => (i, h),
        "down_proj" => (h, i),
        _ => unreachable!("checked against PROJECTIONS"),
    }
}

/// The LoRA hyper-parameters that shape the adapter (as in `adapter_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraShape {
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    /// Projection names from [`PROJECTIONS`], in that order.
    pub targets: Vec<String>,
}

impl LoraShape {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Validates target names and puts them in the forward's order.
    pub fn new(r: usize, alpha: f64, use_rslora: bool, targets: &[String]) -> Result<LoraShape> {
        if r == 0 {
            bail!("LoRA rank r must be at least 1");
        }
        for t in targets {
            if !PROJECTIONS.contains(&t.as_str()) {
                bail!(
                    "target module `{t}` is not a projection of a Qwen2/Llama block (one of {})",
                    PROJECTIONS.join(", ")
                );
            }
        }
        if targets.is_empty() {
            bail!("no target modules: LoRA needs at least one projection to adapt");
        }
        Ok(LoraShape {
            r,
            alpha,
            use_rslora,
            targets: PROJECTIONS
                .iter()
                .filter(|p| targets.iter().any(|t| t == *p))
                .map(|p| p.to_string())
                .collect(),
        })
    }
}

/// A and B of one adapted projection.
pub struct LoraPair {
    /// [r, in]
    pub a: Var,
    /// [out, r]
    pub b: Var,
}

/// Every adapted projection of the model: `pairs[l][p]` for block l and `PROJECTIONS[p]`.
pub struct TrainableLora {
    pub shape: LoraShape,
    pub pairs: Vec<[Option<LoraPair>; 7]>,
}

impl TrainableLora {
    /// PEFT's default initialisation: A ~ U(−1/√in, 1/√in) (kaiming_uniform with a = √5),
    /// B = 0, so the adapted model starts equal to the base. Drawn from this project's seeded
    /// stream (not torch's generator: same distribution, other numbers).
    pub fn init(
        cfg: &Config,
        shape: &LoraShape,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let pairs = build_pairs(cfg, shape, |l, p, (out, inp)| {
            let mut rng = shared::rng::Rng::stream(seed, &module_path(l, p), 0);
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..shape.r * inp)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Ok(LoraPair {
                a: Var::from_tensor(
                    &Tensor::from_vec(a, (shape.r, inp), device)?.to_dtype(dtype)?,
                )?,
                b: Var::zeros((out, shape.r), dtype, device)?,
            })
        })?;
        Ok(TrainableLora {
            shape: shape.clone(),
            pairs,
        })
    }

    /// Reads a PEFT adapter directory (`--init-adapter`): its shape from `adapter_config.json`,
    /// its tensors from `adapter_model.safetensors`; every tensor must fit the model.
    /// `dtype`: f32 for training (f64 only for the finite-difference test).
    pub fn load(dir: &Path, cfg: &Config, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?,
        )
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let what = cfg_path.display();
        let r = json
            .get("r")
            .and_then(|v| v.as_u64())
            .with_context(|| format!("{what}: field `r` missing"))? as usize;
        let alpha = json
            .get("lora_alpha")
            .and_then(|v| v.as_f64())
            .with_context(|| format!("{what}: field `lora_alpha` missing"))?;
        for k in ["rank_pattern", "alpha_pattern"] {
            if json
                .get(k)
                .and_then(|v| v.as_object())
                .is_some_and(|o| !o.is_empty())
            {
                bail!("{what}: `{k}` is set; training from an adapter with per-module ranks is not supported");
            }
        }
        let targets: Vec<String> = json
            .get("target_modules")
            .and_then(|v| v.as_array())
            .with_context(|| format!("{what}: `target_modules` missing or not a list"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let use_rslora = json
            .get("use_rslora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let shape =
            LoraShape::new(r, alpha, use_rslora, &targets).with_context(|| what.to_string())?;
        let wpath = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
            .with_context(|| format!("reading {}", wpath.display()))?;
        let pairs = build_pairs(cfg, &shape, |l, p, (out, inp)| {
            let read = |ab: &str, dims: [usize; 2]| -> Result<Var> {
                let n = format!("base_model.model.{}.{ab}.weight", module_path(l, p));
                let t = tensors
                    .get(&n)
                    .with_context(|| format!("{}: tensor `{n}` missing", wpath.display()))?;
                if t.dims() != dims {
                    bail!(
                        "{}: `{n}` has shape {:?}, the model needs {dims:?}: the adapter belongs to a model of another shape",
                        wpath.display(),
                        t.dims()
                    );
                }
                Ok(Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?)
            };
            Ok(LoraPair {
                a: read("lora_A", [r, inp])?,
                b: read("lora_B", [out, r])?,
            })
        })?;
        Ok(TrainableLora { shape, pairs })
    }

    /// The dtype of the variables (and of the training forward's residual stream).
    pub fn dtype(&self) -> DType {
        self.pairs
            .iter()
            .flatten()
            .flatten()
            .next()
            .map(|p| p.a.as_tensor().dtype())
            .unwrap_or(DType::F32)
    }

    /// Every (PEFT tensor name, variable), A before B, blocks in order: the order of the
    /// optimizer state and of the checkpoint files.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (l, row) in self.pairs.iter().enumerate() {
            for (pi, pair) in row.iter().enumerate() {
                if let Some(pair) = pair {
                    let m = module_path(l, PROJECTIONS[pi]);
                    out.push((format!("base_model.model.{m}.lora_A.weight"), &pair.a));
                    out.push((format!("base_model.model.{m}.lora_B.weight"), &pair.b));
                }
            }
        }
        out
    }

    /// The variables of each block, in `named_vars` order (so `named_vars` is their
    /// concatenation).
    pub fn vars_by_block(&self) -> Vec<Vec<&Var>> {
        self.pairs
            .iter()
            .map(|row| row.iter().flatten().flat_map(|p| [&p.a, &p.b]).collect())
            .collect()
    }

    /// The tensors as PEFT names them, on the CPU in f32.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect()
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` in PEFT's layout into
    /// `dir` (each file written whole, then renamed into place).
    pub fn save_peft(&self, dir: &Path, base_model: &str, dropout: f64) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = serde_json::json!({
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "lora_alpha": self.shape.alpha,
            "lora_dropout": dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.shape.r,
            "rank_pattern": {},
            "alpha_pattern": {},
            "target_modules": self.shape.targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.shape.use_rslora,
        });
        crate::io_util::write_atomic(
            &dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        let tensors = self.tensors()?;
        let bytes = safetensors_bytes(&tensors)?;
        crate::io_util::write_atomic(&dir.join("adapter_model.safetensors"), &bytes)
    }
}

/// `pairs[l][p]` for every block and targeted projection, each made by `make(block, projection
/// name, (out, in))`.
fn build_pairs(
    cfg: &Config,
    shape: &LoraShape,
    mut make: impl FnMut(usize, &str, (usize, usize)) -> Result<LoraPair>,
) -> Result<Vec<[Option<LoraPair>; 7]>> {
    let mut pairs = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let mut row: [Option<LoraPair>; 7] = Default::default();
        for (pi, p) in PROJECTIONS.iter().enumerate() {
            if shape.targets.iter().any(|t| t == p) {
                row[pi] = Some(make(l, p, projection_shape(cfg, p))?);
            }
        }
        pairs.push(row);
    }
    Ok(pairs)
}

/// Serialises f32 tensors to safetensors bytes (sorted names: same tensors, same bytes).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| -> Result<_> {
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Ok((n.clone(), t.dims().to_vec(), bytes))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, shape, bytes)| -> Result<_> {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, None)?)
}
