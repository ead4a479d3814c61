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
    series = []
    for i, (label, points) in enumerate(series_by_run.items()):
        if not points:  # the run keeps its colour (C<i>) in every figure, drawn or not
            continue
        style = "o-" if len(points) < 30 else "-"  # few points (validation): show each one
        series.append((label, [s for s, _ in points], [v for _, v in points], style, f"C{i % 10}"))
    if not series:
        raise PlotError(f"no run has {metric}")
    return _lines(plt, series, out_path, title or AXIS_LABELS.get(metric, metric), "step",
                  ylabel or AXIS_LABELS.get(metric, metric), fontsize=None)


def save_figure(fig, out_path):
    """Writes fig as the PNG out_path atomically (a temporary file renamed over it)."""
    fig.tight_layout()
    out_path = os.fspath(out_path)
    tmp = f"{out_path}.tmp.{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def write_text(path, text):
    """Writes text to path atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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


# ---- strata analyze: the figures and report.md of one checkpoint's report.json ----

def _read_json(path, what):
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PlotError(f"{what} {path} not found") from None
    except (OSError, ValueError) as e:
        raise PlotError(f"cannot read {what} {path}: {e}") from None


def _heatmap(plt, matrix, out_path, title, xlabel, ylabel, cbar, xticks=None, yticks=None, cmap="viridis",
             log=False):
    """matrix: rows of numbers or None (drawn blank). Returns out_path."""
    import numpy as np
    from matplotlib.colors import LogNorm
    a = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * a.shape[1] + 3), max(5, 0.3 * a.shape[0] + 2)), dpi=100)
    try:
        finite = a[np.isfinite(a)]
        norm = LogNorm(vmin=max(finite[finite > 0].min(), 1e-12), vmax=finite.max()) \
            if log and finite.size and (finite > 0).any() else None
        im = ax.imshow(np.ma.masked_invalid(a), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        fig.colorbar(im, ax=ax, label=cbar)
        if xticks is not None:
            step = max(1, len(xticks) // 16)
            ax.set_xticks(range(0, len(xticks), step))
            ax.set_xticklabels(xticks[::step], rotation=60, ha="right", fontsize=8)
        if yticks is not None:
            step = max(1, len(yticks) // 24)
            ax.set_yticks(range(0, len(yticks), step))
            ax.set_yticklabels(yticks[::step], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        out_path = save_figure(fig, out_path)
    finally:
        plt.close(fig)
    return out_path


def _lines(plt, series, out_path, title, xlabel, ylabel, logy=False, hline=None, xs_integer=True, fontsize=9):
    """series: [(label, xs, ys, style[, colour])], colour C<i> by default. Returns out_path."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        for i, (label, xs, ys, style, *colour) in enumerate(series):
            ax.plot(xs, ys, style, label=label, color=colour[0] if colour else f"C{i % 10}", linewidth=1.2,
                    markersize=3 if colour else 4)
        if hline is not None:
            ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
        if logy:
            ax.set_yscale("log")
        if xs_integer:
            from matplotlib.ticker import MaxNLocator
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=fontsize)
        ax.grid(True, alpha=0.3)
        ax.legend()
        out_path = save_figure(fig, out_path)
    finally:
        plt.close(fig)
    return out_path


def describe_model(r):
    """One line naming the checkpoint's rule, norm placement and attention."""
    rule = r["residual"] + (f" (S = {r['attnres_block_size']})" if r["residual"] == "attnres_block" else "")
    att = r["attention"]["kind"]
    if "moda_depth_source" in r["attention"]:
        a = r["attention"]
        att += f" ({a['moda_depth_source']}, {a['moda_depth_visibility']}, window {a['moda_depth_window'] or 'all'})"
    return f"{r['n_layers']} blocks, d_model {r['d_model']}, residual {rule}, norm {r['norm_placement']}, attention {att}"


