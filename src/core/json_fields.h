// Reading a JSON object field by field with strict checks: a wrong type or an unknown key is an
// error that names the key and where the JSON came from.
#pragma once
#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace strata {

class JsonFields {
public:
    JsonFields(const nlohmann::json& j, std::string origin) : j_(j), origin_(std::move(origin)) {
        if (!j_.is_object()) throw Error(origin_ + ": expected a JSON object");
    }
    template <typename V>
    void get(const char* key, V& out) {
        seen_.insert(key);
        auto it = j_.find(key);
        if (it == j_.end()) return;
        const auto& v = *it;
        if constexpr (std::is_same_v<V, bool>) {
            if (!v.is_boolean()) fail(key, "a boolean", v);
        } else if constexpr (std::is_integral_v<V>) {
            if (!v.is_number_integer()) fail(key, "an integer", v);
            if constexpr (std::is_unsigned_v<V>)
                if (!v.is_number_unsigned() && v.template get<long long>() < 0) fail(key, "a non-negative integer", v);
            long double x = v.template get<long double>();
            if (x < (long double)std::numeric_limits<V>::lowest() || x > (long double)std::numeric_limits<V>::max())
                fail(key, "an integer in range", v);
        } else if constexpr (std::is_floating_point_v<V>) {
            if (!v.is_number()) fail(key, "a number", v);
        } else if constexpr (std::is_same_v<V, std::string>) {
            if (!v.is_string()) fail(key, "a string", v);
        }
        out = v.template get<V>();
    }
    // Marks a key as known without reading it (it belongs to another section).
    void skip(const char* key) { seen_.insert(key); }
    void finish() const {
        for (auto it = j_.begin(); it != j_.end(); ++it)
            if (!seen_.count(it.key())) {
                const std::string near = closest_key(it.key());
                throw Error(origin_ + ": unknown key \"" + it.key() + "\"" +
                            (near.empty() ? "" : "; did you mean \"" + near + "\"?"));
            }
    }
    // The known key nearest to `key` by edit distance (insertions, deletions, substitutions and swaps
    // of neighbours), when it is close: one edit for keys of up to four characters, two beyond.
    // "" when none is.
    std::string closest_key(const std::string& key) const {
        const size_t limit = key.size() <= 4 ? 1 : 2;
        std::string best;
        size_t best_d = limit + 1;
        for (const std::string& k : seen_) {
            if (key.size() > k.size() + limit || k.size() > key.size() + limit) continue;  // too far apart
            const size_t d = edit_distance(key, k);
            if (d < best_d && d < key.size()) {
                best = k;
                best_d = d;
            }
        }
        return best;
    }
    static size_t edit_distance(const std::string& a, const std::string& b) {
        // optimal string alignment: Levenshtein plus adjacent transpositions
        std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
        for (size_t i = 0; i <= a.size(); i++) d[i][0] = i;
        for (size_t j = 0; j <= b.size(); j++) d[0][j] = j;
        for (size_t i = 1; i <= a.size(); i++)
            for (size_t j = 1; j <= b.size(); j++) {
                d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                    d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
            }
        return d[a.size()][b.size()];
    }

private:
    [[noreturn]] void fail(const char* key, const char* want, const nlohmann::json& v) const {
        // replace: a string from --set need not be valid UTF-8, and must not make dump() throw here.
        throw Error(origin_ + ": \"" + key + "\" must be " + want + ", got " +
                    v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    const nlohmann::json& j_;
    std::string origin_;
    std::set<std::string> seen_;
};

}  // namespace strata
