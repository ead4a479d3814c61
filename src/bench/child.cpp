#include "bench/child.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace strata::bench {

namespace {
void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}
}  // namespace

std::string wait_status_text(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "ended with wait status " + std::to_string(status);
}

ChildProcess::~ChildProcess() { kill_now(); }

bool ChildProcess::start(const std::vector<std::string>& argv,
                         const std::vector<std::pair<std::string, std::string>>& env, std::string* why) {
    int in[2], out[2];  // in: we write, the child reads; out: the child writes, we read
    if (::pipe2(in, O_CLOEXEC) != 0) {
        *why = std::string("pipe: ") + std::strerror(errno);
        return false;
    }
    if (::pipe2(out, O_CLOEXEC) != 0) {
        *why = std::string("pipe: ") + std::strerror(errno);
        ::close(in[0]);
        ::close(in[1]);
        return false;
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        *why = std::string("fork: ") + std::strerror(errno);
        for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
        return false;
    }
    if (pid == 0) {
        // The child: only async-signal-safe calls until exec (setenv is safe enough here: the
        // parent's other threads hold no environment lock while it waits on the child's pipes).
        ::dup2(in[0], 0);
        ::dup2(out[1], 1);
        ::signal(SIGPIPE, SIG_DFL);
        for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
        ::execvp(args[0], args.data());
        const char msg[] = "strata bench: exec failed\n";
        ssize_t ignored = ::write(2, msg, sizeof msg - 1);
        (void)ignored;
        ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    pid_ = pid;
    to_child_ = in[1];
    from_child_ = out[0];
    buf_.clear();
    eof_ = false;
    exit_text_.clear();
    return true;
}

bool ChildProcess::send(const std::string& line) {
    if (to_child_ < 0) return false;
    const std::string s = line + "\n";
    size_t done = 0;
    while (done < s.size()) {
        const ssize_t n = ::write(to_child_, s.data() + done, s.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;  // EPIPE: SIGPIPE is ignored while the bench runs its children
        done += size_t(n);
    }
    return true;
}

std::optional<std::string> ChildProcess::read_json_line(double timeout_s, std::string* why) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    for (;;) {
        for (size_t nl; (nl = buf_.find('\n')) != std::string::npos;) {
            std::string line = buf_.substr(0, nl);
            buf_.erase(0, nl + 1);
            if (!line.empty() && line[0] == '{') return line;
        }
        if (eof_ || from_child_ < 0) {
            *why = "its output ended";
            return std::nullopt;
        }
        const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
        if (left <= 0) {
            *why = "no answer within " + std::to_string(long(timeout_s)) + " s";
            return std::nullopt;
        }
        pollfd p{from_child_, POLLIN, 0};
        const int r = ::poll(&p, 1, int(std::min(left, 3600.0) * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;  // the deadline check above ends it
        char chunk[4096];
        const ssize_t n = ::read(from_child_, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) eof_ = true;
        else buf_.append(chunk, size_t(n));
    }
}

std::string ChildProcess::finish(double timeout_s) {
    if (pid_ <= 0) return exit_text_;
    close_fd(to_child_);
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_) break;
        if (r < 0 && errno != EINTR) {
            status = -1;
            break;
        }
        if (std::chrono::duration<double>(Clock::now() - t0).count() > timeout_s) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
            break;
        }
        ::usleep(20000);
    }
    pid_ = -1;
    close_fd(from_child_);
    exit_text_ = status == -1 ? std::string("could not be waited for") : wait_status_text(status);
    return exit_text_;
}

void ChildProcess::kill_now() {
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        exit_text_ = wait_status_text(status);
        pid_ = -1;
    }
    close_fd(to_child_);
    close_fd(from_child_);
}

}  // namespace strata::bench
