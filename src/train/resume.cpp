#include "train/resume.h"

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "train/faults.h"

namespace strata {

RunStart start_run(const RunConfig& rc, const PreparedCorpus& pc, Device device) {
    const TrainConfig& t = rc.train;
    RunStart rs;
    const std::string ckpt = checkpoint_path(t.out_dir);
    if (!(t.resume && std::filesystem::exists(ckpt))) {
        rs.model = std::make_unique<Model<float>>(rc.model, device);
        rs.opt = std::make_unique<AdamW<float>>(*rs.model, AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay});
        return rs;
    }
    LoadedCheckpoint lc = load_checkpoint(ckpt, false, device);
    if (lc.rc.model.to_json() != rc.model.to_json())
        throw Error("checkpoint " + ckpt +
                    " was made with a different model config; choose another train.out_dir or set "
                    "train.resume=false to start over");
    if (lc.tok->to_bytes() != pc.tok.to_bytes())
        throw Error("checkpoint " + ckpt + " was trained with a different tokenizer than " + t.data_dir +
                    "/tokenizer.model");
    rs.model = std::move(lc.model);
    STRATA_CHECK(&rs.model->backend() == &backend_for(device), "the checkpoint's model is on another backend");
    rs.opt = std::move(lc.opt);
    rs.opt->cfg = AdamWConfig{t.beta1, t.beta2, t.eps, t.weight_decay};
    rs.st = lc.st;
    // A loadable file can still hold a state no run could have written: refuse to train from it.
    if (rs.st.step < 0 || rs.opt->step < 0 || rs.opt->step > rs.st.step)
        throw Error("checkpoint " + ckpt + " has inconsistent step counters (step " + std::to_string(rs.st.step) +
                    ", adamw_step " + std::to_string(rs.opt->step) + ")");
    for (const Buffer* buf : {&rs.model->params(), &rs.opt->m, &rs.opt->v}) {
        std::string bad = first_nonfinite(*rs.model, *buf);
        if (!bad.empty())
            throw Error("checkpoint " + ckpt + " holds non-finite values in the " +
                        (buf == &rs.model->params() ? "weights" : "AdamW moments") + " of " + bad +
                        "; it cannot be trained from");
    }
    rs.saved_step = rs.st.step;
    rs.resumed = true;
    std::fprintf(stderr, "resuming from %s at step %ld\n", ckpt.c_str(), rs.st.step);
    return rs;
}

}  // namespace strata
