#include "backends/cpu/cpu_backend.hpp"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "core/error.hpp"

namespace ellipse {

CpuBackend& cpu_backend() {
  // Never destroyed: tensors in static storage may free their memory after main returns.
  static auto* backend = new CpuBackend;
  return *backend;
}

// Freed blocks are kept by size and handed out again: a training step allocates the same sizes every
// time, and fresh large blocks cost page faults (glibc maps and unmaps them on every call).
std::shared_ptr<Storage> CpuBackend::allocate(std::size_t bytes) {
  constexpr std::size_t kAlignment = 64;  // a cache line; also what AVX-512 loads like
  // More than the machine's memory can only fail or, where the kernel overcommits, succeed and get the process
  // killed when the pages are touched: refuse it here with the size in the message.
  static const auto physical = static_cast<std::size_t>(::sysconf(_SC_PHYS_PAGES)) *
                               static_cast<std::size_t>(::sysconf(_SC_PAGE_SIZE));
  ELLIPSE_CHECK(bytes <= physical, "allocate: cannot allocate {} bytes on the cpu, more than the machine's {} bytes "
                "of memory", bytes, physical);
  const std::size_t rounded = std::max<std::size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  void* data = nullptr;
  {
    std::lock_guard lock(cache_mutex_);
    auto found = cache_.find(rounded);
    if (found != cache_.end()) {
      data = found->second;
      cache_.erase(found);
      cached_bytes_ -= rounded;
    }
  }
  if (!data) data = std::aligned_alloc(kAlignment, rounded);
  if (!data) {  // perhaps the cache holds the memory we need
    empty_cache();
    data = std::aligned_alloc(kAlignment, rounded);
  }
  ELLIPSE_CHECK(data != nullptr, "allocate: cannot allocate {} bytes on the cpu", bytes);
  return std::make_shared<Storage>(data, bytes, Device::cpu(), [this, rounded](void* p) { release(p, rounded); });
}

void CpuBackend::release(void* data, std::size_t rounded) {
  std::lock_guard lock(cache_mutex_);
  if (cached_bytes_ + rounded > kMaxCachedBytes) {
    std::free(data);
    return;
  }
  cache_.emplace(rounded, data);
  cached_bytes_ += rounded;
}

void CpuBackend::empty_cache() {
  std::lock_guard lock(cache_mutex_);
  for (auto& [size, data] : cache_) std::free(data);
  cache_.clear();
  cached_bytes_ = 0;
}

std::size_t CpuBackend::cached_bytes() {
  std::lock_guard lock(cache_mutex_);
  return cached_bytes_;
}

void CpuBackend::copy_from_host(void* device_dst, const void* host_src, std::size_t bytes) {
  if (bytes) std::memcpy(device_dst, host_src, bytes);
}

void CpuBackend::copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  if (bytes) std::memcpy(host_dst, device_src, bytes);
}

}  // namespace ellipse
