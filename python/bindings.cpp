// Python bindings (module `strata`): the model's forward/backward/AdamW and each op's forward and
// backward, on float32 numpy arrays. Used by the parity tests against the PyTorch reference.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "core/error.h"
#include "core/version.h"
#include "model/model.h"
#include "ops/ops.h"
#include "train/optimizer.h"

namespace py = pybind11;
using namespace strata;

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

namespace {

nlohmann::json to_json(const py::handle& h) {
    if (py::isinstance<py::bool_>(h)) return h.cast<bool>();
    if (py::isinstance<py::int_>(h)) return h.cast<long long>();
    if (py::isinstance<py::float_>(h)) return h.cast<double>();
    if (py::isinstance<py::str>(h)) return h.cast<std::string>();
    if (py::isinstance<py::dict>(h)) {
        nlohmann::json j = nlohmann::json::object();
        for (auto kv : h.cast<py::dict>()) j[kv.first.cast<std::string>()] = to_json(kv.second);
        return j;
    }
    if (h.is_none()) return nullptr;
    throw Error("unsupported value in config: " + py::repr(h).cast<std::string>());
}

F32 make(const std::vector<long>& shape) { return F32(std::vector<py::ssize_t>(shape.begin(), shape.end())); }
std::vector<long> shape_of(const py::array& a) { return std::vector<long>(a.shape(), a.shape() + a.ndim()); }

std::string shape_str(const std::vector<long>& v) {
    std::string r = "(";
    for (size_t i = 0; i < v.size(); i++) r += (i ? ", " : "") + std::to_string(v[i]);
    return r + (v.size() == 1 ? ",)" : ")");
}

// The shapes of one binding's arguments, by name: each array is matched against a list of axis names,
// a name seen before must have the size it had, and "*N" as the first name matches any number of
// leading axes (none included) whose product is N. A mismatch is a strata.Error (a ValueError) that
// names the op, the argument, the expected shape and the one it got, so a wrong shape never reaches
// an op (whose pointers would read past the array, or garbage).
class Shapes {
  public:
    explicit Shapes(std::string op) : op_(std::move(op)) {}
    Shapes& operator()(const py::array& a, const std::string& arg, const std::vector<std::string>& names) {
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
    long operator[](const std::string& name) const { return dims_.at(name); }
    const std::string& op() const { return op_; }
    // An extra condition on the sizes bound so far, with its message.
    void require(bool cond, const std::string& what) const {
        if (!cond) throw Error(op_ + ": " + what);
    }

  private:
    // a size written as digits ("3"), not a name
    static bool literal(const std::string& name) {
        return std::all_of(name.begin(), name.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    }
    bool match(const std::string& name, long n) {
        if (literal(name)) return n == std::stol(name);
        auto it = dims_.find(name);
        if (it == dims_.end()) return dims_.emplace(name, n), true;
        return it->second == n;
    }
    std::string expected(const std::vector<std::string>& names) const {
        std::string r = "(";
        for (size_t i = 0; i < names.size(); i++) {
            const std::string& n = names[i];
            std::string v = n;
            if (n[0] == '*') {
                auto it = dims_.find(n.substr(1));
                v = it == dims_.end() ? "..." : "... [" + n.substr(1) + "=" + std::to_string(it->second) + "]";
            }
            else if (auto it = dims_.find(n); it != dims_.end() && !literal(n))
                v = n + "=" + std::to_string(it->second);
            r += (i ? ", " : "") + v;
        }
        return r + ")";
    }
    std::string op_;
    std::map<std::string, long> dims_;
};

// Sizes of attention's arguments, checked: q (B, Tq, H, d) and k, v (B, Tk, Hk, d), every size ≥ 1
// and H a multiple of Hk.
AttnDims attention_dims(Shapes& s, const F32& q, const F32& k, const F32& v) {
    s(q, "q", {"B", "Tq", "H", "d"})(k, "k", {"B", "Tk", "Hk", "d"})(v, "v", {"B", "Tk", "Hk", "d"});
    for (const char* n : {"B", "Tq", "Tk", "H", "Hk", "d"}) s.require(s[n] >= 1, std::string(n) + " must be at least 1");
    s.require(s["H"] % s["Hk"] == 0, "H (" + std::to_string(s["H"]) + ") must be a multiple of Hk (" +
                                         std::to_string(s["Hk"]) + ")");
    return AttnDims{s["B"], s["Tq"], s["Tk"], s["H"], s["Hk"], s["d"], 0, s["Tk"] * s["Hk"] * s["d"]};
}

struct PyModel {
    std::unique_ptr<Model<float>> m;
    std::unique_ptr<AdamW<float>> opt;

    explicit PyModel(const py::dict& cfg) {
        m = std::make_unique<Model<float>>(ModelConfig::from_json(to_json(cfg), "config"));
    }
    std::vector<std::string> param_names() const {
        std::vector<std::string> r;
        for (auto& s : m->specs) r.push_back(s.name);
        return r;
    }
    F32 get_param(const std::string& name) const {
        const ParamSpec& s = m->spec(name);
        F32 a = make(s.shape);
        m->param_to_host(s, a.mutable_data());
        return a;
    }
    F32 get_grad(const std::string& name) const {
        const ParamSpec& s = m->spec(name);
        F32 a = make(s.shape);
        m->grad_to_host(s, a.mutable_data());
        return a;
    }
    void set_param(const std::string& name, F32 a) {
        const ParamSpec& s = m->spec(name);
        if (shape_of(a) != s.shape)
            throw Error("set_param: " + name + " must have shape " + shape_str(s.shape) + ", got " + shape_str(shape_of(a)));
        m->param_from_host(s, a.data());
    }
    py::tuple forward(I32 tokens, std::optional<I32> targets) {
        Shapes sh("Model.forward");
        sh(tokens, "tokens", {"B", "T"});
        if (targets) sh(*targets, "targets", {"B", "T"});
        const long B = sh["B"], T = sh["T"];
        sh.require(B >= 1 && T >= 1, "tokens must hold at least one token");
        // A forward with targets fuses the LM head with the loss and keeps no logits: take them from a
        // forward without targets first, then the loss (and what backward needs) from one with them.
        m->forward(tokens.data(), nullptr, B, T);
        F32 logits = make({B, T, (long)m->cfg.vocab_size});
        m->logits_to_host(logits.mutable_data(), 0, B * T);
        const double loss = targets ? m->forward(tokens.data(), targets->data(), B, T) : 0.0;
        return py::make_tuple(logits, targets ? py::object(py::float_(loss)) : py::object(py::none()));
    }
    void backward() {
        m->zero_grad();
        m->backward();
    }
    void adamw_step(double lr, double beta1, double beta2, double eps, double wd) {
        AdamWConfig c{beta1, beta2, eps, wd};
        if (!opt) opt = std::make_unique<AdamW<float>>(*m, c);
        opt->cfg = c;
        opt->update(*m, lr);
    }
};

}  // namespace

PYBIND11_MODULE(strata, mod) {
    mod.doc() = "strata: a C++ engine for decoder-only Transformers (bindings)";
    mod.attr("__version__") = STRATA_VERSION;
    static py::exception<Error> exc(mod, "Error", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error& e) {
            exc(e.what());
        }
    });

