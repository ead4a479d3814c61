#include "infer/text_stream.h"

#include <algorithm>

namespace strata {

TextStream::TextStream(const Tokenizer& tok, std::vector<std::string> stops, std::vector<int32_t> prompt)
    : tok_(tok), stops_(std::move(stops)), ids_(std::move(prompt)), base_(tok_.decode(ids_).size()) {}

std::string TextStream::take(size_t end) {
    std::string r;
    if (end > given_) {
        r = gen_.substr(given_, end - given_);
        given_ = end;
    }
    return r;
}

std::string TextStream::push(int32_t id) {
    ids_.push_back(id);
    const std::string s = tok_.decode(ids_);
    size_t end = s.size();
    static const std::string repl = "\xEF\xBF\xBD";
    while (end >= base_ + 3 && s.compare(end - 3, 3, repl) == 0) end -= 3;
    gen_ = end > base_ ? s.substr(base_, end - base_) : std::string();
    size_t hit = std::string::npos;
    for (const std::string& st : stops_) hit = std::min(hit, gen_.find(st));
    if (hit != std::string::npos) {
        stopped_ = true;
        gen_.resize(hit);
        return take(hit);
    }
    // hold back the longest tail of the text that begins some stop string
    size_t hold = 0;
    for (const std::string& st : stops_)
        for (size_t k = std::min(st.size() - 1, gen_.size()); k > hold; k--)
            if (gen_.compare(gen_.size() - k, k, st, 0, k) == 0) {
                hold = k;
                break;
            }
    return take(gen_.size() - hold);
}

std::string TextStream::finish() { return take(gen_.size()); }

}  // namespace strata
