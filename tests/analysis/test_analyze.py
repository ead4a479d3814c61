"""strata analyze on a tiny trained run, checked against the float64 PyTorch reference: the block
skips and the cumulative removal, the angular distances, the causal scores and the linear
replacements, recomputed from python/strata_ref on the same tokens; one report per checkpoint with
its figures; the JSON is the diagnose schema plus the new fields; bad arguments."""
import json
import math
import sys

import numpy as np
import pytest
import torch

import strata
from clihelp import TINY_MODEL, run, small_corpus
from strata_ref import RefModel

WITH_MPL = {"STRATA_PYTHON": sys.executable}
B, T, FIT = 2, 16, 64  # the analysis batch, and the fit rows (two batches)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze")
    corpus = small_corpus(d / "corpus.txt")
    base = ["--set", f"train.corpus={corpus}", "--set", f"train.data_dir={d / 'data'}", *TINY_MODEL,
            "--set", "train.steps=12", "--set", "train.lr=0.01", "--set", "train.threads=1",
            "--set", "train.keep_every=6", "--set", "model.n_layers=3"]
    run("train", *base, "--set", f"train.out_dir={d / 'run'}")
    return d / "run", d / "data"


def analyze(run_dir, out, *flags, env=None):
    return run("analyze", run_dir, "--out", out, "--batches", "1", "--batch-size", B, "--seq-len", T,
               "--fit-tokens", FIT, "--threads", "1", *flags, env=env)


def read_shard(path):
    raw = path.read_bytes()
    assert raw[:8] == b"STRTOKS1"
    n = int.from_bytes(raw[16:24], "little")
    width = int.from_bytes(raw[24:28], "little")
    return np.frombuffer(raw[32:32 + n * width], dtype=np.uint16 if width == 2 else np.uint32).astype(np.int64)


def windows(tokens, first, count):
    """EvalBatches' windows first .. first+count: inputs and their next-token targets."""
    x = np.stack([tokens[(first + i) * T:(first + i) * T + T] for i in range(count)])
    y = np.stack([tokens[(first + i) * T + 1:(first + i) * T + T + 1] for i in range(count)])
    return torch.from_numpy(x), torch.from_numpy(y)


class Probe:
    """The reference run layer by layer (standard pre-norm), with sublayers that can be recorded or
    replaced: f_j(x) is what sublayer j computes from its normed input x."""

    def __init__(self, ref):
        self.ref, self.record, self.replace = ref, None, {}
        att, mlp = ref._attention, ref._mlp
        ref._attention = lambda x, l: self._sub(2 * l, x, att(x, l))
        ref._mlp = lambda x, l: self._sub(2 * l + 1, x, mlp(x, l))

    def _sub(self, j, x, f):
        if self.record is not None:
            self.record.setdefault(j, []).append((x.reshape(-1, x.shape[-1]), f.reshape(-1, f.shape[-1])))
        if j in self.replace:
            W = self.replace[j]
            return torch.cat([x, torch.ones_like(x[..., :1])], -1) @ W
        return f

    def states(self, tokens, skip=()):
        """Block inputs h_0 .. h_{L-1} and the final norm's input, (N, D) each."""
        ref = self.ref
        h = ref.param("tok_emb")[tokens]
        out = []
        for l in range(ref.cfg["n_layers"]):
            out.append(h.reshape(-1, h.shape[-1]))
            h = ref._block(h, l, frozenset(skip))
        out.append(h.reshape(-1, h.shape[-1]))
        return out

    def loss(self, x, y, skip=()):
        return float(self.ref(x, y, skip_sublayer=frozenset(skip))[1])


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    run_dir, data = trained
    out = tmp_path_factory.mktemp("reports")
    p = analyze(run_dir, out, env=WITH_MPL)
    return out, p


