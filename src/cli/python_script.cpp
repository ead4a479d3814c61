#include "cli/python_script.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

extern char** environ;

namespace strata::cli {

std::string python_interpreter() {
    const char* env = std::getenv("STRATA_PYTHON");
    return env && *env ? env : "python3";
}

void run_python_script(const std::string& command, const std::string& python, std::string_view source,
                       const std::string& error_prefix, const std::vector<std::string>& args) {
    std::vector<std::string> argv_s = {python, "-c", std::string(source)};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);

    int fds[2];
    if (pipe(fds) != 0) throw Error(command + ": cannot create a pipe: " + std::strerror(errno));
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
        throw Error(command + " runs Python: cannot start " + python + " (" + std::strerror(err) +
                    "); install python3 or point STRATA_PYTHON to an interpreter");
    }
    std::string message, pending;
    FILE* in = fdopen(fds[0], "r");
    char buf[4096];
    auto line_out = [&](const std::string& line) {
        if (line.rfind(error_prefix, 0) == 0) {
            message = line.substr(error_prefix.size());
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
    throw Error(command + ": " + python + " " + how + " (its messages are above)");
}


}  // namespace strata::cli
