// strata config: show the run configuration that `strata train` would use with the same -c and --set
// (every key of both sections, after the defaults, the file and the overrides; docs/config.md).
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "train/run_config.h"

namespace strata::cli {

void add_config_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("config", "print the resolved run config (what `strata train` would use)");
    auto config = std::make_shared<std::string>();
    auto sets = std::make_shared<std::vector<std::string>>();
    auto print = std::make_shared<bool>(false);
    cmd->add_flag("--print", *print, "print the config as JSON: the defaults, then the -c file, then the --set overrides")
        ->required();
    cmd->add_option("-c,--config", *config, "JSON config file with \"model\" and \"train\" sections (as for train)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--set", *sets, "override a config value, e.g. --set train.steps=100 (repeatable)");
    cmd->callback([config, sets, print] {
        if (dry_run()) return;
        const RunConfig rc = load_run_config(*config, *sets);
        std::cout << rc.to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
    });
}

}  // namespace strata::cli
