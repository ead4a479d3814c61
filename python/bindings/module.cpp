// The extension module strata._core: the engine's types and functions, wrapped by the pure-Python
// package strata (python/strata/), which adds generate's streaming, train's Ctrl-C and strata.torch.
#include "common.h"
#include "core/version.h"

PYBIND11_MODULE(_core, mod) {
    namespace py = pybind11;
    using namespace strata::py_bind;
    mod.doc() = "strata's engine (use the package strata, not this module)";
    mod.attr("__version__") = STRATA_VERSION;
    // Every engine error is strata.Error, a ValueError: bad shapes, configs, files and arguments.
    py::register_exception<strata::Error>(mod, "Error", PyExc_ValueError);
    bind_model(mod);
    bind_train(mod);
    bind_ops(mod);
}
