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
    static constexpr int kMaxNest = 2;  // overlays inside overlays, at most this deep
    struct Entry {
        const char* name;  // a static string; with `layer` it names the tensor
        int layer;         // −1 for tensors that belong to no layer
        size_t numel;
        DType dtype;
        size_t offset;  // bytes from the start of the buffer, a multiple of Backend::kAlign
        void* where;    // the pointer carve() sets (a T**), null when the plan only counts
        void (*set)(void* where, void* p);
        // The overlays the entry is in, outermost first, and its group in each (overlay id 0: none).
        // Two entries may share bytes only where, in one overlay they are both in, their groups differ.
        int overlay[kMaxNest], group[kMaxNest];
    };

    // Keeps the capacity: re-planning a model of the same shape allocates nothing.
    void clear() {
        entries_.clear();
        bytes_ = 0;
        n_overlays_ = depth_ = 0;
    }
    template <typename T>
    void add(const char* name, int layer, size_t numel, T** where) {
        Entry e{name, layer, numel, dtype_of<T>(), bytes_, where,
                [](void* w, void* p) { *static_cast<T**>(w) = static_cast<T*>(p); }, {}, {}};
        for (int i = 0; i < depth_; i++) e.overlay[i] = open_[i].id, e.group[i] = open_[i].group;
        entries_.push_back(e);
        const size_t b = numel * sizeof(T);
        bytes_ += (b + Backend::kAlign - 1) / Backend::kAlign * Backend::kAlign;
    }
    // Tensors that are never live at the same time share bytes. Between overlay_begin() and
    // overlay_end(), overlay_next() starts another group at the overlay's first byte; overlay_end()
    // goes on after the largest group. Entries of one group never overlap each other; an entry may
    // overlap entries of the overlay's other groups, and nothing else. A group may hold an overlay.
    void overlay_begin() {
        if (depth_ == kMaxNest) throw Error("TensorPlan: overlays nested too deep");
        open_[depth_++] = {++n_overlays_, 0, bytes_, bytes_};
    }
    void overlay_next() {
        Open& o = open_[depth_ - 1];
        o.end = std::max(o.end, bytes_);
        bytes_ = o.start;
        o.group++;
    }
    void overlay_end() {
        bytes_ = std::max(open_[depth_ - 1].end, bytes_);
        depth_--;
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
    struct Open {
        int id, group;
        size_t start, end;
    };
    Open open_[kMaxNest] = {};
    int n_overlays_ = 0, depth_ = 0;
};

}  // namespace strata