def plot_report(report_path, out_dir=None, log=None):
    """The figures and report.md of one report.json (strata analyze), drawn from its numbers alone.
    Returns the files written."""
    r = _read_json(report_path, "report")
    plt = require_matplotlib()
    out_dir = os.fspath(out_dir) if out_dir else os.path.dirname(os.path.abspath(os.fspath(report_path)))
    os.makedirs(out_dir, exist_ok=True)
    u = r["usefulness"]
    L = r["n_layers"]
    blocks = list(range(L))
    title = f"step {r.get('step', '?')}: " + describe_model(r)
    written = []

    def out(name):
        return os.path.join(out_dir, name)

    # usefulness: skip Δloss and the linear replacement's ratio per block
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 7), dpi=100, sharex=True)
    try:
        a1.bar(blocks, [b["delta_loss"] for b in u["block_skip"]], color="C0", label="block skipped")
        a1.set_ylabel("Δ validation loss")
        a1.set_title("Block usefulness\n" + title, fontsize=9)
        a1.grid(True, alpha=0.3)
        a1.legend()
        lin = u["linear"]
        a2.bar(blocks, [b["ratio"] for b in lin["blocks"]], color="C1", label="block replaced by its linear fit")
        a2.axhline(lin["useful_ratio"], color="grey", linestyle="--", label=f"useful above {lin['useful_ratio']}")
        lo = min([b["ratio"] for b in lin["blocks"]] + [1.0])
        a2.set_ylim(bottom=min(lo, 1.0) - 0.01)
        a2.set_ylabel("loss / base loss")
        a2.set_xlabel("block")
        a2.grid(True, alpha=0.3)
        a2.legend()
        written.append(save_figure(fig, out("usefulness.png")))
    finally:
        plt.close(fig)
    rem = u["removal"]
    written.append(_lines(plt, [("least useful first", list(range(len(rem["loss"]))), rem["loss"], "o-")],
                          out("removal.png"), "Cumulative block removal\n" + title, "blocks removed",
                          "validation loss"))
    written.append(_lines(plt, [("between block l's input and the next", blocks, u["angular_distance"], "o-")],
                          out("angular_distance.png"), "Angular distance between consecutive block inputs\n" + title,
                          "block", "(1/π)·arccos(cos)"))
    written.append(_heatmap(plt, u["causal_score"], out("causal_score.png"),
                            "Causal score: change of later blocks' updates\n" + title, "later block l",
                            "skipped block s", "mean ‖Δ̄_l − Δ_l‖ / ‖Δ_l‖", blocks, blocks))
    subs = r["sublayers"]
    depth = [j / 2 for j in range(len(subs))]
    sl = r["log_rms_slope"]
    written.append(_lines(plt, [(f"{k} RMS (slope of ln: {sl[k]:+.3f} per layer)", depth, [s[f"{k}_rms"] for s in subs],
                                 "o-") for k in ("input", "output", "state")],
                          out("magnitudes.png"), "Magnitudes over depth\n" + title, "layer (sublayer j at j/2)",
                          "RMS", logy=True, xs_integer=False))
    tr = r.get("training") or {}
    if tr.get("steps"):
        names = [s["sublayer"] for s in subs]
        written.append(_heatmap(plt, [list(row) for row in zip(*tr["sublayer_grad_norms"])], out("grad_norms.png"),
                                "Per-sublayer gradient norms during training\n" + title, "step", "sublayer",
                                "gradient norm (before clipping)", [str(x) for x in tr["steps"]], names, log=True))
    if "alpha" in r:
        # a weight of exactly 0 is a source the mix cannot see: drawn blank
        written.append(_heatmap(plt, [[w or None for w in row["weights"]] for row in r["alpha"]],
                                out("attnres_weights.png"),
                                "AttnRes mean depth weights\n" + title, "source", "mix", "mean weight",
                                r["alpha_columns"], [row["mix"] for row in r["alpha"]]))
    if "moda" in r:
        heads = [f"h{h}" for h in range(len(r["moda"][0]["depth_mass"]))]
        layers = [str(l["layer"]) for l in r["moda"]]
        written.append(_heatmap(plt, [l["depth_mass"] for l in r["moda"]], out("moda_depth_mass.png"),
                                "MoDA softmax mass on the depth slots\n" + title, "query head", "layer",
                                "mass on depth slots", heads, layers))
        written.append(_heatmap(plt, [l["sink_mass"] for l in r["moda"]], out("moda_sink_mass.png"),
                                "MoDA softmax mass on position 0 (attention sink)\n" + title, "query head", "layer",
                                "mass on position 0", heads, layers))
    written.append(write_text(out("report.md"), report_markdown(r, [os.path.basename(w) for w in written])))
    if log:
        for w in written:
            log(w)
    return written


