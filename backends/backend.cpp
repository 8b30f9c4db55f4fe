#include "backends/backend.hpp"

#include "backends/cpu/cpu_backend.hpp"
#include "backends/kernel_helpers.hpp"
#include "core/error.hpp"
#ifdef ELLIPSE_HAS_CUDA
#include "backends/cuda/cuda_backend.hpp"
#endif

namespace ellipse {

Backend& backend_for(Device device) {
  switch (device.type) {
    case DeviceType::cpu:
      return cpu_backend();
    case DeviceType::cuda:
#ifdef ELLIPSE_HAS_CUDA
      return cuda_backend(device.index);
#else
      break;
#endif
  }
  fail("device {}: this build of ellipse has no CUDA backend (configured without nvcc and cuBLAS, or with "
       "-DELLIPSE_CUDA=OFF); only the cpu device is available",
       device.str());
}

int cuda_device_count() {
#ifdef ELLIPSE_HAS_CUDA
  return CudaBackend::device_count();
#else
  return 0;
#endif
}

bool Backend::prefers_fused_attention(DType, bool) const { return true; }

void Backend::linear(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out) {
  copy(bias.expand(out.shape()), out);
  matmul(a, b, out, /*accumulate=*/true);
}

void Backend::linear_weight_grad(const Tensor& g, const Tensor& x, const Tensor& gweight, const Tensor& gbias) {
  matmul(g.transpose(0, 1), x, gweight);
  reduce(ReduceOp::sum, g, gbias, 1, g.shape()[0], g.shape()[1]);
}

void Backend::set_tf32(bool on) {
  ELLIPSE_CHECK(!on, "tf32: device {} has no TF32 mode (a CUDA option)", device().str());
}

void fail_not_floating(std::string_view op, DType dtype) {
  fail("{}: expected a floating dtype (f32 or f64), got {}", op, dtype_name(dtype));
}

}  // namespace ellipse
