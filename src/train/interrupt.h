// SIGINT during training: the first interrupt asks for a checkpoint and a clean exit (the loop polls
// requested()), a second one exits at once; the checkpoint on disk is whole either way, since every
// write is atomic.
#pragma once
#include <signal.h>

#include <atomic>

namespace strata {

class InterruptScope {
public:
    InterruptScope();   // installs the handler and clears the count
    ~InterruptScope();  // restores the previous handler
    InterruptScope(const InterruptScope&) = delete;
    InterruptScope& operator=(const InterruptScope&) = delete;

    static bool requested();
    static const std::atomic<int>* flag();  // non-zero once an interrupt arrived (for eval_loop)

private:
    struct sigaction old_ {};
};

}  // namespace strata
