// Greedy decoding with llama.cpp's C API, for bench/llama_cpp.py's check that a GGUF export decodes
// the ids strata decodes. Built by bench/llama_cpp.sh against the llama.cpp it builds.
//
//   llama_greedy MODEL.gguf N_NEW THREADS ID...
//
// The prompt is the given token ids (no tokenizer involved); prints one JSON line: the N_NEW ids
// chosen by argmax and the logits at the prompt's last position.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama.h"

static int fail(const char* what) {
    std::fprintf(stderr, "llama_greedy: %s\n", what);
    return 1;
}

int main(int argc, char** argv) {
    if (argc < 5) return fail("usage: llama_greedy MODEL.gguf N_NEW THREADS ID...");
    const char* path = argv[1];
    const int n_new = std::atoi(argv[2]), threads = std::atoi(argv[3]);
    std::vector<llama_token> prompt;
    for (int i = 4; i < argc; i++) prompt.push_back(llama_token(std::atoi(argv[i])));

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model* model = llama_model_load_from_file(path, mp);
    if (!model) return fail("cannot load the model");
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = uint32_t(prompt.size() + n_new + 1);
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context* ctx = llama_init_from_model(model, cp);
    if (!ctx) return fail("cannot create a context");
    const int V = llama_vocab_n_tokens(llama_model_get_vocab(model));

    std::vector<llama_token> ids;
    std::vector<float> first;
    llama_batch batch = llama_batch_get_one(prompt.data(), int32_t(prompt.size()));
    llama_token tok = 0;
    for (int i = 0; i < n_new; i++) {
        if (llama_decode(ctx, batch) != 0) return fail("llama_decode failed");
        const float* logits = llama_get_logits_ith(ctx, -1);
        if (i == 0) first.assign(logits, logits + V);
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        tok = llama_token(best);
        ids.push_back(tok);
        batch = llama_batch_get_one(&tok, 1);
    }
    std::string out = "{\"ids\": [";
    for (size_t i = 0; i < ids.size(); i++) out += (i ? ", " : "") + std::to_string(ids[i]);
    out += "], \"first_logits\": [";
    char buf[32];
    for (size_t i = 0; i < first.size(); i++) {
        std::snprintf(buf, sizeof buf, "%s%.9g", i ? ", " : "", first[i]);
        out += buf;
    }
    std::printf("%s]}\n", out.c_str());
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
