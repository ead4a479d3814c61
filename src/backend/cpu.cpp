// The CPU backend: aligned host memory; copies to and from the host are memcpy.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "backend/backend.h"

namespace strata {

const char* to_string(Device d) {
    switch (d) {
        case Device::cpu: return "cpu";
    }
    return "?";
}

const std::vector<std::string>& device_names() {
    static const std::vector<std::string> names = {"cpu"};
    return names;
}

Device parse_device(const std::string& s, const std::string& origin) {
    if (s == "cpu") return Device::cpu;
    std::string allowed;
    for (const auto& n : device_names()) allowed += (allowed.empty() ? "\"" : ", \"") + n + "\"";
    throw Error(origin + ": train.device must be one of " + allowed + ", not \"" + s + "\"");
}

size_t dtype_size(DType t) {
    switch (t) {
        case DType::f32: return 4;
        case DType::f64: return 8;
        case DType::bf16: return 2;
        case DType::i32: return 4;
        case DType::u8: return 1;
    }
    return 0;
}

const char* to_string(DType t) {
    switch (t) {
        case DType::f32: return "f32";
        case DType::f64: return "f64";
        case DType::bf16: return "bf16";
        case DType::i32: return "i32";
        case DType::u8: return "u8";
    }
    return "?";
}

namespace {
class CpuBackend final : public Backend {
public:
    Device device() const override { return Device::cpu; }
    void* allocate(size_t bytes) override {
        if (bytes == 0) return nullptr;
        const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
        void* p = std::aligned_alloc(kAlign, rounded);
        if (!p) throw std::bad_alloc();
        std::memset(p, 0, rounded);
        live_ += bytes;
        return p;
    }
    void deallocate(void* p, size_t bytes) override {
        if (p) live_ -= bytes;
        std::free(p);
    }
    size_t live_bytes() const override { return live_.load(); }
    void copy_to_host(void* host, const void* dev, size_t bytes) const override {
        if (bytes) std::memcpy(host, dev, bytes);
    }
    void copy_from_host(void* dev, const void* host, size_t bytes) const override {
        if (bytes) std::memcpy(dev, host, bytes);
    }

private:
    std::atomic<size_t> live_{0};
};
}  // namespace

Backend& backend_for(Device d) {
    static CpuBackend cpu;
    switch (d) {
        case Device::cpu: return cpu;
    }
    return cpu;
}

Buffer::Buffer(Backend& be, DType t, size_t numel) : be_(&be), numel_(numel), dtype_(t) {
    ptr_ = be.allocate(numel * dtype_size(t));
}

Buffer::~Buffer() {
    if (be_ && ptr_) be_->deallocate(ptr_, bytes());
}

void Buffer::to_host(void* host, size_t first, size_t count) const {
    STRATA_CHECK(first + count <= numel_, "Buffer::to_host: range outside the buffer");
    be_->copy_to_host(host, static_cast<const char*>(ptr_) + first * dtype_size(dtype_), count * dtype_size(dtype_));
}

void Buffer::from_host(const void* host, size_t first, size_t count) {
    STRATA_CHECK(first + count <= numel_, "Buffer::from_host: range outside the buffer");
    be_->copy_from_host(static_cast<char*>(ptr_) + first * dtype_size(dtype_), host, count * dtype_size(dtype_));
}

}  // namespace strata