def test_one_report_per_checkpoint_with_its_figures(report, trained):
    out, p = report
    names = sorted(d.name for d in out.iterdir())
    assert names == ["checkpoint", "checkpoint-12", "checkpoint-6"], names
    for n in names:
        files = {f.name for f in (out / n).iterdir()}
        assert {"report.json", "report.md", "usefulness.png", "removal.png", "angular_distance.png",
                "causal_score.png", "magnitudes.png", "grad_norms.png"} <= files, files
        md = (out / n / "report.md").read_text()
        assert "Useful blocks" in md and "![usefulness](usefulness.png)" in md
    j6 = json.loads((out / "checkpoint-6" / "report.json").read_text())
    j12 = json.loads((out / "checkpoint-12" / "report.json").read_text())
    assert (j6["step"], j12["step"]) == (6, 12)
    assert max(j6["training"]["steps"]) == 6 and max(j12["training"]["steps"]) == 12
    assert len(j12["training"]["sublayer_grad_norms"][0]) == 6  # 2 sublayers x 3 blocks


def test_report_schema_is_diagnose_plus_usefulness(report, trained, tmp_path):
    out, _ = report
    j = json.loads((out / "checkpoint" / "report.json").read_text())
    d = tmp_path / "d.json"
    run("diagnose", "--ckpt", trained[0], "--batches", "1", "--batch-size", B, "--seq-len", T, "--threads", "1",
        "--json-out", d)
    diag = json.loads(d.read_text())
    for k, v in diag.items():
        if k != "checkpoint":
            assert j[k] == v, k  # the same measurement, the same numbers
    assert set(j) - set(diag) == {"usefulness", "step", "training"}
    u = j["usefulness"]
    assert u["base_loss"] == pytest.approx(j["loss"], rel=1e-12)
    assert u["removal"]["loss"][0] == u["base_loss"]
    assert sorted(u["removal"]["order"]) == [0, 1, 2]
    skip = [b["delta_loss"] for b in u["block_skip"]]
    assert [skip[b] for b in u["removal"]["order"]] == sorted(skip)
    assert u["removal"]["loss"][1] == u["block_skip"][u["removal"]["order"][0]]["loss"]
    assert u["linear"]["fit_rows"] == FIT
    assert u["linear"]["useful_share"] == sum(b["useful"] for b in u["linear"]["blocks"]) / 3


