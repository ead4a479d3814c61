// Python bindings (module `strata`): the model's forward/backward/AdamW and each op's forward and
// backward, on float32 numpy arrays. Used by the parity tests against the PyTorch reference.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>

#include "core/error.h"
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
        if (size_t(a.size()) != s.numel) throw Error("set_param(" + name + "): wrong number of elements");
        m->param_from_host(s, a.data());
    }
    py::tuple forward(I32 tokens, std::optional<I32> targets) {
        if (tokens.ndim() != 2) throw Error("tokens must be (B, T)");
        long B = tokens.shape(0), T = tokens.shape(1);
        if (targets && (targets->ndim() != 2 || targets->shape(0) != B || targets->shape(1) != T))
            throw Error("targets must have the shape of tokens");
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
        long C = w.size(), N = x.size() / C;
        F32 y = make(std::vector<long>(x.shape(), x.shape() + x.ndim())), rstd = make({N});
        rmsnorm_forward(y.mutable_data(), rstd.mutable_data(), x.data(), w.data(), N, C, eps);
        return py::make_tuple(y, rstd);
    });
    ops.def("rmsnorm_backward", [](F32 dy, F32 x, F32 w, F32 rstd) {
        long C = w.size(), N = x.size() / C;
        F32 dx = make(std::vector<long>(x.shape(), x.shape() + x.ndim())), dw = make({C});
        std::fill_n(dx.mutable_data(), dx.size(), 0.f);
        std::fill_n(dw.mutable_data(), C, 0.f);
        rmsnorm_backward(dx.mutable_data(), dw.mutable_data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
        return py::make_tuple(dx, dw);
    });
    ops.def("swiglu_forward", [](F32 gu) {
        long F = gu.shape(gu.ndim() - 1) / 2, N = gu.size() / (2 * F);
        F32 y = make({N, F});
        swiglu_forward(y.mutable_data(), gu.data(), N, F);
        return y;
    });
    ops.def("swiglu_backward", [](F32 dy, F32 gu) {
        long F = gu.shape(gu.ndim() - 1) / 2, N = gu.size() / (2 * F);
        F32 dgu = make({N, 2 * F});
        std::fill_n(dgu.mutable_data(), dgu.size(), 0.f);
        swiglu_backward(dgu.mutable_data(), dy.data(), gu.data(), N, F);
        return dgu;
    });
    ops.def("attention_forward", [](F32 q, F32 k, F32 v) {  // q (B,T,H,d), k/v (B,T,Hk,d)
        if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4) throw Error("attention: q, k, v must be 4-D");
        AttnDims a{q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), 0,
                   k.shape(1) * k.shape(2) * k.shape(3)};
        if (a.H % a.Hk) throw Error("attention: H must be a multiple of Hk");
        F32 o = make({a.B, a.Tq, a.H, a.d}), lse = make({a.B, a.H, a.Tq});
        attention_forward(o.mutable_data(), lse.mutable_data(), q.data(), k.data(), v.data(), a);
        return py::make_tuple(o, lse);
    });
    ops.def("attention_backward", [](F32 dout, F32 out, F32 lse, F32 q, F32 k, F32 v) {
        AttnDims a{q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), 0,
                   k.shape(1) * k.shape(2) * k.shape(3)};
        F32 dq = make({a.B, a.Tq, a.H, a.d}), dk = make({a.B, a.Tk, a.Hk, a.d}), dv = make({a.B, a.Tk, a.Hk, a.d});
        for (F32* t : {&dq, &dk, &dv}) std::fill_n(t->mutable_data(), t->size(), 0.f);
        attention_backward(dq.mutable_data(), dk.mutable_data(), dv.mutable_data(), dout.data(), out.data(),
                           lse.data(), q.data(), k.data(), v.data(), a);
        return py::make_tuple(dq, dk, dv);
    });
    // MoDA: q (B,T,H,d), k/v (B,T,Hk,d), kd/vd (B,T,L,Hk,d): every depth slot used.
    auto moda_dims = [](F32 q, F32 k, F32 kd) {
        if (q.ndim() != 4 || k.ndim() != 4 || kd.ndim() != 5) throw Error("moda: q, k must be 4-D and kd 5-D");
        AttnDims a{q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), 0,
                   k.shape(1) * k.shape(2) * k.shape(3)};
        if (a.H % a.Hk) throw Error("moda: H must be a multiple of Hk");
        if (kd.shape(0) != a.B || kd.shape(1) != a.Tq || kd.shape(3) != a.Hk || kd.shape(4) != a.d)
            throw Error("moda: kd must be (B, T, L, Hk, d)");
        return a;
    };
    ops.def("moda_forward", [=](F32 q, F32 k, F32 v, F32 kd, F32 vd) {
        AttnDims a = moda_dims(q, k, kd);
        const long L = kd.shape(2);
        F32 o = make({a.B, a.Tq, a.H, a.d}), lse = make({a.B, a.H, a.Tq});
        moda_forward(o.mutable_data(), lse.mutable_data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), L, L, a);
        return py::make_tuple(o, lse);
    });
    ops.def("moda_backward", [=](F32 dout, F32 out, F32 lse, F32 q, F32 k, F32 v, F32 kd, F32 vd) {
        AttnDims a = moda_dims(q, k, kd);
        const long L = kd.shape(2);
        F32 dq = make({a.B, a.Tq, a.H, a.d}), dk = make({a.B, a.Tk, a.Hk, a.d}), dv = make({a.B, a.Tk, a.Hk, a.d});
        F32 dkd = make({a.B, a.Tq, L, a.Hk, a.d}), dvd = make({a.B, a.Tq, L, a.Hk, a.d});
        for (F32* t : {&dq, &dk, &dv, &dkd, &dvd}) std::fill_n(t->mutable_data(), t->size(), 0.f);
        moda_backward(dq.mutable_data(), dk.mutable_data(), dv.mutable_data(), dkd.mutable_data(), dvd.mutable_data(),
                      dout.data(), out.data(), lse.data(), q.data(), k.data(), v.data(), kd.data(), vd.data(), L, L, a);
        return py::make_tuple(dq, dk, dv, dkd, dvd);
    });
    ops.def("matmul_forward", [](F32 x, F32 w) {
        long IC = w.shape(1), OC = w.shape(0), N = x.size() / IC;
        F32 y = make({N, OC});
        matmul_forward(y.mutable_data(), x.data(), w.data(), N, IC, OC);
        return y;
    });
    ops.def("matmul_backward", [](F32 dy, F32 x, F32 w) {
        long IC = w.shape(1), OC = w.shape(0), N = x.size() / IC;
        F32 dx = make({N, IC}), dw = make({OC, IC});
        std::fill_n(dx.mutable_data(), dx.size(), 0.f);
        std::fill_n(dw.mutable_data(), dw.size(), 0.f);
        matmul_backward(dx.mutable_data(), dw.mutable_data(), dy.data(), x.data(), w.data(), N, IC, OC);
        return py::make_tuple(dx, dw);
    });
    ops.def("rope_forward", [](F32 x, double theta) {  // x (B, T, H, d), positions 0..T-1
        if (x.ndim() != 4) throw Error("rope: x must be (B, T, H, d)");
        long B = x.shape(0), T = x.shape(1), H = x.shape(2), d = x.shape(3);
        if (d % 2) throw Error("rope: d must be even");
        std::vector<float> cs(T * d / 2), sn(T * d / 2);
        std::vector<int32_t> pos(B * T);
        for (long i = 0; i < B * T; i++) pos[i] = int32_t(i % T);
        rope_table(cs.data(), sn.data(), T, d, theta);
        F32 y = make({B, T, H, d});
        std::memcpy(y.mutable_data(), x.data(), x.size() * sizeof(float));
        rope_forward(y.mutable_data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        return y;
    });
    ops.def("rope_backward", [](F32 dy, double theta) {
        long B = dy.shape(0), T = dy.shape(1), H = dy.shape(2), d = dy.shape(3);
        std::vector<float> cs(T * d / 2), sn(T * d / 2);
        std::vector<int32_t> pos(B * T);
        for (long i = 0; i < B * T; i++) pos[i] = int32_t(i % T);
        rope_table(cs.data(), sn.data(), T, d, theta);
        F32 dx = make({B, T, H, d});
        std::memcpy(dx.mutable_data(), dy.data(), dy.size() * sizeof(float));
        rope_backward(dx.mutable_data(), pos.data(), cs.data(), sn.data(), B * T, H, d);
        return dx;
    });
    ops.def("embedding_forward", [](I32 tokens, F32 table) {
        long N = tokens.size(), V = table.shape(0), C = table.shape(1);
        for (long i = 0; i < N; i++)
            if (tokens.data()[i] < 0 || tokens.data()[i] >= V) throw Error("embedding: token out of range");
        F32 y = make({N, C});
        embedding_forward(y.mutable_data(), tokens.data(), table.data(), N, C);
        return y;
    });
    ops.def("embedding_backward", [](F32 dy, I32 tokens, long V) {
        long N = tokens.size(), C = dy.shape(dy.ndim() - 1);
        for (long i = 0; i < N; i++)
            if (tokens.data()[i] < 0 || tokens.data()[i] >= V) throw Error("embedding: token out of range");
        F32 dt = make({V, C});
        std::fill_n(dt.mutable_data(), dt.size(), 0.f);
        embedding_backward(dt.mutable_data(), dy.data(), tokens.data(), N, C);
        return dt;
    });
    ops.def("crossentropy_forward", [](F32 logits, I32 targets) {  // per-row losses and lse
        long V = logits.shape(logits.ndim() - 1), N = logits.size() / V;
        if (targets.size() != N) throw Error("crossentropy: one target per row");
        for (long i = 0; i < N; i++)
            if (targets.data()[i] >= V) throw Error("crossentropy: target out of range");
        F32 loss = make({N}), lse = make({N});
        crossentropy_forward(loss.mutable_data(), lse.mutable_data(), logits.data(), targets.data(), N, V);
        return py::make_tuple(loss, lse);
    });
    ops.def("crossentropy_backward", [](F32 logits, F32 lse, I32 targets, float scale) {
        long V = logits.shape(logits.ndim() - 1), N = logits.size() / V;
        F32 dz = make({N, V});
        std::fill_n(dz.mutable_data(), dz.size(), 0.f);
        crossentropy_backward(dz.mutable_data(), logits.data(), lse.data(), targets.data(), N, V, scale);
        return dz;
    });
    // AttnRes: sources is a list of n arrays of one shape (..., D); w and gamma are (D).
    auto sources_of = [](const py::list& srcs, long D, long& N) {
        if (srcs.empty()) throw Error("attnres: at least one source");
        std::vector<F32> arrays;
        for (auto h : srcs) arrays.push_back(h.cast<F32>());
        N = arrays[0].size() / D;
        for (auto& a : arrays)
            if (a.size() != N * D) throw Error("attnres: every source must have the same shape (..., D)");
        return arrays;
    };
    ops.def("attnres_forward", [=](const py::list& srcs, F32 w, F32 gamma, double eps) {
        long D = w.size(), N = 0;
        auto arrays = sources_of(srcs, D, N);
        if (gamma.size() != D) throw Error("attnres: gamma must have the size of w");
        std::vector<const float*> ptr;
        for (auto& a : arrays) ptr.push_back(a.data());
        const long n = long(ptr.size());
        F32 out = make(std::vector<long>(arrays[0].shape(), arrays[0].shape() + arrays[0].ndim()));
        F32 logit = make({n, N}), rstd = make({n, N}), lse = make({N});
        attnres_forward(out.mutable_data(), logit.mutable_data(), rstd.mutable_data(), lse.mutable_data(), ptr.data(),
                        int(n), w.data(), gamma.data(), N, D, eps);
        return py::make_tuple(out, logit, rstd, lse);
    });
    ops.def("attnres_backward", [=](F32 dout, F32 out, F32 logit, F32 rstd, F32 lse, const py::list& srcs, F32 w,
                                    F32 gamma) {
        long D = w.size(), N = 0;
        auto arrays = sources_of(srcs, D, N);
        std::vector<const float*> ptr;
        py::list dsrcs;
        std::vector<float*> dptr;
        for (auto& a : arrays) {
            ptr.push_back(a.data());
            F32 d = make(std::vector<long>(a.shape(), a.shape() + a.ndim()));
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