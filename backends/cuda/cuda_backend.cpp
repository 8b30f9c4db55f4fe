// The CUDA backend's host side: device creation, the caching allocator, host transfers and the registry.
#include <memory>
#include <vector>

#include "backends/cuda/cublas.hpp"
#include "backends/cuda/device_state.hpp"
#include "core/error.hpp"

namespace ellipse {

namespace cuda {

void raise(const std::string& message) { throw Error(message); }

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail("cuda: {} failed: {} ({})", what, cudaGetErrorString(status), cudaGetErrorName(status));
}

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("cuda: {} failed: {}", what, cublas().status_string(status));
}

}  // namespace cuda

namespace {

constexpr std::size_t kAlignment = 512;  // rounding of block sizes, so that near sizes share cached blocks

}  // namespace

CudaBackend::CudaBackend(int index) : index_(index), state_(std::make_unique<cuda::DeviceState>()) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  ELLIPSE_CHECK(status == cudaSuccess, "device cuda:{}: no usable CUDA device on this machine ({}: {})", index,
                cudaGetErrorName(status), cudaGetErrorString(status));
  ELLIPSE_CHECK(index >= 0 && index < count, "device cuda:{}: this machine has {} CUDA device(s)", index, count);
  state_->index = index;
  state_->activate();
  cuda::check(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  try {
    const cuda::Cublas& blas = cuda::cublas();
    cuda::check(blas.create(&state_->blas), "cublasCreate");
    cuda::check(blas.set_stream(state_->blas, state_->stream), "cublasSetStream");
    set_tf32(false);
  } catch (...) {  // no destructor runs for a half-built object: release what exists
    if (state_->blas) cuda::cublas().destroy(state_->blas);
    cudaStreamDestroy(state_->stream);
    throw;
  }
}

int CudaBackend::device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess) return count;
  cudaGetLastError();  // clear the error, so that no later check reports it as its own
  return 0;
}

CudaBackend::~CudaBackend() = default;  // never called (see the header); defined where DeviceState is complete

std::shared_ptr<Storage> CudaBackend::allocate(std::size_t bytes) {
  auto& s = *state_;
  const std::size_t rounded = std::max(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  void* data = nullptr;
  {
    std::lock_guard lock(s.mutex);
    auto found = s.cache.find(rounded);
    if (found != s.cache.end()) {
      data = found->second;
      s.cache.erase(found);
      s.cached_bytes -= rounded;
    }
  }
  if (!data) {
    s.activate();
    if (cudaMalloc(&data, rounded) != cudaSuccess) {
      cudaGetLastError();  // reset the runtime's last-error slot, which the failed call set
      empty_cache();       // the spare blocks may be what we need
      const cudaError_t status = cudaMalloc(&data, rounded);
      if (status != cudaSuccess) {
        cudaGetLastError();
        std::size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        fail("allocate: cannot allocate {} bytes on cuda:{} ({}); {} bytes in use by tensors, {} free of {}", bytes,
             index_, cudaGetErrorString(status), allocated_bytes(), free_bytes, total_bytes);
      }
    }
  }
  {
    std::lock_guard lock(s.mutex);
    s.allocated_bytes += rounded;
    s.peak_bytes = std::max(s.peak_bytes, s.allocated_bytes);
  }
  cuda::DeviceState* state = state_.get();
  return std::make_shared<Storage>(data, bytes, device(), [state, rounded](void* p) {
    std::lock_guard lock(state->mutex);
    state->allocated_bytes -= rounded;
    state->cache.emplace(rounded, p);
    state->cached_bytes += rounded;
  });
}

void CudaBackend::empty_cache() {
  auto& s = *state_;
  synchronize();
  std::lock_guard lock(s.mutex);
  for (auto& [size, data] : s.cache) cudaFree(data);
  s.cache.clear();
  s.cached_bytes = 0;
}

std::size_t CudaBackend::allocated_bytes() const {
  std::lock_guard lock(state_->mutex);
  return state_->allocated_bytes;
}

std::size_t CudaBackend::peak_memory_bytes() const {
  std::lock_guard lock(state_->mutex);
  return state_->peak_bytes;
}

void CudaBackend::reset_peak_memory() {
  std::lock_guard lock(state_->mutex);
  state_->peak_bytes = state_->allocated_bytes;
}

// Both directions wait for the copy: the host buffer may be freed or read as soon as we return.
void CudaBackend::copy_from_host(void* device_dst, const void* host_src, std::size_t bytes) {
  if (!bytes) return;
  state_->activate();
  cuda::check(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, state_->stream), "copy to device");
  cuda::check(cudaStreamSynchronize(state_->stream), "copy to device");
}

void CudaBackend::copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  if (!bytes) return;
  state_->activate();
  cuda::check(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, state_->stream), "copy to host");
  cuda::check(cudaStreamSynchronize(state_->stream), "copy to host");
}

void CudaBackend::synchronize() {
  state_->activate();
  cuda::check(cudaStreamSynchronize(state_->stream), "synchronize");
}

void CudaBackend::set_tf32(bool on) {
  cuda::check(cuda::cublas().set_math_mode(state_->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
              "cublasSetMathMode");
  state_->tf32 = on;
}

bool CudaBackend::tf32() const { return state_->tf32; }

CudaBackend& cuda_backend(int index) {
  static auto* backends = new std::vector<CudaBackend*>;  // never destroyed (see the header)
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  ELLIPSE_CHECK(index >= 0 && index < 64, "device cuda:{}: device index out of range", index);
  if (backends->size() <= static_cast<std::size_t>(index)) backends->resize(static_cast<std::size_t>(index) + 1);
  auto& slot = (*backends)[static_cast<std::size_t>(index)];
  if (!slot) slot = new CudaBackend(index);
  return *slot;
}

}  // namespace ellipse
