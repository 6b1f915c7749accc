#!/usr/bin/env python3
"""A scaling model of data-parallel steps, calibrated on bench/scaling-netns.sh runs and checked against them.

A step on N workers (weak scaling: each worker computes its own share in C seconds) is
    overlap:    T = max(W_down + W_up + x C, C) + U
    no overlap: T = W_down + W_up + C + U
where W_down / W_up are the seconds the busiest link needs for what it receives / sends in a step (tau seconds a byte,
plus a latency per message round), x the part of the compute that no transfer can hide (the first op waits for its
weights, the last bucket leaves after the backward), and U the update (AdamW and the control plane). The designs:
    one coordinator (today):  its link carries N weight sets down (4P bytes each) and N gradient sums up (gP each);
    parameter shards:         every node sends and receives (N-1)/N of the gradients (gP) and of the weights (4P), and
                              its range's sum to that range's replica (4P/N), in three phases (gradients, replica, weights)
                              over full-duplex links; the update is spread over the N shards, plus a scalar round for the norm;
    ring all-reduce (theory): every node sends and receives 2 (N-1)/N gP in 2 (N-1) messages, no weights move, every
                              node runs the whole update.
P parameters, g = 4 bytes (fp32) or 2 (bf16) a gradient value.

Inputs measured in the runs: C(N) is the slowest worker's compute in the shaped run itself, without the time its forward
sat waiting for weights still on the wire (busy_ms: all the workers share one machine's cores, so C grows with N here,
and how much depends on how the transfers stagger them, which only the shaped run shows); U(N) is the unshaped run's
(RATE=40gbit) step time minus its compute, per N and design. Calibrated: tau and x, on the shaped one-coordinator runs
at N = 1 and 2 (two equations, two unknowns). The one-coordinator runs at N = 3.. and every sharded run with N >= 2
(runs with --shards auto in the same files) are then predicted, not fitted, and compared with the measured step times.
Efficiency is C / (T - U): the share of a step, the update aside, that is compute.

--check SHAPED UNSHAPED predicts another pair of runs (say bf16 gradients) with this calibration, every N of it.

usage: bench/scaling_model.py SHAPED.jsonl UNSHAPED.jsonl [--check SHAPED2 UNSHAPED2] [--compute-ms MS] [--latency-us US]
"""
import argparse
import json
import statistics
import sys

DESIGNS = ("coordinator", "shards", "ring")


def step_seconds(design, n, params, grad_bytes, tau, hidden, compute, update, latency, overlap=True):
    """Step time of one design on n workers; update is the whole model's update on one node; hidden = 1 - x."""
    if design == "coordinator":
        down, up, update_here, rounds = n * 4 * params, n * grad_bytes * params, update, 1
    elif design == "shards":
        share = (n - 1) / n
        replica = 4 * params / n if n > 1 else 0.0
        down, up, update_here, rounds = share * 4 * params + replica, share * grad_bytes * params, update / n, 3
    elif design == "ring":
        down, up, update_here, rounds = 0.0, 2 * (n - 1) / n * grad_bytes * params, update, 2 * max(0, n - 1)
    else:
        raise ValueError(design)
    wire = (down + up) * tau + rounds * latency
    if overlap:
        return max(wire + (1 - hidden) * compute, compute) + update_here
    return wire + compute + update_here


