"""Time and peak memory of SIGREC's graph builders at Amazon Electronics scale.

Builds (1) the semantic kNN graph of N random float32 features of dimension d (default
63,001 x 4,096, as Electronics' image features) and (2) the co-interaction graph C = RᵀR of a
random binary R (default 192,403 users x 63,001 items, 1.69M interactions), each in a fresh
subprocess so that ru_maxrss is that part's own peak. The budget is 3 GB peak per part.

    nice python benchmarks/graph_memory.py            # both parts, full size
    python benchmarks/graph_memory.py --items 5000 --dim 256 --users 20000 --inters 100000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_part(args: argparse.Namespace) -> dict:
    """Build one graph in this process and return its figures."""
    sys.path.insert(0, str(SRC))
    import numpy as np
    import scipy.sparse as sp
    import torch

    from models.sigrec import co_interaction_graph, knn_graph

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    if args.part == "knn":
        feat = rng.standard_normal((args.items, args.dim), dtype=np.float32)
        base = peak_rss_mb()
        t0 = time.perf_counter()
        graph = knn_graph(feat, args.k, "cosine", block_size=args.block)
    else:
        users = rng.integers(0, args.users, size=args.inters)
        items = rng.integers(0, args.items, size=args.inters)
        inter = sp.csr_matrix((np.ones(args.inters, np.float32), (users, items)), shape=(args.users, args.items))
        inter.sum_duplicates()
        inter.data[:] = 1.0
        base = peak_rss_mb()
        t0 = time.perf_counter()
        graph = co_interaction_graph(inter, args.k, weighting="count", block_size=args.block)
    seconds = time.perf_counter() - t0
    return {"part": args.part, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_before_build_mb": round(base, 1), "nnz": int(graph.nnz),
            "max_row_nnz": int(np.diff(graph.indptr).max()), "shape": list(graph.shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["knn", "co", "both"], default="both")
    p.add_argument("--items", type=int, default=63001)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--users", type=int, default=192403)
    p.add_argument("--inters", type=int, default=1_690_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_part(args)))
        return
    parts = ["knn", "co"] if args.part == "both" else [args.part]
    for part in parts:
        cmd = [sys.executable, __file__, "--child", "--part", part] + \
            [f"--{k}={getattr(args, k)}" for k in ("items", "dim", "users", "inters", "k", "block", "threads")]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        budget = "within" if result["peak_rss_mb"] <= 3 * 1024 else "OVER"
        print(json.dumps(result), f"-> {budget} the 3 GB budget", flush=True)


if __name__ == "__main__":
    main()
