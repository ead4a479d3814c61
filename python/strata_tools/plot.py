"""Training curves of strata runs as PNG files: one figure per metric, every run overlaid.

Reusable pieces: read_metrics() reads one RUN_DIR/metrics.jsonl, load_runs() several runs with unique
labels, plot_curves() draws one metric of several runs into one PNG, plot_runs() does all of it for
`strata plot`. Run as a script (or as the source `strata plot` embeds and hands to the interpreter)
it takes `RUN_DIR... [--out DIR] [--metrics a,b,...]`.

Errors about the input (a missing run directory, a missing or empty metrics.jsonl, matplotlib not
installed) raise PlotError; as a script they are reported on stderr as one line starting with
ERROR_PREFIX, which `strata plot` turns into its own error message, and the exit status is 1.
"""
import argparse
import json
import os
import sys

# The metrics `strata plot` draws by default, with their axis labels.
METRICS = ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s")
AXIS_LABELS = {
    "loss": "training loss",
    "val_loss": "validation loss",
    "lr": "learning rate",
    "grad_norm": "gradient norm (before clipping)",
    "tokens_per_s": "tokens/s",
    "step_ms": "step time (ms)",
}
ERROR_PREFIX = "strata-plot-error: "
MATPLOTLIB_MISSING = ("strata plot needs matplotlib: install python3-matplotlib (apt) "
                      "or pip install matplotlib")


class PlotError(Exception):
    """A problem with the input or the environment, worded for the user."""


def read_metrics(run_dir):
    """The curves of one run: {metric: [(step, value), ...]} sorted by step, from RUN_DIR/metrics.jsonl.

    Each line is a JSON object with "step" and any number of numeric fields; fields that are not
    numbers (e.g. "skipped": true, strings) are ignored, as are lines that are not JSON objects with
    an integer step (a line cut short by a crash, say). Raises PlotError when the directory or the
    file is missing, or the file holds no metric at all.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise PlotError(f"run directory {run_dir} not found" if not os.path.exists(run_dir)
                        else f"{run_dir} is not a directory")
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise PlotError(f"{path} not found (is {run_dir} a strata run directory?)") from None
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror}") from None
    if not raw.strip():
        raise PlotError(f"{path} is empty: the run has logged no step yet")
    series = {}
    bad = 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            bad += 1
            continue
        for key, value in rec.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series.setdefault(key, []).append((step, float(value)))
    if not series:
        raise PlotError(f"{path} holds no metrics ({bad} unreadable line(s))")
    if bad:
        print(f"note: {path}: skipped {bad} unreadable line(s)", file=sys.stderr)
    for points in series.values():
        points.sort(key=lambda p: p[0])
    return series


def run_labels(run_dirs):
    """A legend label per run: its directory's name, with parent folders added while two collide."""
    parts = [os.path.normpath(os.path.abspath(os.fspath(d))).split(os.sep) for d in run_dirs]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-n:]) for p, n in zip(parts, depth)]
        clash = [i for i, l in enumerate(labels) if depth[i] < len(parts[i]) - 1 and
                 any(labels[j] == l and parts[j] != parts[i] for j in range(len(parts)))]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen = {}
    for i, l in enumerate(labels):  # the same directory given twice
        seen[l] = seen.get(l, 0) + 1
        if seen[l] > 1:
            labels[i] = f"{l} ({seen[l]})"
    return labels


def load_runs(run_dirs):
    """{label: {metric: [(step, value), ...]}} for the runs, in the order given."""
    return dict(zip(run_labels(run_dirs), (read_metrics(d) for d in run_dirs)))


def require_matplotlib():
    """pyplot with a file-only backend; PlotError(MATPLOTLIB_MISSING) when matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(MATPLOTLIB_MISSING) from None
    return plt


def plot_curves(series_by_run, metric, out_path, ylabel=None, title=None):
    """Draws `metric` against step for every run in series_by_run ({label: [(step, value), ...]};
    runs with no points are left out) into the PNG out_path, written atomically. Returns out_path."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        drawn = 0
        for i, (label, points) in enumerate(series_by_run.items()):
            if not points:  # the run keeps its colour (C<i>) in every figure, drawn or not
                continue
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            style = "o-" if len(points) < 30 else "-"  # few points (validation): show each one
            ax.plot(steps, values, style, label=label, color=f"C{i % 10}", linewidth=1.2, markersize=3)
            drawn += 1
        if not drawn:
            raise PlotError(f"no run has {metric}")
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel or AXIS_LABELS.get(metric, metric))
        ax.set_title(title or AXIS_LABELS.get(metric, metric))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out_path = os.fspath(out_path)
        tmp = f"{out_path}.tmp.{os.getpid()}"
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, out_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        plt.close(fig)
    return out_path


def plot_runs(run_dirs, out_dir=None, metrics=METRICS, log=None):
    """One PNG per metric (OUT_DIR/METRIC.png) with every run overlaid; a metric no run has is
    skipped with a note. OUT_DIR defaults to FIRST_RUN_DIR/plots. Returns the files written."""
    runs = load_runs(run_dirs)  # input errors come before the matplotlib check
    require_matplotlib()
    out_dir = os.fspath(out_dir) if out_dir else os.path.join(os.fspath(run_dirs[0]), "plots")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise PlotError(f"--out {out_dir}: cannot create the directory ({e.strerror})") from None
    written = []
    for metric in metrics:
        series = {label: curves.get(metric, []) for label, curves in runs.items()}
        if not any(series.values()):
            print(f"note: no run has {metric}; skipped", file=sys.stderr)
            continue
        written.append(plot_curves(series, metric, os.path.join(out_dir, f"{metric}.png")))
        if log:
            log(written[-1])
    if not written:
        raise PlotError(f"none of the metrics {', '.join(metrics)} appear in the runs' metrics.jsonl")
    return written


def parse_metrics(text):
    """The --metrics value: comma-separated names (letters, digits, _), without repeats."""
    names = [n.strip() for n in text.split(",")]
    for n in names:
        if not n or not all(c.isalnum() or c == "_" for c in n):
            raise PlotError(f"--metrics {text!r}: {n!r} is not a metric name")
    return list(dict.fromkeys(names))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="strata plot", description="PNG training curves of strata runs")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", default=None, help="output directory (default: FIRST_RUN_DIR/plots)")
    ap.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric names")
    args = ap.parse_args(argv)
    try:
        plot_runs(args.run_dirs, args.out, parse_metrics(args.metrics), log=print)
    except PlotError as e:
        print(ERROR_PREFIX + str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[0] == "-c" and sys.path and sys.path[0] == "":
        sys.path.pop(0)  # run from embedded source: the working directory is no place to import from
    sys.exit(main(sys.argv[1:]))
