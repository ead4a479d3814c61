#include "core/precision.h"

#include "core/error.h"

namespace strata {

const char* to_string(Precision p) {
    switch (p) {
        case Precision::fp32: return "fp32";
        case Precision::bf16: return "bf16";
    }
    return "?";
}

const std::vector<std::string>& precision_names() {
    static const std::vector<std::string> names = {"fp32", "bf16"};
    return names;
}

Precision parse_precision(const std::string& s, const std::string& origin) {
    for (Precision p : {Precision::fp32, Precision::bf16})
        if (s == to_string(p)) return p;
    std::string allowed;
    for (const auto& n : precision_names()) allowed += (allowed.empty() ? "\"" : ", \"") + n + "\"";
    throw Error(origin + " must be one of " + allowed + ", not \"" + s + "\"");
}

}  // namespace strata
