// A residual rule: how each sublayer's input is formed from what came before, and what becomes of its
// output (docs/residual.md). The model runs one sublayer loop for every rule,
//
//   forward:   begin(skip); for j: f_j(input(j)) → output(j, f_j); finish()
//   backward:  finish_backward(dlnf); for j from the last: output_grad(j, f_j) is the gradient w.r.t.
//              f_j's output; f_j's backward reads input_again(j) and writes input_grad(j); then
//              input_backward(j); the embedding's gradient is embedding_grad()
//
// and the rule's state between sublayers (its activations) is one object, the rule itself: a later
// sublayer reads nothing of the rule's that is not in it. Sublayers are j = 0 .. 2L−1: the attention
// of layer l is 2l, its MLP 2l+1. Each rule is one file in this folder:
//   stream.cpp             standard (pre, post, reordered norms); with rezero.cpp and
//                          layernorm_scaling.cpp, the two variants of its pre-norm stream
//   attn_res.cpp           attnres_full and attnres_block
//   denseformer.cpp        denseformer
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"
#include "model/plan.h"
#include "model/spec.h"
#include "ops/ops.h"

namespace strata {

// ---- the config side: a rule's parameters and what it allows (rule.cpp dispatches on the rule) ----
// Adds one parameter (name, shape, sublayer or −1, init); a normal init uses the model's init_std.
using ParamAdd = std::function<void(const std::string& name, std::vector<long> shape, int sublayer, ParamSpec::Init)>;
// The rule's parameters of layer l, added after the layer's own.
void residual_layer_params(const ModelConfig& c, int l, const ParamAdd& add);
// The rule's parameters that belong to no layer, added after the layers and before the final norm.
void residual_model_params(const ModelConfig& c, const ParamAdd& add);
// How many elements those parameters hold in all.
double residual_num_params(const ModelConfig& c);
// Whether wo and w_down get GPT-2's depth-scaled init (init_std / √(2L)).
bool residual_scaled_init(const ModelConfig& c);
// Throws Error naming `origin` when the rule does not allow the config's norm placement.
void residual_validate(const ModelConfig& c, const std::string& origin);

// The parameters a rule reads, found by name once (bind), and their gradients.
template <typename T>
struct ParamView {
    const std::vector<ParamSpec>* specs = nullptr;
    T* base = nullptr;   // the parameter buffer
    T* grads = nullptr;  // the gradient buffer, same layout
    T* operator()(const std::string& name) const {
        for (const ParamSpec& s : *specs)
            if (s.name == name) return base + s.offset;
        throw Error("no parameter named \"" + name + "\"");
    }
    T* grad(const T* p) const { return grads + (p - base); }
};

// What a rule reads and writes outside its own state: set by the model after each layout.
template <typename T, typename A>
struct RuleIO {
    long N = 0;                // rows of the forward
    const T* x0 = nullptr;     // (N, D) the embeddings
    A* lnf = nullptr;          // (N, D) the final norm's output, the head's input: the rule writes it
    T* lnf_rstd = nullptr;     // (N)
};

// T: the master type (the stream, statistics, gradients); A: the activations' type (f's input and
// output: T, or bf16 under mixed precision).
template <typename T, typename A>
class ResidualRule {
public:
    explicit ResidualRule(const ModelConfig& c) : cfg(c) {}
    virtual ~ResidualRule() = default;
    ResidualRule(const ResidualRule&) = delete;
    ResidualRule& operator=(const ResidualRule&) = delete;

    const ModelConfig cfg;
    RuleIO<T, A> io;

    // The norm weights and the rule's own parameters, once, when the model is built.
    virtual void bind(const ParamView<T>& params) = 0;
    // Whether the backward reads f_j's output (then each sublayer keeps its own output buffer).
    virtual bool backward_reads_outputs() const { return false; }
    // The state's tensors for N rows (the forward's activations), added to the model's plan; and,
    // training, the backward's scratch, added where the plan's backward overlay is open.
    virtual void describe(TensorPlan& plan, long N, bool training) = 0;
    virtual void describe_backward(TensorPlan& plan, long N) = 0;
    // After the plan is carved: aliases between the rule's pointers.
    virtual void carved() {}

