#include "train/faults.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace strata {

std::string first_nonfinite(const Model<float>& m, const Buffer& buf) {
    for (const ParamSpec& s : m.specs)
        if (nonfinite_count(buf.data<float>() + s.offset, long(s.numel)) > 0) return s.name;
    return "";
}

std::string nonfinite_where(const Model<float>& m, double loss) {
    const std::string bad_w = first_nonfinite(m, m.params());
    const std::string bad_g = first_nonfinite(m, m.grads());
    std::string where = !bad_w.empty()         ? "the weights of " + bad_w
                        : !std::isfinite(loss) ? std::string("the loss")
                                               : "the gradient of " + bad_g;
    if (bad_w.empty() && !std::isfinite(loss) && !bad_g.empty()) where += " (and the gradient of " + bad_g + ")";
    return where;
}

NonfiniteFault NonfiniteFault::from_env(const Model<float>& model) {
    NonfiniteFault f;
    const char* v = std::getenv("STRATA_FAULT_NONFINITE");
    if (!v || !*v) return f;
    const std::string text = v;
    auto bad = [&](const std::string& why) {
        return Error("STRATA_FAULT_NONFINITE must be STEP[:PARAM] or STEP:weights[:PARAM], got '" + text + "': " + why);
    };
    const size_t colon = text.find(':');
    const std::string step_text = text.substr(0, colon);
    if (step_text.empty() || step_text.size() > 12 || step_text.find_first_not_of("0123456789") != std::string::npos)
        throw bad("STEP is not a positive integer");
    f.step = std::stol(step_text);
    if (f.step <= 0) throw bad("STEP is not a positive integer");
    std::string name = colon == std::string::npos ? "" : text.substr(colon + 1);
    if (name == "weights" || name.rfind("weights:", 0) == 0) {
        f.weights = true;
        name = name.size() > 8 ? name.substr(8) : "";
    }
    if (name.empty()) {
        f.spec = &model.specs.front();
    } else {
        for (const ParamSpec& s : model.specs)
            if (s.name == name) f.spec = &s;
        if (!f.spec) throw bad("the model has no parameter named \"" + name + "\"");
    }
    return f;
}

void fill_nan(Buffer& buf, const ParamSpec& s) {
    const std::vector<float> nan(s.numel, std::numeric_limits<float>::quiet_NaN());
    buf.from_host(nan.data(), s.offset, s.numel);
}

}  // namespace strata
