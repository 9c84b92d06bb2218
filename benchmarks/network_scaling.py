"""Data parallelism over a network: the gradient's reduction between 1, 2 and 4 hosts joined by links
of 1 Gbit/s, 10 Gbit/s or unshaped, and a latency-bandwidth model of it extrapolated to 64 hosts.

    sudo .venv/bin/python benchmarks/network_scaling.py [--rates off 10gbit 1gbit] [--nodes 1 2 4]
                                                        [--per-node 1 2] [--reps 10] [--rounds 3]
                                                        [--plot docs/network_scaling.png]

Needs root: it builds 4 Slurm nodes with tests/cluster/netns_cluster.sh (network namespaces on this
machine, one link each to a bridge, shaped with tbf) and tears them down at the end.  The hosts
share this machine's cores, so it measures communication, not compute: each configuration is one
srun job of benchmarks/workers/reduction_worker.py (MPICH_CH4_NETMOD=ofi, so inter-host data crosses
the links), which times the Allreduce of the gradient (flat, ddp_edf's), a hierarchical reduction
(reduce-scatter in the host, 1/L of the data between hosts, allgather), and a step whose backward
(emulated by sleeping the GEMMs' time on one core) is followed by the Allreduce or overlapped with
one Iallreduce per layer.  Models: the default MLP 784-256-10 (0.2M parameters), 784-2048-1024-10
(3.7M) and the CNN of configs/fashion_cnn.toml (0.42M parameters; 30x the MLP's FLOPs per example).
Results: --json (default benchmarks/results/network_scaling.json).

The model, per link rate (Hockney's, for the bandwidth-optimal Allreduce MPICH uses on large data,
reduce-scatter then allgather by recursive halving and doubling):
    T(N) = 2 alpha ceil(log2 N) + m(N) / beta,    m(N) = 2 (N - 1) / N * n * c
N hosts with one rank each, n the gradient's bytes, m the bytes each host receives per reduction (c,
the protocol's overhead, from the bytes measured on the links).  Both are fitted at the most hosts
whose ranks each had a core of the measuring machine (with more, busy-polling ranks share the cores
with the kernel's packet processing and the links slow down; a real host is assumed to keep its
link's rate): alpha from the 8-byte Allreduce (log2 P rounds), beta from the 3.7M model's Allreduce,
which is bandwidth-bound.  Weak scaling: every rank keeps 128 examples per step, whose forward and
backward GEMMs take one core `compute` seconds at the measured sgemm rate; a step is compute + T(N)
(no overlap), efficiency compute / (compute + T(N)).
"""

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CLUSTER = common.ROOT / "tests/cluster/netns_cluster.sh"
WORKER = str(common.BENCH / "workers" / "reduction_worker.py")
BASE = Path("/tmp/ddp_edf_cluster")
MODELS = {"784-256-10": "784,256,10", "784-2048-1024-10": "784,2048,1024,10", "cnn": "cnn"}
WIDEST = "784-2048-1024-10"          # bandwidth-bound: the model's beta is fitted on it
# The CNN's forward + backward FLOPs per example: conv0 2 x, conv1 and the fc layers 3 x their forward GEMM's
CNN_FLOPS = 2 * 2 * 784 * 9 * 32 + 3 * 2 * 196 * 288 * 64 + 3 * 2 * 3136 * 128 + 3 * 2 * 128 * 10
PER_RANK_BATCH = 128


def cluster(*command, check=True):
    result = subprocess.run(["bash", str(CLUSTER), *command], capture_output=True, text=True,
                            env={**os.environ, "CLUSTER_BASE": str(BASE)}, timeout=600)
    if check and result.returncode != 0:
        sys.exit(f"network_scaling: netns_cluster.sh {' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def sgemm_gflops() -> float:
    """One core's sgemm rate at the 3.7M model's shapes (the emulated backward's clock)."""
    code = ("import time, numpy as np\n"
            "a = np.random.rand(128, 2048).astype(np.float32); b = np.random.rand(2048, 1024).astype(np.float32)\n"
            "a @ b; t = time.perf_counter(); n = 0\n"
            "while time.perf_counter() - t < 1: a @ b; n += 1\n"
            "print(2 * 128 * 2048 * 1024 * n / (time.perf_counter() - t) / 1e9)")
    rates = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  env=common.clean_env(1)).stdout) for _ in range(3)]
    return statistics.median(rates)