    py::class_<PyModel>(mod, "Model")
        .def(py::init<const py::dict&>(), py::arg("config"))
        .def("param_names", &PyModel::param_names)
        .def("get_param", &PyModel::get_param)
        .def("set_param", &PyModel::set_param)
        .def("get_grad", &PyModel::get_grad)
        .def("forward", &PyModel::forward, py::arg("tokens"), py::arg("targets") = py::none())
        .def("backward", &PyModel::backward)
        .def("adamw_step", &PyModel::adamw_step, py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.95,
             py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.1)
        .def_property(
            "skip_sublayer", [](const PyModel& p) { return p.m->skip_sublayer; },
            [](PyModel& p, int j) {
                if (j < -1 || j >= 2 * p.m->cfg.n_layers) throw Error("skip_sublayer must be -1 or a sublayer index");
                p.m->skip_sublayer = j;
            },
            "diagnostics: the sublayer whose output is zeroed (-1: none); forward only")
        .def_property(
            "precision", [](const PyModel& p) { return std::string(to_string(p.m->precision())); },
            [](PyModel& p, const std::string& s) { p.m->set_precision(parse_precision(s, "precision")); },
            "\"fp32\" or \"bf16\" (mixed precision: bf16 activations and GEMM inputs, float master weights "
            "and gradients)")
        .def_property_readonly("num_params", [](const PyModel& p) { return p.m->num_params(); });