def test_measures_match_the_reference(report, trained):
    out, _ = report
    run_dir, data = trained
    j = json.loads((out / "checkpoint" / "report.json").read_text())
    u = j["usefulness"]
    m = strata.load(run_dir)
    ref = RefModel(m.config, dtype=torch.float64)
    ref.load_strata_params(m.params())
    probe = Probe(ref)
    L = m.config["n_layers"]
    x, y = windows(read_shard(data / "val.bin"), 0, B)
    with torch.no_grad():
        base = probe.loss(x, y)
        assert u["base_loss"] == pytest.approx(base, rel=2e-5)
        for l in range(L):  # a whole block skipped
            assert u["block_skip"][l]["loss"] == pytest.approx(probe.loss(x, y, {2 * l, 2 * l + 1}), rel=2e-5)
        order = u["removal"]["order"]
        for k in range(2, L + 1):
            gone = {s for b in order[:k] for s in (2 * b, 2 * b + 1)}
            assert u["removal"]["loss"][k] == pytest.approx(probe.loss(x, y, gone), rel=2e-5), k
        # angular distance between consecutive block inputs (the last: the final norm's input)
        h = probe.states(x)
        for l in range(L):
            cos = torch.nn.functional.cosine_similarity(h[l], h[l + 1], dim=-1).clamp(-1, 1)
            want = float((torch.arccos(cos) / math.pi).mean())
            assert u["angular_distance"][l] == pytest.approx(want, rel=1e-4, abs=1e-6), l
        # causal score: the change of later blocks' updates when block s is skipped
        delta = [h[l + 1] - h[l] for l in range(L)]
        for s in range(L):
            hs = probe.states(x, {2 * s, 2 * s + 1})
            for l in range(L):
                got = u["causal_score"][s][l]
                if l <= s:
                    assert got is None
                    continue
                d_bar = hs[l + 1] - hs[l]
                want = float(((d_bar - delta[l]).norm(dim=-1) / delta[l].norm(dim=-1)).mean())
                assert got == pytest.approx(want, rel=1e-4), (s, l)
        # the linear replacements: least squares on the first FIT training rows, one block at a time
        probe.record = {}
        tx, _ = windows(read_shard(data / "train.bin"), 0, FIT // T)
        for b in range(0, FIT // T, B):
            probe.states(tx[b:b + B])
        fits = {}
        for jj, pairs in probe.record.items():
            X = torch.cat([p[0] for p in pairs])
            F = torch.cat([p[1] for p in pairs])
            assert X.shape[0] == FIT
            Xa = torch.cat([X, torch.ones_like(X[:, :1])], 1)
            fits[jj] = torch.linalg.lstsq(Xa, F).solution
        probe.record = None
        for l in range(L):
            probe.replace = {2 * l: fits[2 * l], 2 * l + 1: fits[2 * l + 1]}
            want = probe.loss(x, y)
            got = u["linear"]["blocks"][l]
            assert got["loss"] == pytest.approx(want, rel=2e-4), l
            assert got["ratio"] == pytest.approx(want / base, rel=2e-4)
            assert got["useful"] == (got["ratio"] > 1.1)
        probe.replace = {}


def test_no_plots_and_bad_arguments(trained, tmp_path):
    run_dir, _ = trained
    p = analyze(run_dir, tmp_path / "a", "--no-plots", "--checkpoints", "latest")
    assert sorted(f.name for f in (tmp_path / "a" / "checkpoint").iterdir()) == ["report.json"]
    assert not (tmp_path / "a" / "checkpoint-6").exists()
    p = run("analyze", tmp_path / "nothing", check=False)
    assert p.returncode == 1 and "nothing" in p.stderr, p.stderr
    p = run("analyze", run_dir, "--checkpoints", "some", check=False)
    assert p.returncode != 0 and "--checkpoints" in p.stderr, p.stderr
    p = run("analyze", run_dir, "--fit-tokens", "100000000", "--batches", "1", "--no-plots",
            "--out", tmp_path / "b", "--checkpoints", "latest", check=False)
    assert p.returncode == 1 and "--fit-tokens" in p.stderr, p.stderr
    p = run("analyze", run_dir, "--seq-len", "1000", "--out", tmp_path / "c", check=False)
    assert p.returncode == 1 and "max_seq_len" in p.stderr, p.stderr


@pytest.mark.parametrize("name,extra,figures", [
    ("attnres_full", ["--set", "model.residual=attnres_full"], {"attnres_weights.png"}),
    ("denseformer", ["--set", "model.residual=denseformer"], set()),
    ("post", ["--set", "model.norm_placement=post"], set()),
    ("moda_block", ["--set", "model.attention=moda", "--set", "model.moda_depth_visibility=chunk",
                    "--set", "model.moda_chunk_size=4", "--set", "model.residual=attnres_block"],
     {"attnres_weights.png", "moda_depth_mass.png", "moda_sink_mass.png"}),
])
def test_every_rule_and_attention_kind(trained, tmp_path, name, extra, figures):
    _, data = trained
    corpus = small_corpus(tmp_path / "corpus.txt")
    run("train", "--set", f"train.corpus={corpus}", "--set", f"train.data_dir={data}", *TINY_MODEL,
        "--set", "train.steps=4", "--set", "train.threads=1", "--set", f"train.out_dir={tmp_path / name}", *extra)
    analyze(tmp_path / name, tmp_path / "out", env=WITH_MPL)
    files = {f.name for f in (tmp_path / "out" / "checkpoint").iterdir()}
    assert figures | {"report.md", "usefulness.png", "causal_score.png"} <= files, files
    j = json.loads((tmp_path / "out" / "checkpoint" / "report.json").read_text())
    u = j["usefulness"]
    assert all(math.isfinite(b["loss"]) for b in u["block_skip"] + u["linear"]["blocks"])
    assert all(0 <= a <= 1 for a in u["angular_distance"])
    assert ("moda" in j) == ("moda_depth_mass.png" in figures)
