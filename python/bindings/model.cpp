// strata.Model (a model built from a config, or loaded from a checkpoint with its tokenizer),
// strata.Tokenizer and the generation iterator. Model.forward/backward/adamw_step/get_grad serve the
// parity tests against the PyTorch reference; logits, loss, params and generate are the user's API.
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <optional>

#include "common.h"
#include "infer/generate.h"
#include "infer/text_stream.h"
#include "interop/hf.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/tokenizer.h"

namespace strata::py_bind {

namespace {

struct PyModel {
    std::unique_ptr<Model<float>> m;
    std::unique_ptr<AdamW<float>> opt;
    std::optional<Tokenizer> tok;  // a loaded checkpoint's
    nlohmann::json run_config;     // a loaded checkpoint's run config (null otherwise)
    std::string origin;            // the checkpoint's path ("" for a model built from a config)
    // Held while the engine runs with the GIL released, so two Python threads never run one model at once.
    std::mutex busy;

    explicit PyModel(const py::dict& cfg) {
        m = std::make_unique<Model<float>>(ModelConfig::from_json(to_json(cfg), "config"));
    }
    PyModel(LoadedCheckpoint lc, const std::string& path) : m(std::move(lc.model)), origin(path) {
        if (lc.tok) tok.emplace(*lc.tok);
        run_config = lc.rc.to_json();
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
    py::dict params() const {
        py::dict d;
        for (const ParamSpec& s : m->specs) d[py::str(s.name)] = get_param(s.name);
        return d;
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
    // tokens (and targets) as (B, T); `one` is set for a 1-D (T,) input.
    std::pair<long, long> batch_of(Shapes& sh, const I32& tokens, const I32* targets, bool& one) {
        one = tokens.ndim() == 1;
        if (one) {
            sh(tokens, "tokens", {"T"});
            if (targets) sh(*targets, "targets", {"T"});
        } else {
            sh(tokens, "tokens", {"B", "T"});
            if (targets) sh(*targets, "targets", {"B", "T"});
        }
        const long B = one ? 1 : sh["B"], T = sh["T"];
        sh.require(B >= 1 && T >= 1, "tokens must hold at least one token");
        sh.require(T <= m->cfg.max_seq_len, "tokens hold " + std::to_string(T) + " positions, more than the model's " +
                                                 "max_seq_len " + std::to_string(m->cfg.max_seq_len));
        const long V = m->cfg.vocab_size;
        check_tokens(tokens, V, sh.op(), "tokens");
        if (targets)
            for (long i = 0; i < long(targets->size()); i++)
                sh.require(targets->data()[i] < V, "targets[" + std::to_string(i) + "] = " +
                                                       std::to_string(targets->data()[i]) + " is not below V = " +
                                                       std::to_string(V) + " (negative targets are ignored)");
        return {B, T};
    }
    F32 logits(I32 tokens) {
        Shapes sh("Model.logits");
        bool one = false;
        const auto [B, T] = batch_of(sh, tokens, nullptr, one);
        const long V = m->cfg.vocab_size;
        F32 out = one ? make({T, V}) : make({B, T, V});
        {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lock(busy);
            m->forward(tokens.data(), nullptr, B, T);
            m->logits_to_host(out.mutable_data(), 0, B * T);
        }
        return out;
    }
    double loss(I32 tokens, I32 targets) {
        Shapes sh("Model.loss");
        bool one = false;
        const auto [B, T] = batch_of(sh, tokens, &targets, one);
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(busy);
        return m->forward(tokens.data(), targets.data(), B, T);
    }
    // The parity tests' forward: the logits and, with targets, the loss (kept for backward).
    py::tuple forward(I32 tokens, std::optional<I32> targets) {
        Shapes sh("Model.forward");
        bool one = false;
        const auto [B, T] = batch_of(sh, tokens, targets ? &*targets : nullptr, one);
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

// model.generate(..., stream=True): the continuation's text, piece by piece. The prompt starts with
// the end-of-text token, as the CLI's does (documents are separated by it in training), and
// generation ends at the next one, at a stop string, or after max_tokens.
struct PyGeneration {
    PyModel& owner;  // kept alive by the iterator (py::keep_alive)
    Generator gen;
    TextStream text;
    int32_t eos;
    std::vector<int32_t> tokens;  // generated so far
    bool done = false;

    PyGeneration(PyModel& o, std::vector<int32_t> prompt, const SampleOptions& so, std::vector<std::string> stops)
        : owner(o), gen(*o.m, prompt, so), text(*o.tok, std::move(stops), std::vector<int32_t>(prompt.begin() + 1, prompt.end())),
          eos(o.tok->eos_id()) {}

    std::string next() {
        while (!done) {
            std::optional<int32_t> t;
            std::string piece;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(owner.busy);
                t = gen.next();
                if (t) tokens.push_back(*t);
                if (!t || *t == eos) {
                    done = true;
                    piece = text.finish();
                } else {
                    piece = text.push(*t);
                    done = text.stopped();
                }
            }
            if (!piece.empty()) return piece;
        }
        throw py::stop_iteration();
    }
};

}  // namespace

void bind_model(py::module_& mod) {
    py::class_<Tokenizer>(mod, "Tokenizer",
                          "a SentencePiece BPE tokenizer: strata.Tokenizer(path) loads a tokenizer.model file; "
                          "decode(encode(s)) == s for every string")
        .def(py::init([](const std::string& path) { return Tokenizer::load(path); }), py::arg("path"))
        .def("encode", [](const Tokenizer& t, const std::string& text) { return t.encode(text); }, py::arg("text"),
             "the token ids of a string (no BOS/EOS added)")
        .def(
            "decode",
            [](const Tokenizer& t, const std::vector<int32_t>& ids) { return py::bytes(t.decode(ids)).attr("decode")("utf-8", "replace"); },
            py::arg("ids"), "the text of token ids (control ids decode to nothing)")
        .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
        .def_property_readonly("bos_id", &Tokenizer::bos_id)
        .def_property_readonly("eos_id", &Tokenizer::eos_id)
        .def_property_readonly("unk_id", &Tokenizer::unk_id)
        .def("__len__", &Tokenizer::vocab_size)
        .def("__repr__", [](const Tokenizer& t) {
            return "<strata.Tokenizer vocab_size=" + std::to_string(t.vocab_size()) + " from " + t.origin() + ">";
        });

    py::class_<PyGeneration>(mod, "Generation", "an iterator over the text pieces of one generation")
        .def("__iter__", [](PyGeneration& g) -> PyGeneration& { return g; })
        .def("__next__", &PyGeneration::next)
        .def_property_readonly("tokens", [](const PyGeneration& g) { return g.tokens; },
                               "the ids generated so far (the end-of-text token included when it came)")
        .def_property_readonly("text", [](const PyGeneration& g) { return g.text.text(); },
                               "the continuation's complete characters so far");

    py::class_<PyModel>(mod, "Model")
        .def(py::init<const py::dict&>(), py::arg("config"),
             "a freshly initialised model from a model config dict (the \"model\" section of a run config)")
        .def("param_names", &PyModel::param_names)
        .def("get_param", &PyModel::get_param)
        .def("set_param", &PyModel::set_param)
        .def("get_grad", &PyModel::get_grad)
        .def("params", &PyModel::params, "every parameter, by name, as a float32 numpy copy")
        .def("logits", &PyModel::logits, py::arg("tokens"),
             "logits (T, V) of int tokens (T,), or (B, T, V) of (B, T); a full forward, no cache")
        .def("loss", &PyModel::loss, py::arg("tokens"), py::arg("targets"),
             "the mean cross-entropy of targets (same shape as tokens; negative targets are ignored)")
        .def("forward", &PyModel::forward, py::arg("tokens"), py::arg("targets") = py::none())
        .def("backward", &PyModel::backward)
        .def("adamw_step", &PyModel::adamw_step, py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.95,
             py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.1)
        .def(
            "_generation",
            [](PyModel& p, const std::string& prompt, long max_tokens, double temperature, int top_k, double top_p,
               uint64_t seed, std::vector<std::string> stops) {
                if (!p.tok) throw Error("generate: this model has no tokenizer (load one with strata.load)");
                for (const std::string& s : stops)
                    if (s.empty()) throw Error("generate: a stop string must not be empty");
                std::vector<int32_t> ids = p.tok->encode(prompt);
                ids.insert(ids.begin(), p.tok->eos_id());
                SampleOptions so;
                so.max_tokens = max_tokens;
                so.temperature = temperature;
                so.top_k = top_k;
                so.top_p = top_p;
                so.seed = seed;
                so.stop_token = p.tok->eos_id();
                return std::make_unique<PyGeneration>(p, std::move(ids), so, std::move(stops));
            },
            py::keep_alive<0, 1>(), py::arg("prompt"), py::arg("max_tokens"), py::arg("temperature"), py::arg("top_k"),
            py::arg("top_p"), py::arg("seed"), py::arg("stop"))
        .def_property_readonly(
            "tokenizer", [](const PyModel& p) -> py::object { return p.tok ? py::cast(*p.tok) : py::none(); },
            "the checkpoint's tokenizer (None for a model built from a config)")
        .def_property_readonly("config", [](const PyModel& p) { return from_json(p.m->cfg.to_json()); },
                               "the model config, as a dict")
        .def_property_readonly("run_config", [](const PyModel& p) { return from_json(p.run_config); },
                               "a loaded checkpoint's whole run config (None otherwise)")
        .def_property_readonly("path", [](const PyModel& p) { return p.origin; })
        .def_property(
            "skip_sublayers", [](const PyModel& p) { return p.m->skip_sublayers; },
            [](PyModel& p, const std::vector<int>& js) {
                for (int j : js)
                    if (j < 0 || j >= 2 * p.m->cfg.n_layers)
                        throw Error("skip_sublayers: " + std::to_string(j) + " is not a sublayer index (0 .. " +
                                    std::to_string(2 * p.m->cfg.n_layers - 1) + ")");
                p.m->skip_sublayers = js;
            },
            "diagnostics: the sublayers whose outputs are zeroed (2l: attention of layer l, 2l+1: its MLP); "
            "forward only")
        .def_property(
            "skip_sublayer",
            [](const PyModel& p) {
                if (p.m->skip_sublayers.size() > 1) throw Error("skip_sublayer: several are skipped; read skip_sublayers");
                return p.m->skip_sublayers.empty() ? -1 : p.m->skip_sublayers[0];
            },
            [](PyModel& p, int j) {
                if (j < -1 || j >= 2 * p.m->cfg.n_layers) throw Error("skip_sublayer must be -1 or a sublayer index");
                p.m->skip_sublayers = j < 0 ? std::vector<int>{} : std::vector<int>{j};
            },
            "diagnostics: the one sublayer whose output is zeroed (-1: none), as skip_sublayers = [j]")
        .def_property(
            "precision", [](const PyModel& p) { return std::string(to_string(p.m->precision())); },
            [](PyModel& p, const std::string& s) { p.m->set_precision(parse_precision(s, "precision")); },
            "\"fp32\" or \"bf16\" (mixed precision: bf16 activations and GEMM inputs, float master weights "
            "and gradients)")
        .def_property_readonly("num_params", [](const PyModel& p) { return p.m->num_params(); })
        .def("__repr__", [](const PyModel& p) {
            return "<strata.Model " + std::to_string(p.m->num_params()) + " parameters" +
                   (p.origin.empty() ? std::string() : " from " + p.origin) + ">";
        });

    mod.def(
        "_load",
        [](const std::string& path, const std::string& precision) {
            const Precision prec = parse_precision(precision, "precision");
            std::unique_ptr<PyModel> p;
            {
                py::gil_scoped_release nogil;
                // a Hugging Face folder may come without a tokenizer: the model alone then
                p = std::make_unique<PyModel>(is_hf_folder(path) ? import_hf(path) : load_checkpoint(path, true), path);
            }
            p->m->set_precision(prec);
            return p;
        },
        py::arg("path"), py::arg("precision") = "fp32");
}

}  // namespace strata::py_bind
