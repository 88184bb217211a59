"""Command line, compatible with MMRec's ``python main.py -m MODEL -d DATASET``.

Run ``python main.py --help`` for everything else."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from utils.configurator import Config, parse_value  # noqa: E402
from utils.errors import ConfigError, HarnessError, Interrupted, ModelInputError  # noqa: E402

REPO = SRC.parent

EPILOG = """\
config overrides:
  Any config key can be set on the command line as --KEY VALUE (or --KEY=VALUE); values are
  parsed as YAML, e.g. --learning_rate 0.01 --epochs 5 --topk "[10,20]". Setting a key that is
  in the model's hyper_parameters fixes the grid to that value (a YAML list keeps a grid over
  the list). Files merge as overall.yaml < dataset/D.yaml < model/M.yaml < command line.
  An unknown key is an error that names the closest known keys, and every value is checked
  (type, range, allowed values) before any data is read: a bad one is one line, exit 2.
  --config_dir DIR adds a folder of dataset/model yamls (e.g. from prepare.py --config-dir).

output:
  OUTPUT/results.jsonl     one JSON line per finished grid point (reused on rerun)
  OUTPUT/runs/M-D/<key>/   model.pth (best weights + config), config.yaml, per_user_test.npz
  OUTPUT/logs/             the log of every run (errors, interruptions and the summary included)
  OUTPUT/cache/            graph caches (content-hashed, safe to delete)
  Several commands may share one OUTPUT: a grid point is claimed (OUTPUT/runs/M-D/<key>/claim)
  while it trains, so each point is trained once; the others wait for it and reuse its record.

examples:
  cd src && python main.py -m LightGCN -d ml100k
  python src/main.py -m BPR -d ml100k --reg_weight 1e-4 --epochs 50 --device cpu
  python src/main.py --evaluate outputs/runs/BPR-ml100k/<key>/model.pth
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py", description="Train and evaluate a recommender over its config grid (MMRec-compatible).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("-m", "--model", default="SIGREC", help="model name, e.g. SIGREC, LightGCN, BPR (default: SIGREC)")
    p.add_argument("-d", "--dataset", default="ml100k", help="dataset name under data/ (default: ml100k)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--output", default=str(REPO / "outputs"), help="output folder (default: <repo>/outputs)")
    p.add_argument("--rerun", action="store_true", help="train grid points again even if already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: OMP_NUM_THREADS, else torch's; with --workers: per worker, "
                        "default cores // workers on the CPU)")
    p.add_argument("--config_dir", metavar="DIR", default=None,
                   help="a folder of extra config files, DIR/<dataset>.yaml or DIR/dataset/<dataset>.yaml and "
                        "DIR/model/<Model>.yaml, used before the built-in ones (e.g. prepare.py --config-dir DIR)")
    p.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                   help="reload a saved model.pth and score it on valid and test")
    cmp = p.add_argument_group("comparison (several models, several seeds)")
    cmp.add_argument("--seeds", default=None,
                     help="comma-separated seeds: with -m A,B,C each model's best grid point (chosen on "
                          "validation) is re-run for every seed, then compared with significance tests; "
                          "the selection seed (the config's first seed, where the grid is searched) is left "
                          "out of the table, so give fresh seeds beside it, e.g. --seeds 999,1,2,3,4,5")
    cmp.add_argument("--include-selection-seed", action="store_true",
                     help="average the selection seed's run too (it won the grid search on validation, so "
                          "its test scores are biased upwards); default: fresh seeds only")
    srch = p.add_argument_group("search (Optuna; several workers or machines share one study)")
    srch.add_argument("--search", choices=["grid", "tpe"], default="grid",
                      help="grid: every grid point once per seed (MMRec's protocol, default); "
                           "tpe: Optuna's TPE sampler over the same hyper_parameters lists")
    srch.add_argument("--trials", type=int, default=None, help="number of trials for --search tpe")
    srch.add_argument("--storage", default=None,
                      help="Optuna storage: a SQLAlchemy URL (sqlite:///f.db, postgresql://...) or "
                           "journal:PATH for a journal file on a shared file system "
                           "(default: sqlite in the output folder when a study is used)")
    srch.add_argument("--study", default=None, help="study name (default: MODEL-DATASET-SEARCH)")
    srch.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    srch.add_argument("--devices", default=None, help="comma-separated devices for the workers, e.g. cuda:0,cuda:1")
    srch.add_argument("--heartbeat", type=int, default=None,
                      help="seconds between a worker's heartbeats; a trial silent for twice that is "
                           "marked failed and retried (default 60)")
    srch.add_argument("--prune", choices=["none", "median"], default="none",
                      help="stop hopeless trials early from per-epoch validation: below the median of "
                           "earlier trials at the same epoch, after 5 finished trials and from epoch "
                           "--prune_warmup (default: none)")
    srch.add_argument("--prune_warmup", type=int, default=None,
                      help="first epoch at which --prune may stop a trial (default 20); set it where "
                           "early scores rank points as the final ones do (SIGREC on ml100k: 80)")
    return p


