#include "backends/cuda/cublas.hpp"

#include <dlfcn.h>

#include <string>
#include <type_traits>

#include "core/error.hpp"

namespace ellipse::cuda {

namespace {

// The loader's reason for the last failure.
std::string loader_error() {
  const char* reason = dlerror();
  return reason ? reason : "no reason given";
}

Cublas load() {
  const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* library = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const std::string first = soname + ": " + loader_error();
    library = dlopen(ELLIPSE_CUBLAS_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    ELLIPSE_CHECK(library != nullptr, "cuda: cannot load cuBLAS ({}; {}: {}); put its folder on LD_LIBRARY_PATH", first,
                  ELLIPSE_CUBLAS_LIBRARY, loader_error());
  }
  // Never closed: the backends that use it live as long as the process.
  auto resolve = [library](auto& function, const char* name) {
    void* address = dlsym(library, name);
    ELLIPSE_CHECK(address != nullptr, "cuda: the cuBLAS that was loaded has no {} ({})", name, loader_error());
    function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(address);
  };
  Cublas api;
  resolve(api.create, "cublasCreate_v2");
  resolve(api.destroy, "cublasDestroy_v2");
  resolve(api.set_stream, "cublasSetStream_v2");
  resolve(api.set_math_mode, "cublasSetMathMode");
  resolve(api.sgemm_strided_batched, "cublasSgemmStridedBatched");
  resolve(api.dgemm_strided_batched, "cublasDgemmStridedBatched");
  resolve(api.status_string, "cublasGetStatusString");
  return api;
}

}  // namespace

const Cublas& cublas() {
  static const Cublas api = load();
  return api;
}

}  // namespace ellipse::cuda
