// strata.ops: each op's forward and backward on numpy arrays, float32 (and float64 for RMSNorm,
// attention, MoDA and the AttnRes aggregation, the ops strata.torch wraps, so gradcheck can run in
// double precision). Every argument's shape is checked first (common.h: Shapes).
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <optional>

#include "common.h"
#include "model/config.h"
#include "ops/ops.h"

namespace strata::py_bind {

namespace {

// Sizes of attention's arguments, checked: q (B, Tq, H, d) and k, v (B, Tk, Hk, d), every size ≥ 1
// and H a multiple of Hk.
AttnDims attention_dims(Shapes& s, const py::array& q, const py::array& k, const py::array& v) {
    s(q, "q", {"B", "Tq", "H", "d"})(k, "k", {"B", "Tk", "Hk", "d"})(v, "v", {"B", "Tk", "Hk", "d"});
    for (const char* n : {"B", "Tq", "Tk", "H", "Hk", "d"}) s.require(s[n] >= 1, std::string(n) + " must be at least 1");
    s.require(s["H"] % s["Hk"] == 0, "H (" + std::to_string(s["H"]) + ") must be a multiple of Hk (" +
                                         std::to_string(s["Hk"]) + ")");
    return AttnDims{s["B"], s["Tq"], s["Tk"], s["H"], s["Hk"], s["d"], 0, s["Tk"] * s["Hk"] * s["d"]};
}

template <class T>
Arr<T> zeros(const std::vector<long>& shape) {
    Arr<T> a = make<T>(shape);
    std::fill_n(a.mutable_data(), a.size(), T(0));
    return a;
}

template <class T>
py::tuple rmsnorm_fwd(Arr<T> x, Arr<T> w, double eps) {
    Shapes s("rmsnorm_forward");
    s(x, "x", {"*N", "C"})(w, "w", {"C"});
    const long N = s["N"], C = s["C"];
    Arr<T> y = make<T>(shape_of(x)), rstd = make<T>({N});
    rmsnorm_forward(y.mutable_data(), rstd.mutable_data(), x.data(), w.data(), N, C, eps);
    return py::make_tuple(y, rstd);
}

template <class T>
py::tuple rmsnorm_bwd(Arr<T> dy, Arr<T> x, Arr<T> w, Arr<T> rstd) {
    Shapes s("rmsnorm_backward");
    s(x, "x", {"*N", "C"})(dy, "dy", {"*N", "C"})(w, "w", {"C"})(rstd, "rstd", {"N"});
    const long N = s["N"], C = s["C"];
    Arr<T> dx = zeros<T>(shape_of(x)), dw = zeros<T>({C});
    rmsnorm_backward(dx.mutable_data(), dw.mutable_data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
    return py::make_tuple(dx, dw);
}

template <class T>
py::tuple attention_fwd(Arr<T> q, Arr<T> k, Arr<T> v) {  // q (B,T,H,d), k/v (B,T,Hk,d)
    Shapes s("attention_forward");
    const AttnDims a = attention_dims(s, q, k, v);
    Arr<T> o = make<T>({a.B, a.Tq, a.H, a.d}), lse = make<T>({a.B, a.H, a.Tq});
    attention_forward(o.mutable_data(), lse.mutable_data(), q.data(), k.data(), v.data(), a);
    return py::make_tuple(o, lse);
}

template <class T>
py::tuple attention_bwd(Arr<T> dout, Arr<T> out, Arr<T> lse, Arr<T> q, Arr<T> k, Arr<T> v) {
    Shapes s("attention_backward");
    const AttnDims a = attention_dims(s, q, k, v);
    s(dout, "dout", {"B", "Tq", "H", "d"})(out, "out", {"B", "Tq", "H", "d"})(lse, "lse", {"B", "H", "Tq"});
    Arr<T> dq = zeros<T>({a.B, a.Tq, a.H, a.d}), dk = zeros<T>({a.B, a.Tk, a.Hk, a.d}),
           dv = zeros<T>({a.B, a.Tk, a.Hk, a.d});
    attention_backward(dq.mutable_data(), dk.mutable_data(), dv.mutable_data(), dout.data(), out.data(), lse.data(),
                       q.data(), k.data(), v.data(), a);
    return py::make_tuple(dq, dk, dv);
}

// MoDA: q (B,T,H,d), k/v (B,Tk,Hk,d) (None under mask="none"), kd/vd (B,T,L,Hk,d): every depth slot
// used. The keywords are ModaParams' (ops.h): mask "causal" | "noncausal" | "none", visibility
// "own" | "chunk", chunk (tokens; 0: 64/G), window (slots; 0: all), scale (None: 1/sqrt(d)).
template <class T>
struct ModaArgs {
    Arr<T> q;
    std::optional<Arr<T>> k, v;
    Arr<T> kd, vd;
    std::string mask, visibility;
    long chunk = 0, window = 0;
    std::optional<double> scale;
};

template <class T>
ModaParams<T> moda_setup(Shapes& s, const ModaArgs<T>& x) {
    ModaParams<T> p;
    p.mask = parse_name<SeqMask>(x.mask, s.op() + ": mask");
    p.visibility = parse_name<DepthVisibility>(x.visibility, s.op() + ": visibility");
    if (p.mask == SeqMask::none) {
        s.require(!x.k && !x.v, "k and v must be None under mask=\"none\" (depth slots only)");
        s(x.q, "q", {"B", "Tq", "H", "d"});
        s(x.kd, "kd", {"B", "Tq", "L", "Hk", "d"})(x.vd, "vd", {"B", "Tq", "L", "Hk", "d"});
        for (const char* n : {"B", "Tq", "H", "Hk", "d"}) s.require(s[n] >= 1, std::string(n) + " must be at least 1");
        s.require(s["H"] % s["Hk"] == 0, "H must be a multiple of Hk");
        p.dims = AttnDims{s["B"], s["Tq"], 0, s["H"], s["Hk"], s["d"], 0, 0};
    } else {
        s.require(x.k && x.v, "k and v are required under mask=\"" + x.mask + "\"");
        p.dims = attention_dims(s, x.q, *x.k, *x.v);
        s(x.kd, "kd", {"B", "Tq", "L", "Hk", "d"})(x.vd, "vd", {"B", "Tq", "L", "Hk", "d"});
        p.k = x.k->data(), p.v = x.v->data();
    }
    s.require(x.scale.value_or(1.0) > 0 && std::isfinite(x.scale.value_or(1.0)), "scale must be finite and positive");
    s.require(x.chunk >= 0, "chunk must be positive (0: the default 64/G)");
    p.q = x.q.data(), p.kd = x.kd.data(), p.vd = x.vd.data();
    p.L = p.L_max = s["L"];
    p.chunk = x.chunk, p.window = x.window, p.scale = x.scale.value_or(0.0);
    return p;
}

template <class T>
py::tuple moda_fwd(Arr<T> q, std::optional<Arr<T>> k, std::optional<Arr<T>> v, Arr<T> kd, Arr<T> vd,
                   const std::string& mask, const std::string& visibility, long chunk, long window,
                   std::optional<double> scale) {
    Shapes s("moda_forward");
    const ModaArgs<T> x{q, k, v, kd, vd, mask, visibility, chunk, window, scale};
    ModaParams<T> p = moda_setup(s, x);
    const AttnDims& a = p.dims;
    Arr<T> o = make<T>({a.B, a.Tq, a.H, a.d}), lse = make<T>({a.B, a.H, a.Tq});
    p.out = o.mutable_data(), p.lse = lse.mutable_data();
    moda_forward(p);
    return py::make_tuple(o, lse);
}

template <class T>
py::tuple moda_bwd(Arr<T> dout, Arr<T> out, Arr<T> lse, Arr<T> q, std::optional<Arr<T>> k, std::optional<Arr<T>> v,
                   Arr<T> kd, Arr<T> vd, const std::string& mask, const std::string& visibility, long chunk,
                   long window, std::optional<double> scale) {
    Shapes s("moda_backward");
    const ModaArgs<T> x{q, k, v, kd, vd, mask, visibility, chunk, window, scale};
    ModaParams<T> p = moda_setup(s, x);
    const AttnDims& a = p.dims;
    s(dout, "dout", {"B", "Tq", "H", "d"})(out, "out", {"B", "Tq", "H", "d"})(lse, "lse", {"B", "H", "Tq"});
    const long L = s["L"];
    Arr<T> dq = zeros<T>({a.B, a.Tq, a.H, a.d}), dkd = zeros<T>({a.B, a.Tq, L, a.Hk, a.d}),
           dvd = zeros<T>({a.B, a.Tq, L, a.Hk, a.d});
    const long Tk = p.mask == SeqMask::none ? 0 : a.Tk;
    Arr<T> dk = zeros<T>({a.B, Tk, a.Hk, a.d}), dv = zeros<T>({a.B, Tk, a.Hk, a.d});
    p.out = const_cast<T*>(out.data()), p.lse = const_cast<T*>(lse.data());
    moda_backward(p, ModaGrads<T>{dq.mutable_data(), Tk ? dk.mutable_data() : nullptr, Tk ? dv.mutable_data() : nullptr,
                                  dkd.mutable_data(), dvd.mutable_data(), dout.data()});
    if (p.mask == SeqMask::none) return py::make_tuple(dq, py::none(), py::none(), dkd, dvd);
    return py::make_tuple(dq, dk, dv, dkd, dvd);
}

// AttnRes: sources is a list of n arrays of one shape (..., D); w and gamma are (D).
template <class T>
std::vector<Arr<T>> sources_of(Shapes& s, const py::list& srcs, const Arr<T>& w, const Arr<T>& gamma) {
    s(w, "w", {"D"})(gamma, "gamma", {"D"});
    s.require(!srcs.empty(), "sources must hold at least one array");
    std::vector<Arr<T>> arrays;
    for (auto h : srcs) arrays.push_back(h.cast<Arr<T>>());
    s(arrays[0], "sources[0]", {"*N", "D"});
    const std::vector<long> shape = shape_of(arrays[0]);
    for (size_t i = 1; i < arrays.size(); i++)
        if (shape_of(arrays[i]) != shape)
            throw Error(s.op() + ": sources[" + std::to_string(i) + "] must have the shape of sources[0], " +
                        shape_str(shape) + ", got " + shape_str(shape_of(arrays[i])));
    return arrays;
}

template <class T>
py::tuple attnres_fwd(const py::list& srcs, Arr<T> w, Arr<T> gamma, double eps) {
    Shapes s("attnres_forward");
    auto arrays = sources_of<T>(s, srcs, w, gamma);
    const long N = s["N"], D = s["D"];
    std::vector<const T*> ptr;
    for (auto& a : arrays) ptr.push_back(a.data());
    const long n = long(ptr.size());
    Arr<T> out = make<T>(shape_of(arrays[0]));
    Arr<T> logit = make<T>({n, N}), rstd = make<T>({n, N}), lse = make<T>({N});
    attnres_forward(out.mutable_data(), logit.mutable_data(), rstd.mutable_data(), lse.mutable_data(), ptr.data(),
                    int(n), w.data(), gamma.data(), N, D, eps);
    return py::make_tuple(out, logit, rstd, lse);
}

template <class T>
py::tuple attnres_bwd(Arr<T> dout, Arr<T> out, Arr<T> logit, Arr<T> rstd, Arr<T> lse, const py::list& srcs, Arr<T> w,
                      Arr<T> gamma) {
    Shapes s("attnres_backward");
    auto arrays = sources_of<T>(s, srcs, w, gamma);
    const long N = s["N"], D = s["D"], n = long(arrays.size());
    s(dout, "dout", {"*N", "D"})(out, "out", {"*N", "D"})(lse, "lse", {"N"});
    s(logit, "logit", {std::to_string(n), "N"})(rstd, "rstd", {std::to_string(n), "N"});
    std::vector<const T*> ptr;
    py::list dsrcs;
    std::vector<T*> dptr;
    for (auto& a : arrays) {
        ptr.push_back(a.data());
        Arr<T> d = zeros<T>(shape_of(a));
        dptr.push_back(d.mutable_data());
        dsrcs.append(d);
    }
    Arr<T> dw = zeros<T>({D}), dgamma = zeros<T>({D});
    attnres_backward(dptr.data(), dw.mutable_data(), dgamma.mutable_data(), dout.data(), out.data(), logit.data(),
                     rstd.data(), lse.data(), ptr.data(), int(ptr.size()), w.data(), gamma.data(), N, D);
    return py::make_tuple(dsrcs, dw, dgamma);
}

// Registers f<float> and then f<double>: pybind11 tries overloads without conversion first, so a
// float64 array takes the double kernel and a float32 one the float kernel, while anything else
// (lists, other dtypes) is converted to float32 by the first overload.
template <class F32Fn, class F64Fn, class... Extra>
void def_float_double(py::module_& m, const char* name, F32Fn f32, F64Fn f64, const Extra&... extra) {
    m.def(name, f32, extra...);
    m.def(name, f64, extra...);
}

}  // namespace

void bind_ops(py::module_& mod) {
    auto ops = mod.def_submodule("ops", "each op's forward and backward on numpy arrays (float32; float64 where noted)");
    def_float_double(ops, "rmsnorm_forward", &rmsnorm_fwd<float>, &rmsnorm_fwd<double>, py::arg("x"), py::arg("w"),
                     py::arg("eps"));
    def_float_double(ops, "rmsnorm_backward", &rmsnorm_bwd<float>, &rmsnorm_bwd<double>, py::arg("dy"), py::arg("x"),
                     py::arg("w"), py::arg("rstd"));
    def_float_double(ops, "attention_forward", &attention_fwd<float>, &attention_fwd<double>, py::arg("q"),
                     py::arg("k"), py::arg("v"));
    def_float_double(ops, "attention_backward", &attention_bwd<float>, &attention_bwd<double>, py::arg("dout"),
                     py::arg("out"), py::arg("lse"), py::arg("q"), py::arg("k"), py::arg("v"));
    def_float_double(ops, "moda_forward", &moda_fwd<float>, &moda_fwd<double>, py::arg("q"), py::arg("k"),
                     py::arg("v"), py::arg("kd"), py::arg("vd"), py::kw_only(), py::arg("mask") = "causal",
                     py::arg("visibility") = "own", py::arg("chunk") = 0, py::arg("window") = 0,
                     py::arg("scale") = py::none());
    def_float_double(ops, "moda_backward", &moda_bwd<float>, &moda_bwd<double>, py::arg("dout"), py::arg("out"),
                     py::arg("lse"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kd"), py::arg("vd"),
                     py::kw_only(), py::arg("mask") = "causal", py::arg("visibility") = "own", py::arg("chunk") = 0,
                     py::arg("window") = 0, py::arg("scale") = py::none());
    def_float_double(ops, "attnres_forward", &attnres_fwd<float>, &attnres_fwd<double>, py::arg("sources"),
                     py::arg("w"), py::arg("gamma"), py::arg("eps"));
    def_float_double(ops, "attnres_backward", &attnres_bwd<float>, &attnres_bwd<double>, py::arg("dout"),
                     py::arg("out"), py::arg("logit"), py::arg("rstd"), py::arg("lse"), py::arg("sources"), py::arg("w"),
                     py::arg("gamma"));
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
}

}  // namespace strata::py_bind
