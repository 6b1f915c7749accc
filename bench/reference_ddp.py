#!/usr/bin/python3
"""PyTorch DDP reference for `bench/dev-throughput.sh`: the model of bench/reference_gpt.py wrapped in
DistributedDataParallel over the gloo backend, N processes on this machine with 1 thread each, the global batch split
between the ranks (nanoGPT's train.py under torchrun: each rank samples its own batch, DDP all-reduces the gradients
during backward, then clip_grad_norm_ and AdamW on every rank). A benchmark, not a test: the project never depends on
PyTorch. Prints rank 0's per-step times, then one JSON line with the global tokens/s.

usage: /usr/bin/python3 bench/reference_ddp.py --config cpu --world 2 --steps N --warmup N --data FILE
"""
import argparse, json, os, resource, socket, sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from reference_gpt import GPT, PRESETS, load_splits, random_batch, timed_steps, train_step


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, args, port, results):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.manual_seed(1337)  # same initial weights on every rank, as DDP broadcasts them anyway
    vocab, train, _ = load_splits(args.data)
    n_layer, n_head, n_embd, block_size, batch_size, dropout = PRESETS[args.config]
    if batch_size % args.world:
        sys.exit(f"global batch {batch_size} does not split over {args.world} ranks")
    local_batch = batch_size // args.world
    model = GPT(vocab, n_layer, n_head, n_embd, block_size, dropout)
    model.train()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    ddp = DistributedDataParallel(model)
    torch.manual_seed(1337 + rank)  # each rank draws its own batches

    median = timed_steps(lambda: train_step(ddp, optimizer, *random_batch(train, block_size, local_batch))[0],
                         args.warmup, args.steps, echo=rank == 0)
    results[rank] = (median, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     sum(p.numel() for p in model.parameters()), batch_size * block_size)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    results = mp.Manager().dict()
    mp.spawn(rank_main, args=(args, free_port(), results), nprocs=args.world, join=True)
    median, _, params, tokens = results[0]
    print(json.dumps({"config": args.config, "impl": f"pytorch {torch.__version__} DDP gloo {args.world}x1 thread",
                      "params": params, "tokens_per_step": tokens, "ms_per_step": round(median, 2),
                      "tokens_per_s": round(tokens / (median / 1000), 1), "world": args.world,
                      "peak_rss_mb_per_rank": round(max(r[1] for r in results.values()), 1)}))


if __name__ == "__main__":
    sys.exit(main())