def report_markdown(r, figures):
    """report.md of one report.json: the model, the tables and the figures."""
    u = r["usefulness"]
    lin = u["linear"]
    lines = [f"# Depth report: {r['checkpoint']}", "",
             f"{describe_model(r)}; step {r.get('step', '?')}.", "",
             f"Validation: {r['batches']} batches of {r['batch_size']} × {r['seq_len']} tokens, loss {r['loss']:.4f}. "
             f"Linear replacements fitted on {lin['fit_rows']} training tokens. "
             f"Useful blocks (linear-replacement loss / base > {lin['useful_ratio']}): "
             f"**{sum(b['useful'] for b in lin['blocks'])} of {len(lin['blocks'])}** "
             f"(share {lin['useful_share']:.3f}).", "",
             f"Slope of ln RMS per layer: input {r['log_rms_slope']['input']:+.4f}, "
             f"output {r['log_rms_slope']['output']:+.4f}, state {r['log_rms_slope']['state']:+.4f}.", "",
             "| block | skip Δloss | linear / base | useful | angular distance to the next input |",
             "|---|---|---|---|---|"]
    for l in range(r["n_layers"]):
        b = lin["blocks"][l]
        lines.append(f"| {l} | {u['block_skip'][l]['delta_loss']:+.4f} | {b['ratio']:.4f} | "
                     f"{'yes' if b['useful'] else 'no'} | {u['angular_distance'][l]:.4f} |")
    rem = u["removal"]
    lines += ["", "Removing the least useful blocks (by skip Δloss), in order "
              + ", ".join(str(b) for b in rem["order"]) + ": validation loss "
              + ", ".join(f"{x:.3f}" for x in rem["loss"]) + " for 0, 1, … blocks removed.", "",
              "| sublayer | input RMS | output RMS | state RMS | grad norm | skip Δloss |", "|---|---|---|---|---|---|"]
    for s in r["sublayers"]:
        lines.append(f"| {s['sublayer']} | {s['input_rms']:.4g} | {s['output_rms']:.4g} | {s['state_rms']:.4g} | "
                     f"{s['grad_norm']:.4g} | {s.get('skip_delta_loss', float('nan')):+.4f} |")
    lines += ["", "The definitions are in docs/analysis.md; every number here is in report.json.", ""]
    for f in figures:
        lines += [f"![{os.path.splitext(f)[0]}]({f})", ""]
    return "\n".join(lines)


# ---- strata experiment: the figures and report.md of one suite's summary.json ----

METRIC_LABELS = {
    "val_loss": "validation loss",
    "useful_share": "share of useful blocks",
    "removable_share": "share of blocks removable for ≤ 5 % loss",
    "mean_linear_excess": "mean over blocks of L_lin / L_base − 1",
    "output_log_rms_slope": "slope of ln(sublayer-output RMS) per layer",
    "state_log_rms_slope": "slope of ln(state RMS) per layer",
}


def _done(runs, key):
    return [r[key] for r in runs if r.get("status") == "done" and key in r]


def _mean_arrays(runs, key):
    """The finished runs' non-empty arrays under key, and their element-wise mean over the common length."""
    arrays = [a for a in _done(runs, key) if a]
    n = min((len(a) for a in arrays), default=0)
    return arrays, [sum(a[j] for a in arrays) / len(arrays) for j in range(n)]