def uses_study(args: argparse.Namespace) -> bool:
    """Whether the run goes through an Optuna study rather than the plain in-process grid."""
    return (args.search != "grid" or args.storage is not None or args.study is not None
            or args.workers > 1 or args.devices is not None or args.prune != "none")


def parse_overrides(extra: list[str]) -> dict:
    """``['--lr', '0.1', '--epochs=5']`` -> ``{'lr': 0.1, 'epochs': 5}``."""
    out, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(f"unexpected argument '{token}'; config overrides look like --key value")
        key = token[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        elif i + 1 < len(extra) and not (extra[i + 1].startswith("--") and len(extra[i + 1]) > 2):
            text = extra[i + 1]
            i += 2
        else:
            raise ConfigError(f"--{key} needs a value, e.g. --{key} 0.01")
        out[key] = parse_value(text)
    return out


def duration_text(seconds: float) -> str:
    """``3725.4`` -> ``1h 02m 05s``; ``65`` -> ``1m 05s``; ``4.2`` -> ``4.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def log_outputs(output: Path, started: float, best: dict | None = None, extra: list[str] | None = None) -> None:
    """The run's last lines: where its outputs went and how long it took."""
    from utils.logger import current_log_file

    lines = [f"run finished in {duration_text(time.perf_counter() - started)}; outputs:",
             f"  results: {output / 'results.jsonl'}"]
    if best is not None:
        lines.append(f"  best point's model: {best['checkpoint']}" if best.get("checkpoint")
                     else "  best point's model: not saved (save_model False)")
    lines += [f"  {line}" for line in extra or []]
    log_file = current_log_file()
    lines.append(f"  log: {log_file}" if log_file else "  log: none")
    logging.getLogger().info("\n".join(lines))


def run(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args, extra = build_parser().parse_known_args(argv)
    from utils.logger import init_logger
    from utils.results import prepare_output
    from utils.utils import resolve_device

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"threads = {args.threads} (command line, --threads): must be a whole number >= 1")
        import torch
        torch.set_num_threads(args.threads)  # records note the count (results differ by it)
    if args.evaluate:
        from utils.checkpoint import evaluate_checkpoint
        init_logger(None, args.quiet)
        evaluate_checkpoint(Path(args.evaluate), args.device, args.config_dir)
        return 0
    overrides = parse_overrides(extra)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    output = Path(args.output).expanduser().resolve()
    if args.prune_warmup is not None:  # checked before any data is read
        from utils.search import prune_warmup
        prune_warmup(args)
    if args.include_selection_seed and not (len(models) > 1 or args.seeds):
        raise ConfigError("--include-selection-seed applies to a comparison (-m A,B,... or --seeds)")
    if len(models) > 1 or args.seeds:
        from utils.comparison import run_comparison
        try:
            seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: must be comma-separated whole numbers, "
                              f"e.g. --seeds 999,1,2,3") from None
        code = run_comparison(models, args.dataset, seeds, overrides, args, output)
        log_outputs(output, started, extra=[f"comparison: {output / 'comparison'}"])
        return code
    # every value is checked here (utils.schema), before anything is read or written
    config = Config(args.model, args.dataset, overrides, extra_config_dir=args.config_dir)
    config["device"] = resolve_device(args.device, config["use_gpu"])
    config["quiet"] = args.quiet
    config["output_dir"] = str(output)  # graph caches go under it (never into the data folder)
    prepare_output(output)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    init_logger(output / "logs" / f"{args.model}-{args.dataset}-{stamp}-{os.getpid()}.log", args.quiet)
    logging.getLogger().info("\n" + str(config))

    if uses_study(args):
        from utils.search import run_search
        code = run_search(config, args, output)
        log_outputs(output, started)
        return code
    from utils.quick_start import RunOptions, run_grid
    best = run_grid(config, RunOptions(output_dir=output, rerun=args.rerun))
    log_outputs(output, started, best)
    return 0 if best is not None else 1


def report(line: str) -> None:
    """A closing line: on stderr, and in the run's log file when it has one."""
    from utils.logger import to_log_file

    print(line, file=sys.stderr, flush=True)
    to_log_file(line)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status: 0 done, 1 no point finished, 2 bad input,
    3 the model refuses this data (e.g. a missing modality), 130 Ctrl-C, 143 SIGTERM (finished
    points are kept in both)."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)  # SIGTERM is handled like Ctrl-C
    try:
        return run(argv)
    except ModelInputError as exc:  # the data is fine, this model cannot use it: scripts may go on
        report(f"error: {exc}")
        return 3
    except HarnessError as exc:
        report(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        report("interrupted (Ctrl-C): rerun the same command to resume (finished points are kept)")
        return 130
    except Interrupted as exc:
        report(f"terminated ({exc}): rerun the same command to resume (finished points are kept)")
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
