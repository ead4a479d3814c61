"""strata: train, run and inspect decoder-only Transformers with learned depth.

    import strata
    model = strata.load("runs/default")          # a run directory or a checkpoint file
    print(model.generate("Once upon a time", max_tokens=50, temperature=0))
    for piece in model.generate("The sea", stream=True):
        print(piece, end="", flush=True)
    strata.train("configs/default.json", overrides={"train.steps": 100}, callback=print)

Every engine error is a strata.Error (a ValueError). docs/python.md has the whole API.
"""
import json as _json
from collections.abc import Mapping as _Mapping

from ._core import Error, Generation, Model, Tokenizer, __version__, cpu_capability, ops, set_threads
from ._core import _load, _train

for _t in (Error, Generation, Model, Tokenizer):
    _t.__module__ = "strata"  # errors and reprs say strata.Error, not strata._core.Error

__all__ = ["Error", "Generation", "Model", "Tokenizer", "__version__", "cpu_capability", "load", "ops", "set_threads",
           "train"]


def load(path, precision="fp32"):
    """The model of a checkpoint file or run directory, with its tokenizer (model.tokenizer).

    A missing, truncated or corrupt checkpoint, one whose tensors fail their checksums or hold a
    non-finite value, is refused with a strata.Error naming the file. precision is "fp32" or "bf16"
    (bf16 activations and GEMM inputs over the float weights).
    """
    return _load(str(path), precision)


def _generate(self, prompt="", max_tokens=200, temperature=0.8, top_k=0, top_p=1.0, seed=1337, stream=False,
              stop=None):
    """Continues `prompt` (text) with the KV cache, as `strata generate` does.

    Sampling: temperature (0 = greedy), top_k (0 = all), top_p (1 = all), seed. Generation ends at
    the end-of-text token, after max_tokens, or once the text contains a string of `stop` (a string
    or a list; the stop string itself is left out). Returns the continuation as a string, or with
    stream=True an iterator (strata.Generation) of its text pieces as they are produced.
    """
    if isinstance(stop, str):
        stop = [stop]
    g = self._generation(prompt, int(max_tokens), float(temperature), int(top_k), float(top_p), int(seed),
                         list(stop or []))
    return g if stream else "".join(g)


Model.generate = _generate


def _override_list(overrides):
    if overrides is None:
        return []
    if isinstance(overrides, _Mapping):
        # JSON for every value, so strings, numbers, booleans and lists keep their types
        return [f"{k}={_json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(o) for o in overrides]


def train(config=None, overrides=None, callback=None):
    """Trains as `strata train` does: resumes from the run directory's checkpoint when there is one.

    config: a JSON file's path, a dict with "model" and "train" sections, or None for the built-in
    default config. overrides: {"train.steps": 100, ...} or ["train.steps=100", ...], as --set.
    callback(metrics): called with each line of metrics.jsonl as a dict (a step's loss, lr,
    grad_norm, tokens_per_s, ...; a validation's val_loss), in the calling thread. An exception it
    raises ends the run (the last checkpoint is kept) and propagates.

    The engine runs with the GIL released. Ctrl-C works as in the CLI: the step finishes, a
    checkpoint is written, then KeyboardInterrupt is raised (a second Ctrl-C exits the process at
    once); Python's own SIGINT handler is back in place afterwards. Returns a dict: step,
    start_step, steps_run, train_loss, val_loss, val_loss_by_corpus, diverged, out_dir, checkpoint.
    """
    if config is None:
        config = ""
    elif not isinstance(config, dict):
        config = str(config)
    on_line = None
    if callback is not None:
        def on_line(line):
            callback(_json.loads(line))
    result = _train(config, _override_list(overrides), on_line)
    if result["interrupted"]:
        raise KeyboardInterrupt(f"training interrupted at step {result['step']}; the checkpoint "
                                f"{result['checkpoint']} is up to date")
    return result
