"""``analogtrain-report``: the results report of a sweep, from its MLflow runs.

    analogtrain-report                                  # latest sweep in outputs/mlflow.db
    analogtrain-report --parent <run id> --metric val/acc --stat max
    analogtrain-report --experiment sweep_asym_skew --out outputs/reports/asym_skew
    analogtrain-report --tracking-uri sqlite:////abs/path/mlflow.db --no-log

Prints the Markdown table, writes CSV/Markdown/PNG into ``--out`` (default
``outputs/reports/<parent run name or experiment>``) and logs them under ``report/`` to the sweep's parent
run. Exit status 2 with one line ``analogtrain-report: error: <key>: <message>`` on bad input (unknown
run or experiment, no runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analogtrain.config.errors import ConfigError

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="analogtrain-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/outputs/mlflow.db)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--parent", default=None, help="run id of the sweep's parent run")
    src.add_argument("--experiment", default=None,
                     help="experiment name: every sweep parent in it (default: the latest sweep anywhere)")
    p.add_argument("--metric", default="test/acc", help="metric to tabulate (default test/acc)")
    p.add_argument("--stat", default="last", choices=("last", "max", "min"),
                   help="per-run value: last logged (default), or max/min over the run's history")
    p.add_argument("--seed-key", default="seed", help="replicate key averaged over (default seed)")
    p.add_argument("--keys", default=None,
                   help="comma-separated grouping keys instead of the detected swept keys")
    p.add_argument("--x", default=None, help="heatmap x axis (default device.asymmetry if swept)")
    p.add_argument("--y", default=None, help="heatmap y axis (default device.skew if swept)")
    p.add_argument("--hue", default="algo", help="one line per value of this key (default algo)")
    p.add_argument("--digits", type=int, default=4, help="decimals in the Markdown table")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--no-log", action="store_true", help="do not log the files to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    from analogtrain.report.build import log_report, write_report
    from analogtrain.report.source import load_sweep
    from analogtrain.tracking.mlflow_tracker import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        from analogtrain.config.validate import check_tracking_uri

        check_tracking_uri(uri, "report.tracking_uri" if args.tracking_uri else "MLFLOW_TRACKING_URI")
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not db.is_file():
                raise ConfigError("report.tracking_uri", f"no MLflow database at {db}; pass --tracking-uri "
                                  "sqlite:///<path>/mlflow.db (the sweep's logger.tracking_uri)")
        if args.digits < 0:
            raise ConfigError("report.digits", f"{args.digits} is out of range: allowed 0 <= digits")
        keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
        sweep = load_sweep(uri, parent=args.parent, experiment=args.experiment, metric=args.metric,
                           stat=args.stat, keys=keys, seed_key=args.seed_key)
        if sweep.runs[args.metric].isna().all():
            raise ConfigError("report.metric", f"no run of this sweep logged '{args.metric}'; "
                              "e.g. test/acc, val/acc, test/loss, train/loss_epoch")
        for flag, k in (("x", args.x), ("y", args.y)):
            if k and k not in sweep.keys:
                raise ConfigError(f"report.{flag}", f"'{k}' is not a key of this sweep; its keys: "
                                  f"{', '.join(sweep.keys)}")
        for note in sweep.notes:
            print(f"analogtrain-report: note: {note}", file=sys.stderr)
        name = (sweep.parents[0].info.run_name if len(sweep.parents) == 1 else args.experiment) or "sweep"
        out = Path(args.out) if args.out else Path("outputs") / "reports" / name
        report = write_report(sweep, out, seed_key=args.seed_key, x=args.x, y=args.y, hue=args.hue,
                              digits=args.digits)
        if not args.no_log:
            log_report(report, sweep)
    except ConfigError as e:
        print(f"analogtrain-report: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(report.markdown, end="")
    where = f"; logged to MLflow run {report.logged_to} under report/" if report.logged_to else ""
    print(f"\n{len(sweep.runs)} runs, {len(report.cells)} cells -> {report.out_dir}{where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
