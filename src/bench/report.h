// The report of `strata bench train`: one TrainBenchResult as Markdown and as JSON, the same content.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "bench/train_bench.h"

namespace strata::bench {

std::string to_markdown(const TrainBenchResult& r);
nlohmann::json to_json(const TrainBenchResult& r);

}  // namespace strata::bench
