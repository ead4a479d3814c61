// One table of named tensors (name, element count, dtype) that gives a buffer's byte count, its
// carving into pointers and what it costs — written once, so the three cannot disagree. The model's
// activations are described by Model::describe_activations (model.cpp); ModelConfig::memory_bytes
// and the arena both read that one description.
#pragma once
#include <algorithm>
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
        int overlay, group;  // overlay 0: none; else the entry's overlay (1, 2, …) and group in it
    };

    // Keeps the capacity: re-planning a model of the same shape allocates nothing.
    void clear() {
        entries_.clear();
        bytes_ = 0;
        overlay_ = group_ = 0;
        in_overlay_ = false;
    }
    template <typename T>
    void add(const char* name, int layer, size_t numel, T** where) {
        entries_.push_back({name, layer, numel, dtype_of<T>(), bytes_, where,
                            [](void* w, void* p) { *static_cast<T**>(w) = static_cast<T*>(p); },
                            in_overlay_ ? overlay_ : 0, group_});
        const size_t b = numel * sizeof(T);
        bytes_ += (b + Backend::kAlign - 1) / Backend::kAlign * Backend::kAlign;
    }
    // Tensors that are never live at the same time share bytes. Between overlay_begin() and
    // overlay_end(), overlay_next() starts another group at the overlay's first byte; overlay_end()
    // goes on after the largest group. Entries of one group never overlap each other; an entry may
    // overlap entries of the overlay's other groups, and nothing else.
    void overlay_begin() {
        overlay_++;
        group_ = 0;
        in_overlay_ = true;
        overlay_start_ = overlay_end_ = bytes_;
    }
    void overlay_next() {
        overlay_end_ = std::max(overlay_end_, bytes_);
        bytes_ = overlay_start_;
        group_++;
    }
    void overlay_end() {
        bytes_ = std::max(overlay_end_, bytes_);
        in_overlay_ = false;
        group_ = 0;
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
    int overlay_ = 0, group_ = 0;
    bool in_overlay_ = false;
    size_t overlay_start_ = 0, overlay_end_ = 0;
};

}  // namespace strata
