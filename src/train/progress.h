// Progress reporting: a one-line live bar on a terminal, plain log lines otherwise.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace strata {

class Progress {
public:
    Progress(long total, long start, long log_every)
        : total_(total), start_(start), log_every_(log_every), tty_(isatty(STDERR_FILENO) == 1),
          t0_(std::chrono::steady_clock::now()) {}

    void update(long step, double loss, double lr, double tok_per_s) {
        const long done = step + 1;
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
        const double per_step = elapsed / double(std::max(1L, done - start_));
        const double eta = per_step * double(total_ - done);
        if (tty_) {
            const int width = 24;
            int filled = int(double(width) * double(done) / double(total_));
            std::string bar(filled, '#');
            bar += std::string(width - filled, '-');
            std::fprintf(stderr, "\r[%s] %ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s   ", bar.c_str(), done,
                         total_, loss, lr, tok_per_s, fmt_time(eta).c_str());
            if (done == total_) std::fprintf(stderr, "\n");
            std::fflush(stderr);
        } else if (done % log_every_ == 0 || done == total_ || done == start_ + 1) {
            std::fprintf(stderr, "step %ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s\n", done, total_, loss, lr,
                         tok_per_s, fmt_time(eta).c_str());
        }
    }
    // A message that must not be overwritten by the bar.
    void note(const std::string& msg) {
        if (tty_) std::fprintf(stderr, "\r%-100s\r", "");
        std::fprintf(stderr, "%s\n", msg.c_str());
    }

    static std::string fmt_time(double s) {
        char buf[32];
        long t = long(s + 0.5);
        if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
        else std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
        return buf;
    }

private:
    long total_, start_, log_every_;
    bool tty_;
    std::chrono::steady_clock::time_point t0_;
};

}  // namespace strata