def _fmt_interval(d, digits=4):
    if "lo" not in d:
        return "n/a" if "mean" not in d else f"{d['mean']:+.{digits}f} (one seed)"
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def plot_suite(summary_path, out_dir=None, log=None):
    """The figures and report.md of one summary.json (strata experiment). Returns the files written."""
    sm = _read_json(summary_path, "summary")
    plt = require_matplotlib()
    out_dir = os.fspath(out_dir) if out_dir else os.path.dirname(os.path.abspath(os.fspath(summary_path)))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    variants = sm["variants"]
    names = [v["name"] for v in variants]

    def strip(metric, path, ylabel=None):
        """Each variant's per-seed values (dots) and their mean (a bar)."""
        if not any(_done(v["runs"], metric) for v in variants):
            return
        fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(names) + 2), 5), dpi=100)
        try:
            for i, v in enumerate(variants):
                ys = _done(v["runs"], metric)
                if not ys:
                    continue
                ax.bar(i, sum(ys) / len(ys), color=f"C{i % 10}", alpha=0.35, label=None)
                ax.plot([i] * len(ys), ys, "o", color=f"C{i % 10}", markersize=5,
                        label="one seed" if i == 0 else None)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
            vals = [y for v in variants for y in _done(v["runs"], metric)]
            pad = 0.1 * (max(vals) - min(vals) or abs(max(vals)) or 1)
            if metric == "val_loss" or min(vals) > 0:
                ax.set_ylim(min(vals) - pad, max(vals) + pad)
            ax.set_ylabel(ylabel or METRIC_LABELS.get(metric, metric))
            ax.set_xlabel("variant")
            ax.set_title(f"{sm['suite']}: {METRIC_LABELS.get(metric, metric)} (bars: mean over seeds)", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend()
            written.append(save_figure(fig, os.path.join(out_dir, path)))
        finally:
            plt.close(fig)

    strip("val_loss", "val_loss.png")
    strip("output_log_rms_slope", "rms_slope.png")
    strip("useful_share", "useful_share.png")

    # claims: each paired difference with its interval, one panel per metric (each its own scale)
    claims = [c for c in sm["claims"] if "mean" in c["difference"]]
    if claims:
        metrics = list(dict.fromkeys(c["metric"] for c in claims))
        groups = [[c for c in claims if c["metric"] == m] for m in metrics]
        fig, axes = plt.subplots(len(groups), 1, figsize=(10, 0.5 * len(claims) + 1.6 * len(groups) + 0.6), dpi=100,
                                 squeeze=False, gridspec_kw={"height_ratios": [len(g) + 1 for g in groups]})
        try:
            for ax, metric, group in zip(axes[:, 0], metrics, groups):
                for i, c in enumerate(group):
                    d = c["difference"]
                    lo, hi = d.get("lo", d["mean"]), d.get("hi", d["mean"])
                    colour = {"reproduced": "C2", "reversed": "C3"}.get(c["verdict"], "C7")
                    ax.errorbar(d["mean"], i, xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="o", color=colour,
                                capsize=4)
                    ax.plot(d["values"], [i] * len(d["values"]), "x", color=colour, markersize=4)
                ax.axvline(0, color="grey", linewidth=1)
                ax.set_yticks(range(len(group)))
                ax.set_yticklabels([c["name"] for c in group], fontsize=8)
                ax.set_ylim(len(group) - 0.5, -0.5)
                ax.set_xlabel(f"paired difference in {METRIC_LABELS.get(metric, metric)}", fontsize=8)
                ax.grid(True, axis="x", alpha=0.3)
            axes[0, 0].set_title(f"{sm['suite']}: the claims, mean and 95 % t interval (x: one seed); "
                                 "green: reproduced, red: reversed", fontsize=9)
            written.append(save_figure(fig, os.path.join(out_dir, "claims.png")))
        finally:
            plt.close(fig)

    # per-sublayer profiles: each variant's mean over its finished seeds, sublayer by sublayer
    profiles = [("output_rms", "sublayer output RMS"), ("state_rms", "state RMS after the sublayer"),
                ("grad_norm", "gradient norm of the sublayer's parameters")]
    drawn = [(k, label) for k, label in profiles if any(_done(v["runs"], k) for v in variants)]
    if drawn:
        fig, axes = plt.subplots(len(drawn), 1, figsize=(10, 3.2 * len(drawn) + 0.8), dpi=100, squeeze=False)
        try:
            for ax, (k, label) in zip(axes[:, 0], drawn):
                for i, v in enumerate(variants):
                    arrays, mean = _mean_arrays(v["runs"], k)
                    n = len(mean)
                    if not n:
                        continue
                    ax.plot(range(n), mean, "o-" if i < 10 else "s--", color=f"C{i % 10}", linewidth=1, markersize=2.5,
                            label=f"{v['name']} ({len(arrays)} seeds)")
                ax.set_yscale("log")
                ax.set_ylabel(label, fontsize=8)
                ax.set_xlabel("sublayer (attention 2l, FFN 2l + 1)", fontsize=8)
                ax.grid(True, alpha=0.3)
            axes[0, 0].set_title(f"{sm['suite']}: per-sublayer magnitudes at the end of training "
                                 "(mean over seeds, log scale)", fontsize=9)
            axes[0, 0].legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            written.append(save_figure(fig, os.path.join(out_dir, "profiles.png")))
        finally:
            plt.close(fig)

    # useful share and mean linear-replacement excess against depth, per rule (curse-of-depth)
    for metric, path, title, ylabel in [
            ("useful_share", "useful_share_vs_depth.png", "share of useful blocks against depth",
             "share of useful blocks (linear / base > 1.1)"),
            ("mean_linear_excess", "linear_excess_vs_depth.png", "cost of a block's linear replacement against depth",
             "mean over blocks of L_lin / L_base − 1")]:
        by_rule = {}
        for v in variants:
            rule, _, depth = v["name"].rpartition("-")
            if depth.isdigit() and _done(v["runs"], metric):
                by_rule.setdefault(rule, []).append((int(depth), _done(v["runs"], metric)))
        if by_rule:
            series = []
            for rule, pts in by_rule.items():
                pts.sort()
                series.append((rule + " (mean over seeds)", [d for d, _ in pts], [sum(y) / len(y) for _, y in pts],
                               "o-"))
            written.append(_lines(plt, series, os.path.join(out_dir, path), f"{sm['suite']}: {title}", "blocks",
                                  ylabel))

    # each block's linear-replacement excess against its relative depth, per variant
    with_ratio = [v for v in variants if any(_done(v["runs"], "block_ratio"))]
    if with_ratio:
        series = []
        for i, v in enumerate(with_ratio):
            arrays, mean = _mean_arrays(v["runs"], "block_ratio")
            n = len(mean)
            ys = [m - 1 for m in mean]
            series.append((f"{v['name']} ({len(arrays)} seeds)", [(j + 0.5) / n for j in range(n)], ys,
                           "o-" if i < 10 else "s--", f"C{i % 10}"))
        written.append(_lines(plt, series, os.path.join(out_dir, "block_linearity.png"),
                              f"{sm['suite']}: each block's linear-replacement cost (mean over seeds)",
                              "relative depth of the block ((block + ½) / blocks)", "L_lin / L_base − 1",
                              hline=(0.1, "useful above (ratio 1.1)"), xs_integer=False))
    written.append(write_text(os.path.join(out_dir, "report.md"),
                              suite_markdown(sm, [os.path.basename(w) for w in written])))
    if log:
        for w in written:
            log(w)
    return written


def suite_markdown(sm, figures):
    seeds = ", ".join(str(s) for s in sm["seeds"])
    lines = [f"# Suite {sm['suite']}", "", f"{sm['description']}. Budget: {sm['budget']}. Seeds {seeds} "
             f"(model initialisation and data order alike, so differences are paired). "
             f"{sm['runs_done']} of {sm['runs_planned']} runs have a result.", "",
             "Base settings: `" + " ".join(sm["base"]) + "`.", "",
             "## Claims", "",
             "Each row is a paired per-seed difference (a − b, or (a − b) − (c − d)), its mean and 95 % t interval. "
             "A claim is reproduced only when the interval excludes zero on the paper's side.", "",
             "| claim | source | difference | mean [95 % interval] | n | verdict | seeds for an interval clear of zero |",
             "|---|---|---|---|---|---|---|"]
    for c in sm["claims"]:
        d = c["difference"]
        expr = f"{c['a']} − {c['b']}" if "c" not in c else f"({c['a']} − {c['b']}) − ({c['c']} − {c['d']})"
        need = d.get("seeds_needed")
        need = "-" if need in (None, 0) else str(need)
        lines.append(f"| {c['name']} | {c['source']} | {c['metric']}: {expr} | {_fmt_interval(d)} | {d['n']} | "
                     f"{c['verdict']} | {need} |")
    metrics = [m for m in ("val_loss", "useful_share", "mean_linear_excess", "removable_share", "output_log_rms_slope",
                           "state_log_rms_slope", "train_tokens_per_s", "depth_buffer_bytes",
                           "depth_bytes_read_per_token")
               if any(_done(v["runs"], m) for v in sm["variants"])]
    lines += ["", "## Variants", "", "Mean over the finished seeds (each seed's value in summary.json).", "",
              "| variant | what | runs done | " + " | ".join(metrics) + " |",
              "|---|---|---|" + "---|" * len(metrics)]
    for v in sm["variants"]:
        cells = []
        for m in metrics:
            ys = _done(v["runs"], m)
            cells.append(f"{sum(ys) / len(ys):.4g}" if ys else "-")
        failed = [r for r in v["runs"] if r.get("status") == "failed"]
        done = len([r for r in v["runs"] if r.get("status") == "done"])
        what = v["describe"] + ("; failed: " + "; ".join(f"seed {r['seed']}: {r.get('reason', '?')}" for r in failed)
                                if failed else "")
        lines.append(f"| {v['name']} | {what} | {done} | " + " | ".join(cells) + " |")
    lines += [""]
    for f in figures:
        lines += [f"![{os.path.splitext(f)[0]}]({f})", ""]
    return "\n".join(lines)


def parse_metrics(text):
    """The --metrics value: comma-separated names (letters, digits, _), without repeats."""
    names = [n.strip() for n in text.split(",")]
    for n in names:
        if not n or not all(c.isalnum() or c == "_" for c in n):
            raise PlotError(f"--metrics {text!r}: {n!r} is not a metric name")
    return list(dict.fromkeys(names))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="strata plot", description="PNG training curves of strata runs")
    ap.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    ap.add_argument("--out", default=None, help="output directory (default: FIRST_RUN_DIR/plots)")
    ap.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric names")
    ap.add_argument("--report", default=None, help="draw one report.json of strata analyze instead")
    ap.add_argument("--suite", default=None, help="draw one summary.json of strata experiment instead")
    args = ap.parse_args(argv)
    try:
        if args.report:
            plot_report(args.report, args.out)
        elif args.suite:
            plot_suite(args.suite, args.out)
        elif not args.run_dirs:
            raise PlotError("no run directory given")
        else:
            plot_runs(args.run_dirs, args.out, parse_metrics(args.metrics), log=print)
    except PlotError as e:
        print(ERROR_PREFIX + str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[0] == "-c" and sys.path and sys.path[0] == "":
        sys.path.pop(0)  # run from embedded source: the working directory is no place to import from
    sys.exit(main(sys.argv[1:]))
