"""The reference stack on the study's workload shape (run on the GPU host, same card as
`persona-geometry bench-workload`): random weights of Qwen2.5-7B-Instruct's exact shape, bf16,
SDPA, 2,880 prompts of 60-110 random tokens.

- Method A: batched forward (left padding), hidden states of blocks 7,14,20,21,27 at the last
  token (forward hooks on model.model.layers[l]).
- Method B: HF `generate` (greedy, exactly 200 new tokens, batch 256) followed by the
  re-forward over prompt + response to average the response positions (the reference scripts'
  way).

Prints seconds, tokens/s and effective TFLOP/s in the same format as bench-workload.
Needs torch and transformers (present on the GPU hosts); no network.
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--prompts", type=int, default=2880)
p.add_argument("--min-len", type=int, default=60)
p.add_argument("--max-len", type=int, default=110)
p.add_argument("--new-tokens", type=int, default=200)
p.add_argument("--batch-a", type=int, default=64)
p.add_argument("--batch-b", type=int, default=256)
p.add_argument("--layers", default="7,14,20,21,27")
p.add_argument("--skip-b", action="store_true")
p.add_argument("--arch", default="qwen2.5-7b", choices=["qwen2.5-7b", "qwen3-8b", "gemma2-9b"],
               help="a shape of bench/configs/ (the same files bench-workload --arch reads)")
p.add_argument("--prompts-file", default=None,
               help="token ids (JSON list of lists, e.g. bench-workload --dump-prompts of the default study's prompts) instead of random prompts")
p.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa; eager for exact Gemma 2 soft-capping)")
a = p.parse_args()
layers = [int(x) for x in a.layers.split(",")]

torch.manual_seed(0)
t = time.perf_counter()
if a.arch == "qwen2.5-7b":
    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation=a.attn)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
else:
    spec = json.load(open(os.path.join(os.path.dirname(__file__), "configs", a.arch + ".json")))
    spec.pop("architectures", None)
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=a.attn).to(torch.bfloat16).eval()
print(f"HF reference: {a.arch}, attn_implementation={model.config._attn_implementation}")
torch.cuda.synchronize()
n_params = sum(p.numel() for n, p in model.named_parameters() if "layers." in n and p.dim() == 2)
print(f"HF reference: random weights ({n_params / 1e9:.2f} B matmul params excl. embeddings) in {time.perf_counter() - t:.1f} s; torch {torch.__version__}")
g = torch.Generator().manual_seed(0)
lens = torch.randint(a.min_len, a.max_len + 1, (a.prompts,), generator=g).tolist()
prompts = [torch.randint(0, min(150000, cfg.vocab_size), (n,), generator=g).tolist() for n in lens]
if a.prompts_file:
    prompts = json.load(open(a.prompts_file))
    lens = [len(x) for x in prompts]
    a.prompts = len(prompts)
    print(f"HF reference: {len(prompts)} prompts from {a.prompts_file} ({sum(lens)} tokens)")
prompts.sort(key=len)
prompt_tokens = sum(lens)
flop = 2.0 * n_params

captured = {}
hooks = [model.model.layers[l].register_forward_hook(lambda m, i, o, l=l: captured.__setitem__(l, o[0] if isinstance(o, tuple) else o)) for l in layers]


def batch(chunk, pad_to=None):
    m = max(len(x) for x in chunk)
    ids = torch.zeros((len(chunk), m), dtype=torch.long)
    att = torch.zeros((len(chunk), m), dtype=torch.long)
    for i, x in enumerate(chunk):
        ids[i, m - len(x):] = torch.tensor(x)
        att[i, m - len(x):] = 1
    return ids.cuda(), att.cuda()


with torch.no_grad():
    ids, att = batch(prompts[: a.batch_a])
    model(input_ids=ids, attention_mask=att)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, a.prompts, a.batch_a):
        ids, att = batch(prompts[i: i + a.batch_a])
        model(input_ids=ids, attention_mask=att)
        _ = [captured[l][:, -1].float().cpu() for l in layers]
    torch.cuda.synchronize()
    ta = time.perf_counter() - t
    print(f"method A: {a.prompts} prompts ({prompt_tokens} tokens, batch {a.batch_a}) in {ta:.2f} s = {prompt_tokens / ta:.0f} tok/s, {flop * prompt_tokens / ta / 1e12:.0f} TFLOP/s effective")
    if not a.skip_b:
        t = time.perf_counter()
        generated = 0
        for i in range(0, a.prompts, a.batch_b):
            chunk = prompts[i: i + a.batch_b]
            ids, att = batch(chunk)
            out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
            resp = out[:, ids.shape[1]:]
            generated += resp.numel()
            # re-forward over prompt + response, mean over response positions
            full_att = torch.cat([att, torch.ones_like(resp)], dim=1)
            for j in range(0, len(chunk), a.batch_a):
                model(input_ids=out[j: j + a.batch_a], attention_mask=full_att[j: j + a.batch_a])
                _ = [captured[l][:, ids.shape[1]:].float().mean(1).cpu() for l in layers]
        torch.cuda.synchronize()
        tb = time.perf_counter() - t
        print(f"method B: {a.prompts} prompts x {a.new_tokens} new tokens (batch {a.batch_b}) in {tb:.2f} s = {generated / tb:.0f} generated tok/s, {flop * (generated + prompt_tokens) / tb / 1e12:.0f} TFLOP/s effective (generate + re-forward)")
