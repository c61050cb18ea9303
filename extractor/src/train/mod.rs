//! `persona-geometry train` (issue #14): LoRA supervised finetuning that reproduces Hugging
//! Face's `Trainer` + PEFT (the oracle is ../shared/fixtures/lora-train).
//!
//! Data flow: JSONL conversations (`data`) → chat-templated, tokenized, labelled examples →
//! a deterministic plan of optimizer steps and micro-batches (`plan`) → the differentiable
//! forward with LoRA (`forward`) → summed cross-entropy / label tokens of the accumulated
//! batch → backward → global-norm clipping and AdamW (`optim`) at the scheduled learning rate
//! (`schedule`) → a PEFT adapter (`adapter`), with checkpoints and provenance (`run`).

pub mod adapter;
pub mod cli;
pub mod config;
pub mod data;
pub mod forward;
pub mod ops;
pub mod optim;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod trainer;