def run(nodes, per_node, layers, reps, rounds, gflops):
    env = {**common.clean_env(1), "SLURM_CONF": str(BASE / "slurm.conf")}
    if nodes > 1:
        env["MPICH_CH4_NETMOD"] = "ofi"     # the wheel's UCX would use shared memory between the netns hosts
    result = subprocess.run(["srun", f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--mpi=pmi2",
                             "--kill-on-bad-exit=1", "--time=20", sys.executable, WORKER, "--layers", layers,
                             "--batch", str(PER_RANK_BATCH), "--gflops", str(gflops), "--reps", str(reps),
                             "--rounds", str(rounds)], capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"network_scaling: the job failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", nargs="+", default=["off", "10gbit", "1gbit"])
    parser.add_argument("--nodes", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--per-node", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=str(common.BENCH / "results" / "network_scaling.json"))
    parser.add_argument("--plot", help="draw the measurements and the model into this PNG (needs matplotlib)")
    parser.add_argument("--refit", action="store_true", help="fit the model to the measurements in --json again")
    options = parser.parse_args()
    if options.refit:
        saved = json.loads(Path(options.json).read_text())
        measured, gflops, cores = saved["measured"], saved["sgemm_gflops"], saved["cores"]
        rates = list(dict.fromkeys(r["rate"] for r in measured if r["rate"] != "none"))
        return finish(measured, model_fits(measured, rates, gflops, cores), gflops, cores, options)
    if os.geteuid() != 0:
        sys.exit("network_scaling: needs root (it builds network namespaces); run it with sudo")

    gflops = sgemm_gflops()
    print(f"{common.machine_summary()}; one core's sgemm: {gflops:.1f} GFLOP/s", flush=True)
    cluster("down", check=False)
    cluster("up", str(max(options.nodes)))
    measured = []
    try:
        for rate in options.rates:
            cluster("shape", rate)
            for (model, layers), nodes, per_node in itertools.product(MODELS.items(), options.nodes, options.per_node):
                if nodes == 1 and rate != options.rates[0]:
                    continue                    # one host: no link to shape
                record = run(nodes, per_node, layers, options.reps, options.rounds, gflops)
                record.update(rate=rate if nodes > 1 else "none", model=model, per_node=per_node)
                measured.append(record)
                s, b = record["seconds"], record["link_bytes_per_host"]
                print(f"{rate:>7} {model:>17} {nodes} hosts x {per_node}: flat {s['flat'] * 1e3:8.2f} ms "
                      f"({b['flat'] / 1e6:6.2f} MB in), hierarchical {s['hierarchical'] * 1e3:8.2f} ms "
                      f"({b['hierarchical'] / 1e6:6.2f} MB in); step {s['step'] * 1e3:8.2f} ms, overlapped "
                      f"{s['step_overlapped'] * 1e3:8.2f} ms (backward {record['backward_s'] * 1e3:.2f} ms)", flush=True)
    finally:
        cluster("down", check=False)

    cores = os.cpu_count() or 1
    finish(measured, model_fits(measured, options.rates, gflops, cores), gflops, cores, options)


def finish(measured, models, gflops, cores, options):
    report(measured, models, gflops)
    Path(options.json).write_text(json.dumps({"machine": common.machine_summary(), "cores": cores,
                                              "sgemm_gflops": gflops, "per_rank_batch": PER_RANK_BATCH,
                                              "measured": measured, "model": models}, indent=1))
    if options.plot:
        plot(measured, models, cores, options.plot)


def compute_seconds(layers: str, gflops: float) -> float:
    """Forward + backward GEMMs of one rank's 128 examples on one core (no dx for the images)."""
    if layers == "cnn":
        return PER_RANK_BATCH * CNN_FLOPS / (gflops * 1e9)
    widths = [int(w) for w in layers.split(",")]
    flops = sum((3 if k else 2) * 2 * PER_RANK_BATCH * i * j for k, (i, j) in enumerate(zip(widths, widths[1:])))
    return flops / (gflops * 1e9)


def model_fits(measured, rates, gflops, cores):
    """Per link rate, from the most hosts (one rank each) whose ranks each had one of the `cores`:
    alpha from the 8-byte Allreduce (recursive doubling: log2 P rounds), beta from the widest model's
    Allreduce (bandwidth-bound; 2 log2 P rounds); the reduction and the weak-scaling efficiency at
    1..64 hosts."""
    fits = {}
    most = max(r["hosts"] for r in measured if r["per_node"] == 1 and r["hosts"] <= cores)
    widest_model = WIDEST
    for rate in rates:
        points = [r for r in measured if r["rate"] == rate and r["per_node"] == 1 and r["hosts"] > 1]
        fitted = [r for r in points if r["hosts"] == most]
        if not fitted:
            continue
        alpha = statistics.mean(r["seconds"]["latency"] / math.ceil(math.log2(r["ranks"])) for r in fitted)
        wide = [r for r in fitted if r["model"] == widest_model][0]
        rounds = 2 * math.ceil(math.log2(wide["ranks"]))
        beta = wide["link_bytes_per_host"]["flat"] / (wide["seconds"]["flat"] - alpha * rounds)
        entry = {"alpha_s": alpha, "beta_bytes_per_s": beta, "fitted_at_hosts": most, "models": {}}
        for model, layers in MODELS.items():
            if not [r for r in fitted if r["model"] == model]:
                continue                  # a model not measured (results saved before it was added)
            at_most = [r for r in fitted if r["model"] == model][0]
            n = at_most["bytes"]
            c = at_most["link_bytes_per_host"]["flat"] / (2 * (most - 1) / most * n)   # protocol overhead
            step = compute_seconds(layers, gflops)
            rows = []
            for hosts in (1, 2, 4, 8, 16, 32, 64):
                reduction = 0.0 if hosts == 1 else \
                    2 * alpha * math.ceil(math.log2(hosts)) + 2 * (hosts - 1) / hosts * n * c / beta
                seen = [r["seconds"]["flat"] for r in points if r["model"] == model and r["hosts"] == hosts]
                rows.append({"hosts": hosts, "reduction_s": reduction, "measured_s": seen[0] if seen else None,
                             "step_s": step + reduction, "efficiency": step / (step + reduction)})
            entry["models"][model] = {"bytes": n, "traffic_factor": c, "compute_s": step, "extrapolated": rows}
        fits[rate] = entry
    return fits


def report(measured, models, gflops):
    print("\n| link | model | hosts x ranks | flat Allreduce, ms | MB into a host | hierarchical, ms | "
          "MB into a host | backward + Allreduce, ms | overlapped, ms |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in measured:
        s, b = r["seconds"], r["link_bytes_per_host"]
        print(f"| {r['rate']} | {r['model']} | {r['hosts']} x {r['per_node']} | {s['flat'] * 1e3:.2f} | "
              f"{b['flat'] / 1e6:.2f} | {s['hierarchical'] * 1e3:.2f} | {b['hierarchical'] / 1e6:.2f} | "
              f"{s['step'] * 1e3:.2f} | {s['step_overlapped'] * 1e3:.2f} |")
    print("\n| link | alpha, us | beta, Gbit/s | model | compute, ms | hosts | reduction, ms (measured) | "
          "step, ms | efficiency |")
    print("|---|--:|--:|---|--:|--:|--:|--:|--:|")
    for rate, entry in models.items():
        for model, m in entry["models"].items():
            for row in m["extrapolated"]:
                if row["hosts"] in (2, 4, 8, 16, 64):
                    seen = f" ({row['measured_s'] * 1e3:.2f})" if row["measured_s"] else ""
                    print(f"| {rate} | {entry['alpha_s'] * 1e6:.0f} | {entry['beta_bytes_per_s'] * 8 / 1e9:.2f} | "
                          f"{model} | {m['compute_s'] * 1e3:.2f} | {row['hosts']} | {row['reduction_s'] * 1e3:.2f}{seen} | "
                          f"{row['step_s'] * 1e3:.2f} | {row['efficiency']:.2f} |")


def plot(measured, models, cores, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"off": "tab:green", "10gbit": "tab:blue", "1gbit": "tab:red"}
    for axis, model in zip(axes, ("784-256-10", WIDEST)):
        for rate, entry in models.items():
            if model not in entry["models"]:
                continue
            rows = entry["models"][model]["extrapolated"]
            axis.plot([r["hosts"] for r in rows[1:]], [r["reduction_s"] * 1e3 for r in rows[1:]], "--",
                      color=colours.get(rate), label=f"model, {rate}")
            points = [r for r in measured if r["rate"] == rate and r["model"] == model and r["per_node"] == 1]
            for shared in (False, True):     # hollow: more ranks than this machine's cores
                chosen = [r for r in points if (r["ranks"] > cores) == shared]
                axis.plot([r["hosts"] for r in chosen], [r["seconds"]["flat"] * 1e3 for r in chosen], "o",
                          color=colours.get(rate), fillstyle="none" if shared else "full",
                          label=f"measured, {rate}" + (" (ranks share cores)" if shared else ""))
        axis.set(xscale="log", yscale="log", xlabel="hosts (one rank each)", ylabel="Allreduce of the gradient, ms",
                 title=f"{model} ({'0.2M' if model == '784-256-10' else '3.7M'} parameters)")
        axis.set_xticks([2, 4, 8, 16, 32, 64], ["2", "4", "8", "16", "32", "64"])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.legend(fontsize=7, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
