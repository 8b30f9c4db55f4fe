#pragma once
// The CUDA backend: cuBLAS for matrix products (matmul.cpp), our own kernels for everything else, one file per
// op family (elementwise.cu, reduce.cu, indexing.cu, nn.cu, attention.cu), as in backends/cpu/.
// This header is plain C++ (no CUDA types), so that the rest of the library can name the backend.
#include <cstddef>
#include <memory>

#include "backends/backend.hpp"

namespace ellipse {

namespace cuda {
struct DeviceState;  // stream, cuBLAS handle and memory cache (backends/cuda/device_state.hpp)
}

// One per device, made by cuda_backend() and never destroyed: tensors in static storage may free their memory
// after main returns, and the CUDA runtime may be gone by the time static destructors run.
class CudaBackend final : public Backend {
 public:

  Device device() const override { return Device::cuda(index_); }
  std::shared_ptr<Storage> allocate(std::size_t bytes) override;
  void copy_from_host(void* device_dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) override;

  void fill(const Tensor& out, double value) override;
  void arange(const Tensor& out, double start, double step) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void dropout_mask(const Tensor& mask, double p, std::uint64_t seed) override;
  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWStep& step) override;

  void reduce(ReduceOp op, const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n,
              std::int64_t inner) override;
  void cumsum(const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n, std::int64_t inner,
              bool reverse) override;

  void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) override;

  void softmax(const Tensor& x, const Tensor& y, std::int64_t outer, std::int64_t n, std::int64_t inner,
               bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t outer, std::int64_t n,
                        std::int64_t inner, bool log) override;
  void scaled_softmax(const Tensor& x, const Tensor& y, std::int64_t rows, std::int64_t nq, std::int64_t n,
                      double scale, bool causal) override;
  void scaled_softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t rows, std::int64_t n,
                               double scale) override;
  bool supports_fused_attention(DType dtype, std::int64_t head_dim) const override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale, bool causal,
                 const Tensor& out, const Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, const Tensor& out,
                          const Tensor& lse, const Tensor& gout, double scale, bool causal, const Tensor& gq,
                          const Tensor& gk, const Tensor& gv) override;
  void elliptical_metric(const Tensor& v, const Tensor& v_prev, const Tensor& past_sum, std::int64_t past, bool causal,
                         const Tensor& metric, const Tensor& sum) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                  const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           const Tensor& gy, const Tensor& gx, const Tensor& gweight, const Tensor& gbias) override;
  void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& gy, const Tensor& gweight) override;
  void gather(const Tensor& x, const Tensor& index, int axis, const Tensor& out) override;
  void scatter_add(const Tensor& src, const Tensor& index, int axis, const Tensor& out) override;
  void topk(const Tensor& x, const Tensor& indices, std::int64_t outer, std::int64_t n, std::int64_t inner,
            std::int64_t k, bool largest) override;
  void cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index, const Tensor& losses,
                     const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              std::int64_t ignore_index, double scale, const Tensor& glogits) override;

  // Waits until every kernel queued so far has finished (the copies to the host wait on their own).
  void synchronize() override;
  // TF32 tensor-core math in cuBLAS; off by default.
  void set_tf32(bool on) override;
  bool tf32() const;
  // Bytes held by live tensors (the cache's spare blocks excluded), now and at most since reset_peak_memory.
  std::size_t allocated_bytes() const;
  std::size_t peak_memory_bytes() const override;
  void reset_peak_memory() override;
  // Returns the cached spare blocks to the driver.
  void empty_cache();

  cuda::DeviceState& state() { return *state_; }
  // The CUDA devices this process sees; 0 when the driver finds none or cannot start.
  static int device_count();

 private:
  friend CudaBackend& cuda_backend(int index);
  explicit CudaBackend(int index);  // throws ellipse::Error when cuda:index does not exist or has no driver
  ~CudaBackend() override;

  int index_;
  std::unique_ptr<cuda::DeviceState> state_;
};

// The backend of cuda:index, created on first use; throws ellipse::Error naming the device and the reason
// (no driver, no such device) when it cannot exist.
CudaBackend& cuda_backend(int index);

}  // namespace ellipse
