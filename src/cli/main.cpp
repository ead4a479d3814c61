// strata — train, run and inspect decoder-only Transformers.
#include "cli/commands.h"

int main(int argc, char** argv) { return strata::cli::run_main(argc, argv, /*dry_run=*/false); }
