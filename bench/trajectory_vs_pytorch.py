#!/usr/bin/python3
"""Long-horizon check of the training step against PyTorch: starts bench/reference_gpt.py's model from DistGpt's
initial weights, feeds it exactly DistGpt's batches (the counter-based sampler re-implemented below) and learning
rates, and prints both loss curves side by side. Float rounding makes two correct implementations drift apart slowly;
a wrong optimizer, schedule, clipping or gradient shows up as a gap within the first steps. A diagnostic, not a test.

usage: bench/trajectory_vs_pytorch.py --steps 300 [--seed 1337] [--gelu tanh] --data FILE
       (runs ./distgpt train twice: once with learning rate 1e-30 (no change to a float32 weight) for the initial weights, once for the real curve)
"""
import argparse, json, os, struct, subprocess, sys, tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_gpt
from reference_gpt import GPT, LEARNING_RATE, LR_DECAY_ITERS, PRESETS, full_split_loss, load_splits, recipe_lr, train_step, windows

M64 = (1 << 64) - 1


def mix(x):  # Rng.Mix (splitmix64 finaliser)
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def key(*parts):
    h = mix(parts[0])
    for p in parts[1:]:
        h = mix(h ^ p)
    return h


def batch_starts(seed, step, batch, data_len, block):  # BatchSampler.Start for the train split
    return [(key(seed, 0x7472, step, i) * (data_len - block)) >> 64 for i in range(batch)]


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(blob[a:b], dtype=np.float32).copy().reshape(meta["shape"]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--gelu", choices=["none", "tanh"], default="tanh")
    ap.add_argument("--data", required=True)
    ap.add_argument("--distgpt", default="./distgpt")
    args = ap.parse_args()
    reference_gpt.GELU_APPROXIMATE = args.gelu
    torch.set_num_threads(1)
    n_layer, n_head, n_embd, block, batch, _ = PRESETS["cpu"]

    tmp = tempfile.mkdtemp()
    common = ["--seed", str(args.seed), "--data", args.data, "--threads", "1"]
    subprocess.run([args.distgpt, "train", *common, "--max-iters", "1", "--eval-interval", "100000", "--learning-rate", "1e-30", "--min-lr", "1e-31",
                    "--out", f"{tmp}/init"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([args.distgpt, "train", *common, "--max-iters", str(args.steps), "--lr-decay-iters", str(LR_DECAY_ITERS),
                    "--eval-interval", str(args.steps), "--out", f"{tmp}/run"], check=True,
                   stdout=subprocess.DEVNULL)
    ours = [json.loads(l) for l in open(f"{tmp}/run/metrics.jsonl")]
    ours = [o for o in ours if "loss" in o]

    vocab, train, val = load_splits(args.data)
    model = GPT(vocab, n_layer, n_head, n_embd, block, 0.0)
    state = load_safetensors(f"{tmp}/init/ckpt/model.safetensors")
    missing = model.load_state_dict(state, strict=False)
    print(f"loaded {len(state)} tensors; not in checkpoint: {missing.missing_keys}", file=sys.stderr)
    optimizer = model.configure_optimizers(0.1, LEARNING_RATE, (0.9, 0.99))

    print(f"{'step':>5} {'distgpt':>10} {'pytorch':>10} {'diff':>10} {'norm d':>9} {'norm p':>9}")
    window = []
    for s in range(1, args.steps + 1):
        starts = batch_starts(args.seed, s, batch, len(train), block)
        for g in optimizer.param_groups:
            g["lr"] = recipe_lr(s - 1)
        loss, norm = train_step(model, optimizer, *windows(train, starts, block))
        o = ours[s - 1]
        window.append(o["loss"] - loss.item())
        if s <= 10 or s % 25 == 0:
            print(f"{s:5d} {o['loss']:10.5f} {loss.item():10.5f} {o['loss'] - loss.item():10.5f} "
                  f"{o.get('grad_norm', float('nan')):9.4f} {norm:9.4f}  mean diff of last {len(window)}: "
                  f"{np.mean(window):+.5f}", flush=True)
            window = []

    # Both final models on the whole validation split (non-overlapping windows): no eval-sampling noise.
    ours_final = GPT(vocab, n_layer, n_head, n_embd, block, 0.0)
    ours_final.load_state_dict(load_safetensors(f"{tmp}/run/ckpt/model.safetensors"), strict=False)
    print(json.dumps({"steps": args.steps, "seed": args.seed, "gelu": args.gelu,
                      "distgpt_full_val_loss": round(full_split_loss(ours_final, val, block), 4),
                      "pytorch_full_val_loss": round(full_split_loss(model, val, block), 4),
                      "distgpt_metrics_val_loss": ours[-1].get("val_loss")}))


if __name__ == "__main__":
    sys.exit(main())
