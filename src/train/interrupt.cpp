#include "train/interrupt.h"

#include <unistd.h>

#include <cstdlib>

#include "core/exit_codes.h"

namespace strata {

static std::atomic<int> g_sigint{0};

static void on_sigint(int) {
    // Only async-signal-safe calls here: write(2) and _Exit.
    if (g_sigint.fetch_add(1) >= 1) {
        static const char bye[] = "\nstrata: second interrupt: exiting now; the last complete checkpoint is kept\n";
        ssize_t r = ::write(STDERR_FILENO, bye, sizeof bye - 1);
        (void)r;
        std::_Exit(kExitInterrupted);
    }
    static const char msg[] =
        "\nstrata: interrupt: finishing the current step, then saving a checkpoint (interrupt again to quit at once)\n";
    ssize_t r = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)r;
}

InterruptScope::InterruptScope() {
    g_sigint = 0;
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_);
}

InterruptScope::~InterruptScope() { ::sigaction(SIGINT, &old_, nullptr); }

bool InterruptScope::requested() { return g_sigint.load() > 0; }
const std::atomic<int>* InterruptScope::flag() { return &g_sigint; }

}  // namespace strata
