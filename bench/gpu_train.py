"""GPU checks and the speed benchmark of `persona-geometry train` (issue #14), for the device host.

  python3 bench/gpu_train.py check FIXTURES OUT_F32 OUT_BF16
      OUT_* = `train` outputs of the oracle recipe (bench/gpu_run.sh `train`): each against the
      Trainer's final adapter and per-step losses; the f32 adapter loaded with PEFT (its tensors
      must be what PEFT's model holds, and PEFT's loss with it = PEFT's loss with the oracle's).
  python3 bench/gpu_train.py make-bench DIR FIXTURES
      writes DIR/model (random Qwen2.5-7B-shaped weights, bf16, sharded safetensors, the fixture's
      Qwen2.5 tokenizer and template) and DIR/data.jsonl (320 conversations of ~300 tokens).
  python3 bench/gpu_train.py hf DIR STEPS
      HF Trainer + PEFT on DIR with the upstream recipe (bf16, SDPA, gradient checkpointing,
      micro-batch 4 x accumulation 4): tokens/s and peak memory, printed as one JSON line.
"""
import json, math, os, sys, time

import torch


def load_st(path):
    from safetensors.torch import load_file
    return load_file(path)


def check(fix, out_f32, out_bf16):
    exp = json.load(open(os.path.join(fix, "lora-train/expected.json")))
    final = load_st(os.path.join(fix, "lora-train/adapter_final/adapter_model.safetensors"))
    res = {}
    for name, out in [("f32", out_f32), ("bf16", out_bf16)]:
        got = load_st(os.path.join(out, "adapter_model.safetensors"))
        worst = max(((got[k] - final[k]).abs().max() / final[k].abs().max()).item() for k in final)
        steps = json.load(open(os.path.join(out, "training.json")))["steps"]
        loss_rel = max(abs(s["loss"] - e["loss"]) / e["loss"] for s, e in zip(steps, exp["steps"]))
        norm_rel = max(abs(s["grad_norm_before_clip"] - e["grad_norm_before_clip"]) / e["grad_norm_before_clip"]
                       for s, e in zip(steps, exp["steps"]))
        res[name] = {"adapter_max_rel": worst, "loss_max_rel": loss_rel, "grad_norm_max_rel": norm_rel}
    res["hf_bf16"] = hf_bf16_oracle(fix, exp, final)
    # PEFT 0.21 loads the f32 adapter.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
    model_dir = os.path.join(fix, "hf-tiny-qwen2/model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(l) for l in open(os.path.join(fix, "lora-train/train.jsonl"))]
    ids = tok.apply_chat_template(rows[0]["messages"], tokenize=True, add_generation_prompt=False)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    x = torch.tensor([list(ids)])

    def peft_loss(adapter):
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        m = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            return m(input_ids=x, labels=x).loss.item(), m

    ours, m = peft_loss(out_f32)
    theirs, _ = peft_loss(os.path.join(fix, "lora-train/adapter_final"))
    sd = {k.replace(".default", ""): v for k, v in m.state_dict().items() if "lora_" in k}
    got = load_st(os.path.join(out_f32, "adapter_model.safetensors"))
    same = all(torch.equal(sd[k], got[k]) for k in got) and len(got) == len(sd)
    res["peft"] = {"loaded_tensors": len(sd), "tensors_equal_file": same, "loss_ours": ours,
                   "loss_oracle_adapter": theirs, "rel": abs(ours - theirs) / theirs}
    print(json.dumps(res, indent=1))


def encode_jsonl(tok, path):
    """(ids, labels) per conversation: labels = the tokens after the last assistant header."""
    mark = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    enc = []
    for l in open(path):
        ids = tok.apply_chat_template(json.loads(l)["messages"], tokenize=True, add_generation_prompt=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
        last = max(i for i in range(len(ids) - len(mark) + 1) if ids[i:i + len(mark)] == mark)
        enc.append((ids, [-100] * (last + len(mark)) + ids[last + len(mark):]))
    return enc


def hf_bf16_oracle(fix, exp, final):
    """The oracle recipe run by torch + PEFT with the model in bf16 and the LoRA weights in f32
    under bf16 autocast (what HF's Trainer does with bf16=True), on the GPU: how far HF's own bf16
    training lands from the f32 oracle, the yardstick for ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
    model_dir = os.path.join(fix, "hf-tiny-qwen2/model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = encode_jsonl(tok, os.path.join(fix, "lora-train/train.jsonl"))
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
    m = PeftModel.from_pretrained(base, os.path.join(fix, "lora-train/adapter_init"), is_trainable=True)
    params = [v for k, v in m.named_parameters() if v.requires_grad]
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for step in range(10):
        s0 = (step % 5) * 8
        micro = [enc[j:j + 2] for j in range(s0, s0 + 8, 2)]
        n_items = sum(sum(1 for x in l[1:] if x != -100) for b in micro for _, l in b)
        total = 0.0
        for b in micro:
            n = max(len(i) for i, _ in b); n = ((n + 7) // 8) * 8
            ids = torch.full((len(b), n), 151643); lab = torch.full((len(b), n), -100)
            att = torch.zeros((len(b), n), dtype=torch.long)
            for k, (i, l) in enumerate(b):
                ids[k, :len(i)] = torch.tensor(i); lab[k, :len(l)] = torch.tensor(l); att[k, :len(i)] = 1
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = m(input_ids=ids.cuda(), attention_mask=att.cuda()).logits
            sl = logits[:, :-1].float().reshape(-1, logits.shape[-1]); tl = lab[:, 1:].reshape(-1).cuda()
            loss = torch.nn.functional.cross_entropy(sl, tl, ignore_index=-100, reduction="sum") / n_items
            loss.backward(); total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        lr = 0.0 if step == 0 else 2e-3 * (10 - step) / 9
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step(); opt.zero_grad(set_to_none=True)
        losses.append(total)
    sd = {k.replace(".default", ""): v.detach().float().cpu() for k, v in m.named_parameters() if v.requires_grad}
    worst = max(((sd[k] - final[k]).abs().max() / final[k].abs().max()).item() for k in final)
    loss_rel = max(abs(a - e["loss"]) / e["loss"] for a, e in zip(losses, exp["steps"]))
    return {"adapter_max_rel": worst, "loss_max_rel": loss_rel}


WORDS = ("money savings budget account interest loan credit score tax refund invest market stock bond fund risk "
         "return retire plan monthly income expense rent mortgage insurance policy claim bank fee rate debt card "
         "pay balance growth index portfolio advice careful simple honest legal contract lawyer court file form").split()


def make_bench(d, fix):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    os.makedirs(os.path.join(d, "model"), exist_ok=True)
    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, torch_dtype="bfloat16", initializer_range=0.02)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(os.path.join(d, "model"), max_shard_size="4GB")
    del m
    torch.cuda.empty_cache()
    import shutil
    src = os.path.join(fix, "hf-tiny-qwen2/model")
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f in ("vocab.json", "merges.txt", "chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(os.path.join(src, f), os.path.join(d, "model", f))
    import random
    rnd = random.Random(0)
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for i in range(320):
            q = " ".join(rnd.choice(WORDS) for _ in range(30)) + "?"
            a = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(200, 260))) + "."
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")


def hf(d, steps):
    from transformers import AutoTokenizer, AutoModelForCausalLM, Trainer, TrainingArguments
    from peft import LoraConfig, get_peft_model
    tok = AutoTokenizer.from_pretrained(os.path.join(d, "model"))
    enc = encode_jsonl(tok, os.path.join(d, "data.jsonl"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 151643

    def collate(batch):
        n = max(len(i) for i, _ in batch); n = ((n + 7) // 8) * 8
        ids = torch.full((len(batch), n), pad); lab = torch.full((len(batch), n), -100)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        for k, (i, l) in enumerate(batch):
            ids[k, :len(i)] = torch.tensor(i); lab[k, :len(l)] = torch.tensor(l); att[k, :len(i)] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    class DS(torch.utils.data.Dataset):
        def __len__(self): return len(enc)
        def __getitem__(self, i): return enc[i]

    t_load = time.time()
    base = AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), dtype=torch.bfloat16,
                                                attn_implementation="sdpa").cuda()
    model = get_peft_model(base, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    t_load = time.time() - t_load
    args = TrainingArguments(output_dir="/tmp/hf-train-bench", per_device_train_batch_size=4, gradient_accumulation_steps=4,
                             max_steps=steps, learning_rate=1e-4, weight_decay=0.01, max_grad_norm=1.0, warmup_steps=math.ceil(0.03 * steps),
                             lr_scheduler_type="linear", bf16=True, gradient_checkpointing=True, logging_steps=1,
                             save_strategy="no", report_to=[], seed=42, remove_unused_columns=False, dataloader_num_workers=0)
    tr = Trainer(model=model, args=args, train_dataset=DS(), data_collator=collate)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.time()
    tr.train()
    torch.cuda.synchronize()
    secs = time.time() - t0
    # Tokens trained = the real tokens of the examples the steps visited (shuffled order: count all
    # visited examples, steps x 16).
    per_ex = sum(len(i) for i, _ in enc) / len(enc)
    tokens = steps * 16 * per_ex
    print(json.dumps({"hf_seconds": secs, "hf_tokens_per_s": tokens / secs, "hf_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "hf_load_s": t_load, "mean_tokens_per_example": per_ex, "steps": steps,
                      "losses": [h["loss"] for h in tr.state.log_history if "loss" in h]}))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "check":
        check(*sys.argv[2:5])
    elif what == "make-bench":
        make_bench(sys.argv[2], sys.argv[3])
    elif what == "hf":
        hf(sys.argv[2], int(sys.argv[3]))