    // ---- forward ----
    // skipped: empty, or one flag per sublayer; a flagged sublayer's output is zero (a diagnostic; the
    // model zeroes it, the rule may also drop what that leaves empty).
    virtual void begin(const std::vector<char>& skipped) { skipped_ = skipped; }
    virtual const A* input(int j) = 0;               // f_j's input
    virtual void output(int j, const A* f) = 0;      // f_j's output, (N, D)
    virtual void finish() = 0;                       // the head's input: io.lnf, io.lnf_rstd

    // ---- backward (after a forward with targets) ----
    virtual void finish_backward(const T* dlnf) = 0;           // dlnf: the gradient w.r.t. io.lnf
    virtual const T* output_grad(int j, const A* f) = 0;       // the gradient w.r.t. f_j's output
    virtual const A* input_again(int j) = 0;                   // f_j's input, recomputed where it is shared
    virtual T* input_grad(int j, Into* into) = 0;              // where f_j's backward puts its input gradient
    virtual void input_backward(int j) = 0;                    // that gradient, into the rule's state
    virtual const T* embedding_grad() const = 0;               // the gradient w.r.t. io.x0, after j = 0
    // The sublayer whose input_backward completes the gradients of sublayer j's rule parameters: j
    // itself, or an earlier one where the rule gathers them later (two-phase Block AttnRes: its block's
    // first sublayer). The model reports a layer's gradients final (layer_done) only after that.
    virtual int grads_final_at(int j) const { return j; }

    // ---- diagnostics: adds the last forward's input, state and final mean squares (and AttnRes's
    // depth weights) to s, sized for 2L sublayers by the model ----
    virtual void depth_stats(DepthStats& s) const = 0;
    // What sublayer j normalises and reads (the stream before it; AttnRes: its depth mix; DenseFormer:
    // the averaged state), and the final norm's input: valid from input(j) on, and after the forward
    // while the model keeps every sublayer's output. They define the input RMS and a block's input.
    virtual const T* input_state(int j) const = 0;
    virtual const T* final_input() const = 0;

protected:
    std::vector<char> skipped_;  // empty: nothing skipped
    bool skipped(long j) const { return !skipped_.empty() && skipped_[size_t(j)]; }
    long D() const { return cfg.d_model; }
    long ND() const { return io.N * cfg.d_model; }
    // The norm weight in front of sublayer j.
    static std::string norm_name(int j) {
        return "blocks." + std::to_string(j / 2) + (j % 2 == 0 ? ".attn_norm" : ".mlp_norm");
    }
};

// The rule the config names.
template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_residual_rule(const ModelConfig& c);

// Each rule's factory and config hooks, in its own file.
template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_standard_rule(const ModelConfig& c);
template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_rezero_rule(const ModelConfig& c);
template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_layernorm_scaling_rule(const ModelConfig& c);
template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_attnres_rule(const ModelConfig& c);
template <typename T, typename A>
std::unique_ptr<ResidualRule<T, A>> make_denseformer_rule(const ModelConfig& c);
void rezero_layer_params(const ModelConfig& c, int l, const ParamAdd& add);
void attnres_layer_params(const ModelConfig& c, int l, const ParamAdd& add);
void attnres_model_params(const ModelConfig& c, const ParamAdd& add);
void denseformer_layer_params(const ModelConfig& c, int l, const ParamAdd& add);

// The (T, A) pairs the engine runs: fp32, bf16 activations on fp32 masters, and fp64 for the tests.
#define STRATA_RULE_TYPES(X) X(float, float) X(float, bf16) X(double, double)

}  // namespace strata
