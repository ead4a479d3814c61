#include "common.h"

namespace strata::py_bind {

nlohmann::json to_json(const py::handle& h) {
    if (h.is_none()) return nullptr;
    if (py::isinstance<py::bool_>(h)) return h.cast<bool>();
    if (py::isinstance<py::int_>(h)) return h.cast<long long>();
    if (py::isinstance<py::float_>(h)) return h.cast<double>();
    if (py::isinstance<py::str>(h)) return h.cast<std::string>();
    if (py::isinstance<py::dict>(h)) {
        nlohmann::json j = nlohmann::json::object();
        for (auto kv : h.cast<py::dict>()) {
            if (!py::isinstance<py::str>(kv.first))
                throw Error("config keys must be strings, got " + py::repr(kv.first).cast<std::string>());
            j[kv.first.cast<std::string>()] = to_json(kv.second);
        }
        return j;
    }
    if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h)) {
        nlohmann::json j = nlohmann::json::array();
        for (auto v : h) j.push_back(to_json(v));
        return j;
    }
    throw Error("unsupported value in config: " + py::repr(h).cast<std::string>());
}

py::object from_json(const nlohmann::json& j) {
    return py::module_::import("json").attr("loads")(j.dump());
}

Shapes& Shapes::operator()(const py::array& a, const std::string& arg, const std::vector<std::string>& names) {
    const std::vector<long> got = shape_of(a);
    const bool lead = !names.empty() && names[0].size() > 1 && names[0][0] == '*';
    const size_t fixed = lead ? names.size() - 1 : names.size();
    bool ok = lead ? got.size() >= fixed : got.size() == fixed;
    if (ok) {
        const size_t off = got.size() - fixed;
        if (lead) {
            long n = 1;
            for (size_t i = 0; i < off; i++) n *= got[i];
            ok = match(names[0].substr(1), n);
        }
        for (size_t i = 0; ok && i < fixed; i++) ok = match(names[i + (lead ? 1 : 0)], got[off + i]);
    }
    if (!ok) throw Error(op_ + ": " + arg + " must have shape " + expected(names) + ", got " + shape_str(got));
    return *this;
}

bool Shapes::match(const std::string& name, long n) {
    if (literal(name)) return n == std::stol(name);
    auto it = dims_.find(name);
    if (it == dims_.end()) return dims_.emplace(name, n), true;
    return it->second == n;
}

std::string Shapes::expected(const std::vector<std::string>& names) const {
    std::string r = "(";
    for (size_t i = 0; i < names.size(); i++) {
        const std::string& n = names[i];
        std::string v = n;
        if (n[0] == '*') {
            auto it = dims_.find(n.substr(1));
            v = it == dims_.end() ? "..." : "... [" + n.substr(1) + "=" + std::to_string(it->second) + "]";
        } else if (auto it = dims_.find(n); it != dims_.end() && !literal(n))
            v = n + "=" + std::to_string(it->second);
        r += (i ? ", " : "") + v;
    }
    return r + ")";
}

void check_tokens(const I32& tokens, long V, const std::string& op, const char* arg) {
    for (long i = 0; i < long(tokens.size()); i++)
        if (tokens.data()[i] < 0 || tokens.data()[i] >= V)
            throw Error(op + ": " + arg + "[" + std::to_string(i) + "] = " + std::to_string(tokens.data()[i]) +
                        " is outside [0, " + std::to_string(V) + ")");
}

}  // namespace strata::py_bind
