// The backend seam: where the model's memory lives and how it reaches the host. The model asks its
// backend for every buffer (parameters, gradients, optimizer state, the activation arena, caches)
// through Buffer, and calls the ops (ops.h) on those buffers; nothing outside ops/ reads or writes
// model memory except through Buffer::to_host / from_host. `train.device` picks the backend once.
//
// Only the CPU backend exists. A CUDA backend provides the same four memory calls over device
// memory and the ops of ops.h as kernels (docs/architecture.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/precision.h"

namespace strata {

enum class Device { cpu };
const char* to_string(Device d);
// "cpu" → Device::cpu; anything else is an Error naming `origin` and listing the allowed values.
Device parse_device(const std::string& s, const std::string& origin);
const std::vector<std::string>& device_names();

// Element types a buffer can hold. Storage is chosen per role (core/precision.h).
enum class DType { f32, f64, bf16, i32, u8 };  // u8: raw bytes (an arena of mixed tensors)
size_t dtype_size(DType t);
const char* to_string(DType t);
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::f32; }
template <>
constexpr DType dtype_of<double>() { return DType::f64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <>
constexpr DType dtype_of<unsigned char>() { return DType::u8; }
template <>
constexpr DType dtype_of<bf16>() { return DType::bf16; }

class Backend {
public:
    virtual ~Backend() = default;
    virtual Device device() const = 0;
    // Zero-filled memory of `bytes` bytes, aligned to kAlign. Throws Error when it cannot.
    virtual void* allocate(size_t bytes) = 0;
    virtual void deallocate(void* p, size_t bytes) = 0;
    virtual void copy_to_host(void* host, const void* dev, size_t bytes) const = 0;
    virtual void copy_from_host(void* dev, const void* host, size_t bytes) const = 0;
    // Bytes allocated and not yet freed, as requested (memory accounting and its tests).
    virtual size_t live_bytes() const = 0;
    static constexpr size_t kAlign = 64;
};

// The backend of a device (one per process).
Backend& backend_for(Device d);

// One allocation on a backend: pointer, element type and count. Move-only; frees itself.
class Buffer {
public:
    Buffer() = default;
    Buffer(Backend& be, DType t, size_t numel);
    Buffer(Buffer&& o) noexcept { swap(o); }
    Buffer& operator=(Buffer&& o) noexcept {
        Buffer(std::move(o)).swap(*this);
        return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer();

    template <typename T>
    T* data() {
        STRATA_CHECK(ptr_ == nullptr || dtype_of<T>() == dtype_, "Buffer::data: element type differs from the buffer's");
        return static_cast<T*>(ptr_);
    }
    template <typename T>
    const T* data() const {
        STRATA_CHECK(ptr_ == nullptr || dtype_of<T>() == dtype_, "Buffer::data: element type differs from the buffer's");
        return static_cast<const T*>(ptr_);
    }
    void* raw() { return ptr_; }
    size_t numel() const { return numel_; }
    size_t bytes() const { return numel_ * dtype_size(dtype_); }
    DType dtype() const { return dtype_; }
    Backend* backend() const { return be_; }

    // Elements [first, first + count) to or from host memory.
    void to_host(void* host, size_t first, size_t count) const;
    void from_host(const void* host, size_t first, size_t count);
    // The whole buffer as a host vector.
    template <typename T>
    std::vector<T> host() const {
        std::vector<T> v(numel_);
        STRATA_CHECK(dtype_of<T>() == dtype_, "Buffer::host: element type differs from the buffer's");
        to_host(v.data(), 0, numel_);
        return v;
    }

private:
    void swap(Buffer& o) noexcept {
        std::swap(be_, o.be_);
        std::swap(ptr_, o.ptr_);
        std::swap(numel_, o.numel_);
        std::swap(dtype_, o.dtype_);
    }
    Backend* be_ = nullptr;
    void* ptr_ = nullptr;
    size_t numel_ = 0;
    DType dtype_ = DType::f32;
};

}  // namespace strata