    auto ops = mod.def_submodule("ops", "each op's forward and backward on float32 arrays");
    ops.def("rmsnorm_forward", [](F32 x, F32 w, double eps) {
        Shapes s("rmsnorm_forward");
        s(x, "x", {"*N", "C"})(w, "w", {"C"});
        const long N = s["N"], C = s["C"];
        F32 y = make(shape_of(x)), rstd = make({N});
        rmsnorm_forward(y.mutable_data(), rstd.mutable_data(), x.data(), w.data(), N, C, eps);
        return py::make_tuple(y, rstd);
    });
    ops.def("rmsnorm_backward", [](F32 dy, F32 x, F32 w, F32 rstd) {
        Shapes s("rmsnorm_backward");
        s(x, "x", {"*N", "C"})(dy, "dy", {"*N", "C"})(w, "w", {"C"})(rstd, "rstd", {"N"});
        const long N = s["N"], C = s["C"];
        F32 dx = make(shape_of(x)), dw = make({C});
        std::fill_n(dx.mutable_data(), dx.size(), 0.f);
        std::fill_n(dw.mutable_data(), C, 0.f);
        rmsnorm_backward(dx.mutable_data(), dw.mutable_data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
        return py::make_tuple(dx, dw);
    });
    // gu (..., 2F) = [gate | up]
    auto swiglu_dims = [](Shapes& s, const F32& gu) {
        s(gu, "gu", {"*N", "2F"});
        s.require(s["2F"] % 2 == 0 && s["2F"] > 0, "gu's last axis (" + std::to_string(s["2F"]) +
                                                      ") must be even and positive: [gate | up]");
        return std::pair<long, long>{s["N"], s["2F"] / 2};
    };
    ops.def("swiglu_forward", [=](F32 gu) {
        Shapes s("swiglu_forward");
        const auto [N, F] = swiglu_dims(s, gu);
        F32 y = make({N, F});
        swiglu_forward(y.mutable_data(), gu.data(), N, F);
        return y;
    });
    ops.def("swiglu_backward", [=](F32 dy, F32 gu) {
        Shapes s("swiglu_backward");
        const auto [N, F] = swiglu_dims(s, gu);
        s(dy, "dy", {"*N", std::to_string(F)});
        F32 dgu = make({N, 2 * F});
        swiglu_backward(dgu.mutable_data(), dy.data(), gu.data(), N, F, Into::overwrite);
        return dgu;
    });
    ops.def("attention_forward", [](F32 q, F32 k, F32 v) {  // q (B,T,H,d), k/v (B,T,Hk,d)
        Shapes s("attention_forward");
        const AttnDims a = attention_dims(s, q, k, v);
        F32 o = make({a.B, a.Tq, a.H, a.d}), lse = make({a.B, a.H, a.Tq});
        attention_forward(o.mutable_data(), lse.mutable_data(), q.data(), k.data(), v.data(), a);
        return py::make_tuple(o, lse);
    });
    ops.def("attention_backward", [](F32 dout, F32 out, F32 lse, F32 q, F32 k, F32 v) {
        Shapes s("attention_backward");
        const AttnDims a = attention_dims(s, q, k, v);
        s(dout, "dout", {"B", "Tq", "H", "d"})(out, "out", {"B", "Tq", "H", "d"})(lse, "lse", {"B", "H", "Tq"});
        F32 dq = make({a.B, a.Tq, a.H, a.d}), dk = make({a.B, a.Tk, a.Hk, a.d}), dv = make({a.B, a.Tk, a.Hk, a.d});
        for (F32* t : {&dq, &dk, &dv}) std::fill_n(t->mutable_data(), t->size(), 0.f);
        attention_backward(dq.mutable_data(), dk.mutable_data(), dv.mutable_data(), dout.data(), out.data(),
                           lse.data(), q.data(), k.data(), v.data(), a);
        return py::make_tuple(dq, dk, dv);
    });
    // MoDA: q (B,T,H,d), k/v (B,Tk,Hk,d) (None under mask="none"), kd/vd (B,T,L,Hk,d): every depth slot
    // used. The keywords are ModaParams' (ops.h): mask "causal" | "noncausal" | "none", visibility
    // "own" | "chunk", chunk (tokens; 0: 64/G), window (slots; 0: all), scale (None: 1/sqrt(d)).
    struct ModaArgs {
        std::optional<F32> k, v;
        F32 q, kd, vd;
    };
    auto moda_setup = [](Shapes& s, const ModaArgs& x, const std::string& mask, const std::string& visibility,
                         long chunk, long window, std::optional<double> scale) {
        ModaParams<float> p;
        p.mask = parse_name<SeqMask>(mask, s.op() + ": mask");
        p.visibility = parse_name<DepthVisibility>(visibility, s.op() + ": visibility");
        if (p.mask == SeqMask::none) {
            s.require(!x.k && !x.v, "k and v must be None under mask=\"none\" (depth slots only)");
            s(x.q, "q", {"B", "Tq", "H", "d"});
            s(x.kd, "kd", {"B", "Tq", "L", "Hk", "d"})(x.vd, "vd", {"B", "Tq", "L", "Hk", "d"});
            for (const char* n : {"B", "Tq", "H", "Hk", "d"}) s.require(s[n] >= 1, std::string(n) + " must be at least 1");
            s.require(s["H"] % s["Hk"] == 0, "H must be a multiple of Hk");
            p.dims = AttnDims{s["B"], s["Tq"], 0, s["H"], s["Hk"], s["d"], 0, 0};
        } else {
            s.require(x.k && x.v, "k and v are required under mask=\"" + mask + "\"");
            p.dims = attention_dims(s, x.q, *x.k, *x.v);
            s(x.kd, "kd", {"B", "Tq", "L", "Hk", "d"})(x.vd, "vd", {"B", "Tq", "L", "Hk", "d"});
            p.k = x.k->data(), p.v = x.v->data();
        }
        s.require(scale.value_or(1.0) > 0 && std::isfinite(scale.value_or(1.0)), "scale must be finite and positive");
        s.require(chunk >= 0, "chunk must be positive (0: the default 64/G)");
        p.q = x.q.data(), p.kd = x.kd.data(), p.vd = x.vd.data();
        p.L = p.L_max = s["L"];
        p.chunk = chunk, p.window = window, p.scale = scale.value_or(0.0);
        return p;
    };
    ops.def(
        "moda_forward",
        [=](F32 q, std::optional<F32> k, std::optional<F32> v, F32 kd, F32 vd, const std::string& mask,
            const std::string& visibility, long chunk, long window, std::optional<double> scale) {
            Shapes s("moda_forward");
            ModaArgs x{k, v, q, kd, vd};
            ModaParams<float> p = moda_setup(s, x, mask, visibility, chunk, window, scale);
            const AttnDims& a = p.dims;
            F32 o = make({a.B, a.Tq, a.H, a.d}), lse = make({a.B, a.H, a.Tq});
            p.out = o.mutable_data(), p.lse = lse.mutable_data();
            moda_forward(p);
            return py::make_tuple(o, lse);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kd"), py::arg("vd"), py::kw_only(),
        py::arg("mask") = "causal", py::arg("visibility") = "own", py::arg("chunk") = 0, py::arg("window") = 0,
        py::arg("scale") = py::none());
    ops.def(
        "moda_backward",
        [=](F32 dout, F32 out, F32 lse, F32 q, std::optional<F32> k, std::optional<F32> v, F32 kd, F32 vd,
            const std::string& mask, const std::string& visibility, long chunk, long window,
            std::optional<double> scale) {
            Shapes s("moda_backward");
            ModaArgs x{k, v, q, kd, vd};
            ModaParams<float> p = moda_setup(s, x, mask, visibility, chunk, window, scale);
            const AttnDims& a = p.dims;
            s(dout, "dout", {"B", "Tq", "H", "d"})(out, "out", {"B", "Tq", "H", "d"})(lse, "lse", {"B", "H", "Tq"});
            const long L = s["L"];
            F32 dq = make({a.B, a.Tq, a.H, a.d}), dkd = make({a.B, a.Tq, L, a.Hk, a.d}),
                dvd = make({a.B, a.Tq, L, a.Hk, a.d});
            const long Tk = p.mask == SeqMask::none ? 0 : a.Tk;
            F32 dk = make({a.B, Tk, a.Hk, a.d}), dv = make({a.B, Tk, a.Hk, a.d});
            for (F32* t : {&dq, &dk, &dv, &dkd, &dvd}) std::fill_n(t->mutable_data(), t->size(), 0.f);
            p.out = const_cast<float*>(out.data()), p.lse = const_cast<float*>(lse.data());
            moda_backward(p, ModaGrads<float>{dq.mutable_data(), Tk ? dk.mutable_data() : nullptr,
                                              Tk ? dv.mutable_data() : nullptr, dkd.mutable_data(), dvd.mutable_data(),
                                              dout.data()});
            if (p.mask == SeqMask::none) return py::make_tuple(dq, py::none(), py::none(), dkd, dvd);
            return py::make_tuple(dq, dk, dv, dkd, dvd);
        },
        py::arg("dout"), py::arg("out"), py::arg("lse"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kd"),
        py::arg("vd"), py::kw_only(), py::arg("mask") = "causal", py::arg("visibility") = "own", py::arg("chunk") = 0,
        py::arg("window") = 0, py::arg("scale") = py::none());
    ops.def("matmul_forward", [](F32 x, F32 w) {  // x (..., IC), w (OC, IC): y = x·wᵀ, (N, OC)
        Shapes s("matmul_forward");
        s(w, "w", {"OC", "IC"})(x, "x", {"*N", "IC"});
        const long N = s["N"], IC = s["IC"], OC = s["OC"];
        F32 y = make({N, OC});
        matmul_forward(y.mutable_data(), x.data(), w.data(), N, IC, OC);
        return y;
    });
    ops.def("matmul_backward", [](F32 dy, F32 x, F32 w) {
        Shapes s("matmul_backward");
        s(w, "w", {"OC", "IC"})(x, "x", {"*N", "IC"})(dy, "dy", {"*N", "OC"});
        const long N = s["N"], IC = s["IC"], OC = s["OC"];
        F32 dx = make({N, IC}), dw = make({OC, IC});
        std::fill_n(dw.mutable_data(), dw.size(), 0.f);
        matmul_backward(dx.mutable_data(), dw.mutable_data(), dy.data(), x.data(), w.data(), N, IC, OC, Into::overwrite);
        return py::make_tuple(dx, dw);
    });
    // RoPE on x (B, T, H, d) at positions 0..T-1, d even; the backward is the inverse rotation.
    auto rope = [](const char* op, const char* arg, const F32& x, double theta, bool backward) {
        Shapes s(op);
        s(x, arg, {"B", "T", "H", "d"});
        s.require(s["d"] % 2 == 0, "d (" + std::to_string(s["d"]) + ") must be even: RoPE rotates pairs");
        const long B = s["B"], T = s["T"], H = s["H"], d = s["d"];
        std::vector<float> cs(size_t(T * d / 2)), sn(size_t(T * d / 2));
        std::vector<int32_t> pos(size_t(B * T));
        for (long i = 0; i < B * T; i++) pos[i] = int32_t(i % T);
        rope_table(cs.data(), sn.data(), T, d, theta);
        F32 y = make({B, T, H, d});
        std::memcpy(y.mutable_data(), x.data(), x.size() * sizeof(float));
        if (backward) rope_backward(y.mutable_data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        else rope_forward(y.mutable_data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        return y;
    };
    ops.def("rope_forward", [=](F32 x, double theta) { return rope("rope_forward", "x", x, theta, false); });
    ops.def("rope_backward", [=](F32 dy, double theta) { return rope("rope_backward", "dy", dy, theta, true); });
    auto check_tokens = [](const I32& tokens, long V, const std::string& op, const char* arg) {
        for (long i = 0; i < long(tokens.size()); i++)
            if (tokens.data()[i] < 0 || tokens.data()[i] >= V)
                throw Error(op + ": " + arg + "[" + std::to_string(i) + "] = " + std::to_string(tokens.data()[i]) +
                            " is outside [0, " + std::to_string(V) + ")");
    };
    ops.def("embedding_forward", [=](I32 tokens, F32 table) {
        Shapes s("embedding_forward");
        s(table, "table", {"V", "C"})(tokens, "tokens", {"*N"});
        const long N = s["N"], C = s["C"];
        check_tokens(tokens, s["V"], "embedding_forward", "tokens");
        F32 y = make({N, C});
        embedding_forward(y.mutable_data(), tokens.data(), table.data(), N, C);
        return y;
    });
    ops.def("embedding_backward", [=](F32 dy, I32 tokens, long V) {
        Shapes s("embedding_backward");
        s(tokens, "tokens", {"*N"})(dy, "dy", {"*N", "C"});
        s.require(V >= 1, "V must be at least 1");
        const long N = s["N"], C = s["C"];
        check_tokens(tokens, V, "embedding_backward", "tokens");
        F32 dt = make({V, C});
        std::fill_n(dt.mutable_data(), dt.size(), 0.f);
        embedding_backward(dt.mutable_data(), dy.data(), tokens.data(), N, C);
        return dt;
    });
    // Targets < 0 are ignored rows (ops.h); any other target must be a vocabulary index.
    auto check_targets = [](const I32& targets, long V, const std::string& op) {
        for (long i = 0; i < long(targets.size()); i++)
            if (targets.data()[i] >= V)
                throw Error(op + ": targets[" + std::to_string(i) + "] = " + std::to_string(targets.data()[i]) +
                            " is not below V = " + std::to_string(V) + " (negative targets are ignored rows)");
    };
    ops.def("crossentropy_forward", [=](F32 logits, I32 targets) {  // per-row losses and lse
        Shapes s("crossentropy_forward");
        s(logits, "logits", {"*N", "V"})(targets, "targets", {"N"});
        const long N = s["N"], V = s["V"];
        s.require(V >= 1, "V must be at least 1");
        check_targets(targets, V, "crossentropy_forward");
        F32 loss = make({N}), lse = make({N});
        crossentropy_forward(loss.mutable_data(), lse.mutable_data(), logits.data(), targets.data(), N, V);
        return py::make_tuple(loss, lse);
    });
    ops.def("crossentropy_backward", [=](F32 logits, F32 lse, I32 targets, float scale) {
        Shapes s("crossentropy_backward");
        s(logits, "logits", {"*N", "V"})(lse, "lse", {"N"})(targets, "targets", {"N"});
        const long N = s["N"], V = s["V"];
        check_targets(targets, V, "crossentropy_backward");
        F32 dz = make({N, V});
        std::fill_n(dz.mutable_data(), dz.size(), 0.f);
        crossentropy_backward(dz.mutable_data(), logits.data(), lse.data(), targets.data(), N, V, scale);
        return dz;
    });
    // AttnRes: sources is a list of n arrays of one shape (..., D); w and gamma are (D).
    auto sources_of = [](Shapes& s, const py::list& srcs, const F32& w, const F32& gamma) {
        s(w, "w", {"D"})(gamma, "gamma", {"D"});
        s.require(!srcs.empty(), "sources must hold at least one array");
        std::vector<F32> arrays;
        for (auto h : srcs) arrays.push_back(h.cast<F32>());
        s(arrays[0], "sources[0]", {"*N", "D"});
        const std::vector<long> shape = shape_of(arrays[0]);
        for (size_t i = 1; i < arrays.size(); i++)
            if (shape_of(arrays[i]) != shape)
                throw Error("attnres: sources[" + std::to_string(i) + "] must have the shape of sources[0], " +
                            shape_str(shape) + ", got " + shape_str(shape_of(arrays[i])));
        return arrays;
    };
    ops.def("attnres_forward", [=](const py::list& srcs, F32 w, F32 gamma, double eps) {
        Shapes s("attnres_forward");
        auto arrays = sources_of(s, srcs, w, gamma);
        const long N = s["N"], D = s["D"];
        std::vector<const float*> ptr;
        for (auto& a : arrays) ptr.push_back(a.data());
        const long n = long(ptr.size());
        F32 out = make(shape_of(arrays[0]));
        F32 logit = make({n, N}), rstd = make({n, N}), lse = make({N});
        attnres_forward(out.mutable_data(), logit.mutable_data(), rstd.mutable_data(), lse.mutable_data(), ptr.data(),
                        int(n), w.data(), gamma.data(), N, D, eps);
        return py::make_tuple(out, logit, rstd, lse);
    });
    ops.def("attnres_backward", [=](F32 dout, F32 out, F32 logit, F32 rstd, F32 lse, const py::list& srcs, F32 w,
                                    F32 gamma) {
        Shapes s("attnres_backward");
        auto arrays = sources_of(s, srcs, w, gamma);
        const long N = s["N"], D = s["D"], n = long(arrays.size());
        s(dout, "dout", {"*N", "D"})(out, "out", {"*N", "D"})(lse, "lse", {"N"});
        s(logit, "logit", {std::to_string(n), "N"})(rstd, "rstd", {std::to_string(n), "N"});
        std::vector<const float*> ptr;
        py::list dsrcs;
        std::vector<float*> dptr;
        for (auto& a : arrays) {
            ptr.push_back(a.data());
            F32 d = make(shape_of(a));
            std::fill_n(d.mutable_data(), d.size(), 0.f);
            dptr.push_back(d.mutable_data());
            dsrcs.append(d);
        }
        F32 dw = make({D}), dgamma = make({D});
        std::fill_n(dw.mutable_data(), D, 0.f);
        std::fill_n(dgamma.mutable_data(), D, 0.f);
        attnres_backward(dptr.data(), dw.mutable_data(), dgamma.mutable_data(), dout.data(), out.data(), logit.data(),
                         rstd.data(), lse.data(), ptr.data(), int(ptr.size()), w.data(), gamma.data(), N, D);
        return py::make_tuple(dsrcs, dw, dgamma);
    });
}