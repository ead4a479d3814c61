// A long-running child process spoken to by lines: the bench writes commands to its stdin and reads
// JSON lines from its stdout (its stderr is the bench's). Used for the strata and PyTorch
// configurations of `strata bench train`, which stay alive across interleaved repetitions.
#pragma once
#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace strata::bench {

class ChildProcess {
public:
    ChildProcess() = default;
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;
    ~ChildProcess();  // kills a child still running and reaps it

    // fork + exec of argv[0] (looked up in PATH when it has no '/'), with `env` added to this
    // process's environment. False (and *why) when the pipes or the fork fail; an exec that fails
    // shows up as the child exiting with status 127.
    bool start(const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& env,
               std::string* why);
    bool running() const { return pid_ > 0; }

    // Writes one line (a newline is added). False when the child is gone.
    bool send(const std::string& line);

    // The next line that starts with '{', skipping others; nullopt on end of output or after
    // timeout_s seconds without one, with *why saying which.
    std::optional<std::string> read_json_line(double timeout_s, std::string* why);

    // Closes its stdin and waits up to timeout_s for it to exit, then kills it. Returns a description
    // of how it ended ("exited with status N", "killed by signal N").
    std::string finish(double timeout_s);
    // Kills it at once and reaps it.
    void kill_now();

private:
    pid_t pid_ = -1;
    int to_child_ = -1, from_child_ = -1;
    std::string buf_;
    bool eof_ = false;
    std::string exit_text_;
};

// How a wait() status reads: "exited with status N" or "killed by signal N".
std::string wait_status_text(int status);

}  // namespace strata::bench
