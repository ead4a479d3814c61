// The extension module strata._core: the engine's types and functions, wrapped by the pure-Python
// package strata (python/strata/), which adds generate's streaming, train's Ctrl-C and strata.torch.
#include "common.h"
#include "core/version.h"
#include "ops/cpu/level.h"

PYBIND11_MODULE(_core, mod) {
    namespace py = pybind11;
    using namespace strata::py_bind;
    mod.doc() = "strata's engine (use the package strata, not this module)";
    mod.attr("__version__") = STRATA_VERSION;
    mod.def("cpu_capability", [] { return std::string(strata::engine_cpu_level()); },
            "The build of the engine the loader picked for this CPU: \"x86-64-v4\" (AVX-512), \"x86-64-v3\" "
            "(AVX2) or \"native\" (a single -march=native build).");
    // Every engine error is strata.Error, a ValueError: bad shapes, configs, files and arguments.
    py::register_exception<strata::Error>(mod, "Error", PyExc_ValueError);
    bind_model(mod);
    bind_train(mod);
    bind_ops(mod);
}
