// strata.train's engine side: the trainer with the GIL released, each metrics line handed to a
// Python callback (with the GIL held), and the result as a dict. The package's train() (strata/
// __init__.py) turns an interrupted result into KeyboardInterrupt.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bench/flops.h"
#include "bench/gemm_peak.h"
#include "common.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace strata::py_bind {

void bind_train(py::module_& mod) {
    mod.def(
        "_train",
        [](const py::object& config, const std::vector<std::string>& overrides, const py::object& on_metrics) {
            // a path, or a dict (relative paths in it, like --set values, are under the working directory)
            RunConfig rc = py::isinstance<py::dict>(config)
                               ? run_config_of(to_json(config), "the config dict", overrides)
                               : load_run_config(config.cast<std::string>(), overrides);
            const TrainConfig& t = rc.train;
            TrainOptions opts;
            opts.flops_per_step = bench::training_flops(rc.model, t.batch_size, t.seq_len).total * t.grad_accum;
            if (!on_metrics.is_none()) {
                // Shared, so the trainer's copies of the function touch no Python reference count
                // while the GIL is released; the last copy goes with `opts`, with the GIL held.
                auto fn = std::make_shared<py::object>(on_metrics);
                opts.on_metrics = [fn](const std::string& line) {
                    py::gil_scoped_acquire gil;
                    (*fn)(py::str(line));
                };
            }
            TrainResult r;
            {
                py::gil_scoped_release nogil;
                if (t.peak_gflops <= 0) {
                    set_threads(t.threads);
                    opts.peak_gflops = bench::quick_gemm_gflops(parse_precision(t.precision, "train.precision"));
                }
                r = train(rc, opts);
            }
            py::dict d;
            d["step"] = r.step;
            d["start_step"] = r.start_step;
            d["steps_run"] = r.steps_run();
            d["train_loss"] = r.train_loss;
            d["val_loss"] = r.val_loss;
            py::dict by;
            for (const auto& [name, loss] : r.val_loss_by_corpus) by[py::str(name)] = loss;
            d["val_loss_by_corpus"] = by;
            d["interrupted"] = r.interrupted;
            d["diverged"] = r.diverged;
            d["stopped_diverged"] = r.stopped_diverged;
            d["out_dir"] = t.out_dir;
            d["checkpoint"] = checkpoint_path(t.out_dir);
            return d;
        },
        py::arg("config"), py::arg("overrides"), py::arg("on_metrics"));
    mod.def("set_threads", &set_threads, py::arg("n"), "the thread count of the engine's OpenMP loops and BLAS");
}

}  // namespace strata::py_bind
