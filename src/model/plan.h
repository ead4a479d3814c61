// One table of named tensors (name, element count, dtype) that gives a buffer's byte count, its
// carving into pointers and what it costs — written once, so the three cannot disagree. The model's
// activations are described by Model::describe_activations (model.cpp); ModelConfig::memory_bytes
// and the arena both read that one description.
#pragma once
#include <cstddef>
#include <vector>

#include "backend/backend.h"

namespace strata {

class TensorPlan {
public:
    struct Entry {
        const char* name;  // a static string; with `layer` it names the tensor
        int layer;         // −1 for tensors that belong to no layer
        size_t numel;
        DType dtype;
        size_t offset;  // bytes from the start of the buffer, a multiple of Backend::kAlign
        void* where;    // the pointer carve() sets (a T**), null when the plan only counts
        void (*set)(void* where, void* p);
    };

    // Keeps the capacity: re-planning a model of the same shape allocates nothing.
    void clear() {
        entries_.clear();
        bytes_ = 0;
    }
    template <typename T>
    void add(const char* name, int layer, size_t numel, T** where) {
        entries_.push_back({name, layer, numel, dtype_of<T>(), bytes_, where,
                            [](void* w, void* p) { *static_cast<T**>(w) = static_cast<T*>(p); }});
        const size_t b = numel * sizeof(T);
        bytes_ += (b + Backend::kAlign - 1) / Backend::kAlign * Backend::kAlign;
    }
    size_t bytes() const { return bytes_; }
    const std::vector<Entry>& entries() const { return entries_; }
    // Points every entry's pointer into `base` (at least bytes() long).
    void carve(void* base) const {
        for (const Entry& e : entries_)
            if (e.where) e.set(e.where, static_cast<char*>(base) + e.offset);
    }

private:
    std::vector<Entry> entries_;
    size_t bytes_ = 0;
};

}  // namespace strata
