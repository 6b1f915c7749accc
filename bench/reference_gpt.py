#!/usr/bin/python3
"""PyTorch reference trainer for `bench/compare-pytorch.sh`: nanoGPT's model.py architecture (pre-LN blocks, manual
causal attention as PyTorch 1.13 has no flash attention, nn.GELU, tied lm_head, dropout) and train.py's step
(get_batch with torch.randint windows, forward, backward, clip_grad_norm_ 1.0, AdamW with nanoGPT's two parameter
groups and default foreach, zero_grad(set_to_none=True)), float32 on the CPU. A benchmark, not a test: the project
never depends on PyTorch. Prints per-step times, then one JSON line like `distgpt bench`.

usage: /usr/bin/python3 bench/reference_gpt.py --config tiny|cpu|shakespeare --steps N --warmup N --threads N --data FILE
       /usr/bin/python3 bench/reference_gpt.py --recipe --seed S [--gelu tanh] --threads N --data FILE
         (--recipe: nanoGPT's whole CPU recipe instead of timing: 2000 iters, get_lr warmup 100 + cosine 1e-3 -> 1e-4,
          estimate_loss with 20 eval iters at iter 2000; prints one JSON line with train_loss and val_loss)
(set OMP_WAIT_POLICY=PASSIVE for more than one thread, as nanoGPT's baselines on this machine were measured)
"""
import argparse, json, math, os, resource, sys, time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

PRESETS = {  # n_layer, n_head, n_embd, block_size, batch_size, dropout (bias False, as distgpt bench)
    "tiny": (4, 4, 64, 32, 16, 0.0),
    "cpu": (4, 4, 128, 64, 12, 0.0),
    "shakespeare": (6, 6, 384, 256, 64, 0.2),
}


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout, bias):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd = n_head, n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


GELU_APPROXIMATE = "none"  # nanoGPT's nn.GELU() is the exact erf form; --gelu tanh matches DistGpt (GPT-2's)


class MLP(nn.Module):
    def __init__(self, n_embd, dropout, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate=GELU_APPROXIMATE)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout, bias):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout, bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, n_layer, n_head, n_embd, block_size, dropout, bias=False):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, dropout, bias) for _ in range(n_layer)]),
            ln_f=LayerNorm(n_embd, bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long).unsqueeze(0)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        nodecay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


# nanoGPT's CPU recipe for shakespeare_char (the README's; DistGpt's defaults): AdamW lr schedule and evaluation.
LEARNING_RATE, MIN_LR, WARMUP_ITERS, LR_DECAY_ITERS = 1e-3, 1e-4, 100, 2000


def recipe_lr(it):
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr, then min_lr (it counts from 0)."""
    if it < WARMUP_ITERS:
        return LEARNING_RATE * (it + 1) / (WARMUP_ITERS + 1)
    if it > LR_DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP_ITERS) / (LR_DECAY_ITERS - WARMUP_ITERS)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LR)


def load_splits(path):
    """A text file: nanoGPT's prepare.py for Tiny Shakespeare (vocabulary of sorted characters, 90/10 train/val split).
    A token directory (train.bin / val.bin, as `distgpt prepare` or nanoGPT's prepare.py write them): memory-mapped as
    nanoGPT's train.py does, vocab_size from meta.json (GPT-2's padded to 50304, as DistGpt's default), else 50304."""
    if os.path.isdir(path):
        train = np.memmap(os.path.join(path, "train.bin"), dtype=np.uint16, mode="r")
        val = np.memmap(os.path.join(path, "val.bin"), dtype=np.uint16, mode="r")
        vocab = 50304
        meta_path = os.path.join(path, "meta.json")
        if os.path.exists(meta_path):
            meta = json.load(open(meta_path))
            vocab = meta["vocab_size"] if meta["tokenizer"] == "char" else (meta["vocab_size"] + 63) // 64 * 64
        return vocab, train, val
    text = open(path, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(data))
    return len(chars), data[:n], data[n:]


def windows(data, starts, block):
    """(x, y) for sequences starting at `starts`: y is x shifted by one token."""
    x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in starts])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in starts])
    return x, y