def medians(path, shards="1"):
    """Per N, the medians of the runs with that --shards value (runs from before --shards count as 1)."""
    runs = [r for r in (json.loads(line) for line in open(path) if line.strip()) if str(r.get("shards", "1")) == shards]
    by_n = {}
    for n in sorted({r["workers"] for r in runs}):
        mine = [r for r in runs if r["workers"] == n]
        if any("busy_ms" not in r for r in mine):
            sys.exit(f"{path}: runs without busy_ms (from before it was measured): rerun bench/scaling-netns.sh")
        by_n[n] = {k: statistics.median(r[k] for r in mine) for k in ("step_ms", "compute_ms", "busy_ms", "coordinator_bytes", "max_node_bytes")}
        by_n[n].update(rate_bps=mine[0]["rate_bps"], wire=mine[0]["wire"])
    return by_n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shaped")
    parser.add_argument("unshaped")
    parser.add_argument("--compute-ms", type=float, help="compute per step of the 10.7M model on one node (default: "
                        "the measured N = 1 compute scaled from the measured model's size)")
    parser.add_argument("--latency-us", type=float, default=50.0, help="per message (default 50, a datacenter TCP hop)")
    parser.add_argument("--check", nargs=2, metavar=("SHAPED", "UNSHAPED"), help="another pair of runs to predict whole")
    args = parser.parse_args()

    shaped, unshaped = medians(args.shaped), medians(args.unshaped)
    shaped_shards, unshaped_shards = medians(args.shaped, "auto"), medians(args.unshaped, "auto")
    if not {1, 2, 3} <= shaped.keys() & unshaped.keys():
        print("need N = 1, 2 and at least 3 in both runs", file=sys.stderr)
        return 2
    grad_bytes = 2 if shaped[1]["wire"] == "bf16" else 4
    params = shaped[1]["coordinator_bytes"] / (4 + grad_bytes)  # N = 1: one weight set down, one gradient sum up
    latency = args.latency_us * 1e-6

    def measured(n, shaped=shaped, unshaped=unshaped):
        """(C, U, T) at n workers: the shaped run's busy compute, the unshaped run's step minus its compute, the shaped step."""
        u = max(0.0, (unshaped[n]["step_ms"] - unshaped[n]["compute_ms"]) / 1e3)
        return shaped[n]["busy_ms"] / 1e3, u, shaped[n]["step_ms"] / 1e3

    # Wire-bound at N = 1 and 2: T(N) - U(N) - latency = N (4 + g) P tau + x C(N), two linear equations for tau and x.
    (c1, u1, t1), (c2, u2, t2) = measured(1), measured(2)
    a1, a2 = (4 + grad_bytes) * params, 2 * (4 + grad_bytes) * params
    b1, b2 = t1 - u1 - latency, t2 - u2 - latency
    det = a1 * c2 - a2 * c1
    tau, x = (b1 * c2 - b2 * c1) / det, (a1 * b2 - a2 * b1) / det
    hidden = 1 - x
    nominal = 8 / shaped[1]["rate_bps"]
    print(f"calibration (N = 1, 2): P = {params / 1e6:.2f}M parameters, {shaped[1]['wire']} gradients; link "
          f"{shaped[1]['rate_bps'] / 1e9:g} Gbit/s nominal, measured as {nominal / tau:.0%} of it (tau {tau * 1e9:.2f} ns/byte); "
          f"x = {x:.2f} of the compute not hidden by the transfers")
    def compare(title, design, shaped, unshaped, first_predicted):
        """Prints measured against predicted step times; returns the largest error from first_predicted on."""
        if not shaped or not unshaped:
            return 0.0
        g = 2 if next(iter(shaped.values()))["wire"] == "bf16" else 4
        print(f"\nmeasured against predicted ({title}):")
        print(f"{'N':>3} {'busy compute ms':>16} {'measured ms':>12} {'predicted ms':>13} {'error':>7} {'largest node MB/step':>21} {'model MB/step':>14}")
        worst = 0.0
        for n in sorted(shaped.keys() & unshaped.keys()):
            c, u, t = measured(n, shaped, unshaped)
            predicted = step_seconds(design, n, params, g, tau, hidden, c, u, latency)
            error = predicted / t - 1
            if n >= first_predicted:
                worst = max(worst, abs(error))
            node = n * (4 + g) * params if design == "coordinator" else 2 * ((n - 1) / n * (4 + g) * params + (4 * params / n if n > 1 else 0))
            print(f"{n:3d} {c * 1e3:16.1f} {t * 1e3:12.1f} {predicted * 1e3:13.1f} {error:+7.1%} "
                  f"{shaped[n]['max_node_bytes'] / 1e6:21.1f} {node / 1e6:14.1f}")
        return worst

    worst = compare(f"one coordinator, {shaped[1]['wire']}; N = 1, 2 calibrate", "coordinator", shaped, unshaped, 3)
    worst = max(worst, compare(f"parameter shards, {shaped[1]['wire']}; every N predicted", "shards", shaped_shards, unshaped_shards, 2))
    if args.check:
        other, other_unshaped = medians(args.check[0]), medians(args.check[1])
        worst = max(worst, compare(f"one coordinator, {other[1]['wire']}; every N predicted", "coordinator", other, other_unshaped, 1))
        worst = max(worst, compare(f"parameter shards, {other[1]['wire']}; every N predicted", "shards",
                                   medians(args.check[0], "auto"), medians(args.check[1], "auto"), 2))
    trusted = worst <= 0.15
    print(f"largest error of the predicted points: {worst:.1%} ({'within' if trusted else 'OUTSIDE'} the 15% the table below needs)")

    # Predictions: per-node compute from the measurement, scaled with the parameter count (FLOPs per token ~ 6P).
    base_ms = args.compute_ms if args.compute_ms else shaped[1]["busy_ms"] * 10.7e6 / params
    update_per_param = u1 / params
    print(f"\npredictions, weak scaling: a node computes {base_ms:.0f} ms a step for 10.7M parameters (scaled with P; "
          f"--compute-ms sets it), updates {update_per_param * 1e9:.1f} ns a parameter, {args.latency_us:g} us a message, "
          f"links at their nominal rate, x = {x:.2f}; efficiency at N = 2, 8, 64, 256:")
    for size in (10.7e6, 124e6):
        compute = base_ms / 1e3 * size / 10.7e6
        update = update_per_param * size
        for gbit in (10, 25, 100):
            link_tau = 8 / (gbit * 1e9)
            for wire, g in (("fp32", 4), ("bf16", 2)):
                for overlap in (True, False):
                    cells = []
                    for design in DESIGNS:
                        effs = []
                        for n in (2, 8, 64, 256):
                            t = step_seconds(design, n, size, g, link_tau, hidden, compute, update, latency, overlap)
                            effs.append(compute / (t - (update / n if design == "shards" else update)))
                        cells.append(" ".join(f"{e:4.0%}" for e in effs))
                    print(f"{size / 1e6:6.1f}M {gbit:3d} Gbit {wire} {'overlap' if overlap else 'serial ':7}  " +
                          "  |  ".join(f"{d}: {c}" for d, c in zip(DESIGNS, cells)))
    return 0 if trusted else 1


if __name__ == "__main__":
    sys.exit(main())
