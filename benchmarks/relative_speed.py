"""Relative training speed of several configurations on one dataset, measured in one process with
their epochs interleaved (A B C A B C ...), so that a noisy machine slows them all alike. Prints the
median seconds per training epoch and its ratio to the first configuration.

    python benchmarks/relative_speed.py -d ml100k --reps 5 \\
        "LightGCN --n_layers 1 --reg_weight 0.01" \\
        "SIGREC --perturb_eps 0.2 --cl_weight 0.01 --anchor_weight 0.01 --align_weight 0.01"

Each configuration is "MODEL --key value ..."; grid keys not fixed take their first value. Epochs run
through the harness's own trainer (``Trainer.run_epoch``: the model's ``pre_epoch_processing`` hook,
e.g. FREEDOM's graph pruning, the batches and the scheduler step, as MMRec times an epoch) after one
warm-up epoch each; threads
follow OMP_NUM_THREADS. For absolute figures with evaluation and memory, use benchmark.py.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import point_config, warnings_only_logging  # noqa: E402
from common.trainer import Trainer  # noqa: E402
from main import parse_overrides  # noqa: E402
from utils.errors import HarnessError  # noqa: E402
from utils.quick_start import load_data  # noqa: E402
from utils.utils import get_model, init_seed  # noqa: E402


def build(spec: str, dataset: str, common: dict, device: str) -> tuple[Trainer, object]:
    """A trainer and its training loader for one "MODEL --key value ..." configuration."""
    tokens = shlex.split(spec)
    if not tokens:
        raise SystemExit("error: an empty configuration; write e.g. \"LightGCN --n_layers 1\"")
    cfg = point_config(tokens[0], dataset, {**common, **parse_overrides(tokens[1:])}, device)
    data = load_data(cfg)
    init_seed(int(cfg["seed"]), cfg["deterministic"] is not False)
    data.train.pretrain_setup(int(cfg["seed"]))
    model = get_model(cfg["model"])(cfg, data.train).to(cfg["device"])
    return Trainer(cfg, model), data.train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help='"MODEL --key value ...", the first is the reference')
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--data_path", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3, help="timed epochs per configuration (default 3)")
    args = p.parse_args()
    warnings_only_logging()
    common = {"data_path": args.data_path} if args.data_path else {}
    try:
        runs = [(spec, *build(spec, args.dataset, common, args.device)) for spec in args.configs]
    except HarnessError as exc:
        sys.exit(f"error: {exc}")
    times: dict[str, list[float]] = {spec: [] for spec in args.configs}
    for rep in range(args.reps + 1):  # round 0 warms up every configuration
        for spec, trainer, train in runs:
            _, seconds = trainer.run_epoch(train, rep)  # as in training: hook, batches, scheduler
            if rep:
                times[spec].append(seconds)
    reference = statistics.median(times[args.configs[0]])
    print(f"| {args.dataset} | s/epoch (median of {args.reps}) | × first | all |\n|---|---|---|---|")
    for spec in args.configs:
        med = statistics.median(times[spec])
        print(f"| {spec} | {med:.3f} | {med / reference:.1f}× | {', '.join(f'{t:.3f}' for t in times[spec])} |")


if __name__ == "__main__":
    main()