def random_batch(data, block, batch):  # nanoGPT's get_batch
    return windows(data, torch.randint(len(data) - block, (batch,)), block)


def train_step(model, optimizer, x, y):
    """nanoGPT's step: forward, backward, clip the global norm to 1.0, AdamW, zero_grad. Returns (loss, norm)."""
    loss = model(x, y)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, float(norm)


def timed_steps(step, warmup, steps, echo=True):
    """Runs warmup + steps calls of step() (which returns the loss); returns the median ms of the timed ones."""
    times = []
    for s in range(1, warmup + steps + 1):
        t0 = time.perf_counter()
        loss = step()
        ms = (time.perf_counter() - t0) * 1000
        if s > warmup:
            times.append(ms)
        if echo:
            print(f"step {s}{' (warm-up)' if s <= warmup else ''}: loss {loss.item():.4f}, {ms:.1f} ms", flush=True)
    times.sort()
    n = len(times)
    return times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", action="store_true", help="train nanoGPT's CPU recipe to iter 2000 and report losses")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--gelu", choices=["none", "tanh"], default="none")
    args = ap.parse_args()
    global GELU_APPROXIMATE
    GELU_APPROXIMATE = args.gelu
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.recipe:
        return train_recipe(args)

    vocab, train, _ = load_splits(args.data)
    n_layer, n_head, n_embd, block_size, batch_size, dropout = PRESETS[args.config]
    model = GPT(vocab, n_layer, n_head, n_embd, block_size, dropout)
    model.train()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))

    median = timed_steps(lambda: train_step(model, optimizer, *random_batch(train, block_size, batch_size))[0],
                         args.warmup, args.steps)
    tokens = batch_size * block_size
    params = sum(p.numel() for p in model.parameters())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"config": args.config, "impl": "pytorch " + torch.__version__, "params": params,
                      "tokens_per_step": tokens, "ms_per_step": round(median, 2),
                      "tokens_per_s": round(tokens / (median / 1000), 1), "threads": args.threads,
                      "peak_rss_mb": round(rss_mb, 1)}))


@torch.no_grad()
def full_split_loss(model, data, block, batch=64):
    """Mean loss over every non-overlapping window of a split: the estimate without eval-sampling noise."""
    model.eval()
    n = (len(data) - 1) // block
    total = 0.0
    for b0 in range(0, n, batch):
        idx = range(b0, min(n, b0 + batch))
        total += model(*windows(data, [i * block for i in idx], block)).item() * len(idx)
    model.train()
    return total / n


def train_recipe(args):
    """nanoGPT's train.py loop for the README's CPU recipe (config/train_shakespeare_char.py + the CPU overrides)."""
    max_iters, eval_interval, eval_iters = 2000, 250, 20
    n_layer, n_head, n_embd, block_size, batch_size, dropout = PRESETS["cpu"]
    vocab, train, val = load_splits(args.data)
    splits = {"train": train, "val": val}

    def get_batch(split):
        return random_batch(splits[split], block_size, batch_size)

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ("train", "val"):
            out[split] = float(np.mean([model(*get_batch(split)).item() for _ in range(eval_iters)]))
        model.train()
        return out

    model = GPT(vocab, n_layer, n_head, n_embd, block_size, dropout)
    optimizer = model.configure_optimizers(0.1, LEARNING_RATE, (0.9, 0.99))
    t0 = time.perf_counter()
    for it in range(max_iters + 1):
        for group in optimizer.param_groups:
            group["lr"] = recipe_lr(it)
        if it % eval_interval == 0:
            losses = estimate_loss()
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            if it == max_iters:
                break
        train_step(model, optimizer, *get_batch("train"))
    print(json.dumps({"impl": "pytorch " + torch.__version__, "recipe": "cpu", "seed": args.seed, "gelu": args.gelu,
                      "step": max_iters, "train_loss": round(losses["train"], 4), "val_loss": round(losses["val"], 4),
                      "full_val_loss": round(full_split_loss(model, val, block_size), 4),
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    sys.exit(main())
