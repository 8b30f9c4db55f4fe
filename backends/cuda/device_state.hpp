#pragma once
// The per-device state of the CUDA backend and the error checks of runtime and cuBLAS calls. Plain C++
// (host code of cuda_backend.cpp and the kernels' .cu files both include it); no fmt, which nvcc cannot parse.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

#include "backends/cuda/cuda_backend.hpp"

namespace ellipse::cuda {

// Throws ellipse::Error with `message`.
[[noreturn]] void raise(const std::string& message);
// Throw ellipse::Error naming the call and the runtime's (or cuBLAS's) reason.
void check(cudaError_t status, const char* what);
void check(cublasStatus_t status, const char* what);

struct DeviceState {
  int index = 0;
  cudaStream_t stream = nullptr;  // every kernel, copy and cuBLAS call of this device goes here, in order
  cublasHandle_t blas = nullptr;
  bool tf32 = false;
  // Caching allocator: freed blocks wait by size for the next request of that size. One stream keeps reuse
  // safe: a block's next user is queued after its last one.
  std::mutex mutex;
  std::unordered_multimap<std::size_t, void*> cache;
  std::size_t cached_bytes = 0, allocated_bytes = 0, peak_bytes = 0;

  void activate() const { check(cudaSetDevice(index), "cudaSetDevice"); }
};

}  // namespace ellipse::cuda
