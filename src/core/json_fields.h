// Reading a JSON object field by field with strict checks: a wrong type or an unknown key is an
// error that names the key and where the JSON came from.
#pragma once
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>

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
            if (!seen_.count(it.key())) throw Error(origin_ + ": unknown key \"" + it.key() + "\"");
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
