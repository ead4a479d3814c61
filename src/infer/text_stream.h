// Text of a growing token sequence, piece by piece, for streaming generation (the CLI's generate and
// the Python package's model.generate(stream=True)). Decoding the whole sequence each time (the
// prompt included, so word boundaries come out right) and handing out only the new suffix keeps
// multi-token characters (byte fallback) intact: a trailing incomplete character decodes to U+FFFD
// and is held back until it completes. With stop strings, text that could be the start of one is
// held back too; once the continuation contains one, push() hands out the text before it and
// reports the stop.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/tokenizer.h"

namespace strata {

class TextStream {
public:
    // `prompt`: the prompt's ids without the leading end-of-text token.
    TextStream(const Tokenizer& tok, std::vector<std::string> stops, std::vector<int32_t> prompt);

    // Adds a token; returns the text that became final ("" if none). Sets stopped() once the
    // continuation holds a stop string; push() must not be called after that.
    std::string push(int32_t id);
    // The text still held back (an incomplete character, a possible stop string's start), at the end
    // of a sample that did not stop.
    std::string finish();
    bool stopped() const { return stopped_; }
    // The continuation so far: complete characters, up to the stop string when one was found.
    const std::string& text() const { return gen_; }

private:
    std::string take(size_t end);  // the continuation's bytes [given, end), marked as given
    const Tokenizer& tok_;
    std::vector<std::string> stops_;
    std::vector<int32_t> ids_;  // the prompt and the new tokens
    size_t base_ = 0;           // bytes of the decoded prompt
    size_t given_ = 0;          // bytes of the continuation handed out so far
    std::string gen_;           // the decoded continuation, complete characters only
    bool stopped_ = false;
};

}  // namespace strata
