"""The main job's pipeline end to end at a tiny step count, so it cannot silently break: the same
script (scripts/main.sh) on the default corpus, then a second run that must redo nothing; and its
STRATA_CONFIG / STRATA_OUT variables."""
import json
import os

from clihelp import ROOT, TINY_MODEL, run, small_corpus


def test_main_job_pipeline_smoke(tmp_path):
    out = tmp_path / "run"
    env = {"STRATA_OUT": str(out)}
    small = ["--set", "train.steps=3", "--set", "train.eval_batches=2", "--set", "train.log_every=1",
             "--set", "model.n_layers=1"]
    p = run(ROOT / "scripts" / "main.sh", *small, env=env, timeout=1200)
    assert "validation loss" in p.stdout and "perplexity" in p.stdout, p.stdout
    assert "--- sample ---" in p.stdout
    sample = p.stdout.split("--- sample ---", 1)[1]
    assert sample.strip().startswith("And it came to pass")
    assert len(sample.strip()) > len("And it came to pass"), "generation produced no text"
    assert (out / "checkpoint.safetensors").exists() and (out / "config.json").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert all(k in metrics[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s"))

    # A second run: everything is already done; it resumes at the last step and exits 0.
    p2 = run(ROOT / "scripts" / "main.sh", *small, env=env, timeout=1200)
    assert "resuming from" in p2.stderr and "at step 3" in p2.stderr
    assert "training a" not in p2.stderr, "the tokenizer was trained again"
    assert "prepared earlier" in p2.stderr
    assert "Linking" not in p2.stdout and "Building" not in p2.stdout, "something was rebuilt"


def test_main_job_takes_its_config_from_strata_config(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    sets = dict(TINY_MODEL[i + 1].split("=", 1) for i in range(0, len(TINY_MODEL), 2))
    config = {"model": {}, "train": {"corpus": str(corpus), "data_dir": str(tmp_path / "data"), "steps": 2,
                                     "threads": 1, "out_dir": "ignored: main.sh sets STRATA_OUT"}}
    for key, value in sets.items():
        section, name = key.split(".")
        config[section][name] = json.loads(value)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "run"
    p = run(ROOT / "scripts" / "main.sh", env={"STRATA_CONFIG": str(cfg), "STRATA_OUT": str(out)}, timeout=600)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["model"]["vocab_size"] == 320
    assert saved["train"]["steps"] == 2 and saved["train"]["out_dir"] == str(out)
    assert "--- sample ---" in p.stdout and "perplexity" in p.stdout

    missing = tmp_path / "no-such.json"
    p = run(ROOT / "scripts" / "main.sh", env={"STRATA_CONFIG": str(missing), "STRATA_OUT": str(out)}, check=False,
            timeout=600)
    assert p.returncode != 0 and str(missing) in p.stderr + p.stdout, p.stderr


def test_cli_help_for_every_subcommand():
    for sub in ["train", "generate", "eval", "bench"]:
        p = run(sub, "--help")
        assert "--help" in p.stdout or "Usage" in p.stdout or "OPTIONS" in p.stdout.upper()
