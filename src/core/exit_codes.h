// strata's exit statuses: one table for every subcommand (docs/limits.md, "Exit codes").
#pragma once

namespace strata {

enum ExitCode : int {
    kExitOk = 0,
    kExitError = 1,        // a strata::Error: bad input, a corrupt file, a failed check; nothing changed
    kExitUsage = 2,        // the command line itself: an unknown subcommand or flag, a bad flag value
    kExitDiverged = 3,     // train.on_divergence = "stop" and the loss diverged (the last checkpoint is kept)
    kExitInterrupted = 130 // SIGINT: a checkpoint was saved (a second SIGINT exits at once, also 130)
};

}  // namespace strata
