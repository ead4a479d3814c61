// strata plot: PNG training curves of one or more runs, drawn by python/strata_tools/plot.py with
// matplotlib. The interpreter is `python3` from PATH, or STRATA_PYTHON.
//
// The module's source is embedded in the binary at build time (cmake/embed_text.cmake) and handed to
// the interpreter with `-c`. Locating the source tree through a compile definition would break as
// soon as the binary is copied to another machine or the tree moves; the embedded copy always
// matches the binary and works from any directory. The same file stays an ordinary module for
// Python callers (`import strata_tools.plot`).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cli/commands.h"
#include "core/error.h"
#include "strata_tools_plot_py.h"  // kPlotPy: the source of python/strata_tools/plot.py

extern char** environ;

namespace strata::cli {

namespace {

const std::string kErrorPrefix = "strata-plot-error: ";  // plot.py's ERROR_PREFIX

// Runs `python -c kPlotPy -- args...`, passing its stdout through and its stderr line by line,
// except the error line plot.py writes on a failure, which becomes the Error thrown here.
void run_plot_script(const std::string& python, const std::vector<std::string>& args) {
    std::vector<std::string> argv_s = {python, "-c", std::string(kPlotPy)};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);

    int fds[2];
    if (pipe(fds) != 0) throw Error(std::string("strata plot: cannot create a pipe: ") + std::strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    std::fflush(stdout);
    pid_t pid = 0;
    const int err = posix_spawnp(&pid, python.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (err != 0) {
        close(fds[0]);
        throw Error("strata plot runs Python: cannot start " + python + " (" + std::strerror(err) +
                    "); install python3 or point STRATA_PYTHON to an interpreter");
    }
    std::string message, pending;
    FILE* in = fdopen(fds[0], "r");
    char buf[4096];
    auto line_out = [&](const std::string& line) {
        if (line.rfind(kErrorPrefix, 0) == 0) {
            message = line.substr(kErrorPrefix.size());
            while (!message.empty() && message.back() == '\n') message.pop_back();
        } else {
            std::fputs(line.c_str(), stderr);
        }
    };
    while (std::fgets(buf, sizeof buf, in)) {
        pending += buf;
        if (!pending.empty() && pending.back() == '\n') {
            line_out(pending);
            pending.clear();
        }
    }
    if (!pending.empty()) line_out(pending + "\n");
    std::fclose(in);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
    if (!message.empty()) throw Error(message);
    const std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                              : "was killed by signal " + std::to_string(WTERMSIG(status));
    throw Error("strata plot: " + python + " " + how + " (its messages are above)");
}

}  // namespace

void add_plot_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("plot", "PNG training curves of runs (needs matplotlib)");
    struct Opts {
        std::vector<std::string> runs;
        std::string out, metrics = "loss,val_loss,lr,grad_norm,tokens_per_s";
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("run_dirs", o->runs, "run directories (each holding metrics.jsonl), overlaid in every figure")
        ->required()->expected(1, -1)->type_name("RUN_DIR");
    cmd->add_option("--out", o->out, "output directory (default: FIRST_RUN_DIR/plots)");
    cmd->add_option("--metrics", o->metrics, "comma-separated metrics, one PNG each (absent from every run: skipped)")
        ->capture_default_str();
    cmd->callback([o] {
        if (dry_run()) return;
        const char* env = std::getenv("STRATA_PYTHON");
        const std::string python = env && *env ? env : "python3";
        std::vector<std::string> args = {"--metrics", o->metrics};
        if (!o->out.empty()) args.insert(args.end(), {"--out", o->out});
        args.push_back("--");
        args.insert(args.end(), o->runs.begin(), o->runs.end());
        run_plot_script(python, args);
    });
}

}  // namespace strata::cli
