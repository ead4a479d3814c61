// The config loader: RunConfig::from_json, ModelConfig::from_json and apply_overrides (--set).
//
// Input: JSON text, optionally followed by a NUL byte and newline-separated "section.key=value"
// overrides. The JSON (an empty object when it is empty or does not parse) goes through both
// from_json functions, then through apply_overrides and RunConfig::from_json again, as
// load_run_config does. A config that loads must dump as JSON (save_checkpoint writes it into the
// checkpoint) and survive to_json() -> from_json() unchanged.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "model/config.h"
#include "train/run_config.h"

using nlohmann::json;
using namespace strata;
using strata::fuzz::expect_ok_or_error;

namespace {

void check_run_config(const json& j) {
    RunConfig rc;
    if (!expect_ok_or_error([&] { rc = RunConfig::from_json(j, "fuzz"); })) return;
    const json once = rc.to_json();
    try {
        (void)once.dump();  // as save_checkpoint does: a config that loads must be writable
    } catch (const json::exception& e) {
        FUZZ_CHECK(false, std::string("a config that loads cannot be saved as JSON: ") + e.what());
    }
    RunConfig again;
    std::string err;
    FUZZ_CHECK(expect_ok_or_error([&] { again = RunConfig::from_json(once, "fuzz (round trip)"); }, &err),
               "a loaded config does not load again from its own to_json(): " + err);
    FUZZ_CHECK(again.to_json() == once, "to_json() -> from_json() changed the config: " + once.dump());
}

void check_model_config(const json& j) {
    ModelConfig mc;
    if (!expect_ok_or_error([&] { mc = ModelConfig::from_json(j, "fuzz"); })) return;
    const json once = mc.to_json();
    ModelConfig again;
    std::string err;
    FUZZ_CHECK(expect_ok_or_error([&] { again = ModelConfig::from_json(once, "fuzz (round trip)"); }, &err),
               "a loaded model config does not load again from its own to_json(): " + err);
    FUZZ_CHECK(again.to_json() == once, "to_json() -> from_json() changed the model config: " + once.dump());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string input(reinterpret_cast<const char*>(data), size);
    const size_t nul = input.find('\0');
    const std::string text = input.substr(0, nul);

    json j = json::object();
    if (!text.empty()) {
        try {
            j = json::parse(text);
        } catch (const json::exception&) {  // parse_error, or out_of_range for a huge number
            j = json::object();  // load_run_config reports this itself; go on with the overrides
        }
    }
    check_run_config(j);
    check_model_config(j);
    if (j.is_object() && j.contains("model")) check_model_config(j["model"]);

    if (nul == std::string::npos) return 0;
    std::vector<std::string> overrides;
    for (size_t start = nul + 1; start <= input.size();) {
        size_t end = input.find('\n', start);
        if (end == std::string::npos) end = input.size();
        overrides.push_back(input.substr(start, end - start));
        start = end + 1;
    }
    if (expect_ok_or_error([&] { apply_overrides(j, overrides); })) check_run_config(j);
    return 0;
}
