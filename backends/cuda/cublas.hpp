#pragma once
// cuBLAS, opened when the first CUDA device is made instead of linked. Loading cuBLAS (and cuBLASLt under
// it) at start-up costs a process about 150 MiB of resident memory, which every run on the CPU of a build
// with the CUDA backend would pay for nothing. Plain C++: the host code of the backend includes it.
#include <cublas_v2.h>

namespace ellipse::cuda {

// The cuBLAS entry points the backend calls, with cuBLAS's own signatures.
struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
  decltype(&cublasDgemmStridedBatched) dgemm_strided_batched = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

// The library, loaded on the first call (thread-safe): libcublas.so.<major> through the loader's search
// path (LD_LIBRARY_PATH, the system's cache), else the file CMake found at configure time. Throws
// ellipse::Error naming the files tried and the loader's reason when neither opens or a symbol is missing.
const Cublas& cublas();

}  // namespace ellipse::cuda
