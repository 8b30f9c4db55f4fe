#pragma once
// The CPU backend: its own AVX-512 GEMM for f32 matrix products (OpenBLAS for f64, and for f32 on processors
// without AVX-512), and loops on its own thread pool for everything else. One file per op family (elementwise.cpp,
// reduce.cpp, indexing.cpp, matmul.cpp and sgemm.cpp, nn.cpp, attention.cpp) holds the kernels declared here.
#include <mutex>
#include <unordered_map>

#include "backends/backend.hpp"

namespace ellipse {

class CpuBackend final : public Backend {
 public:
  // Returns the blocks kept for reuse to the system.
  void empty_cache();
  // The bytes of freed blocks kept for reuse (each rounded up to a multiple of 64).
  std::size_t cached_bytes();
  Device device() const override { return Device::cpu(); }
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
  void linear(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out) override;
  void linear_weight_grad(const Tensor& g, const Tensor& x, const Tensor& gweight, const Tensor& gbias) override;

  void softmax(const Tensor& x, const Tensor& y, std::int64_t outer, std::int64_t n, std::int64_t inner,
               bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t outer, std::int64_t n,
                        std::int64_t inner, bool log) override;
  void scaled_softmax(const Tensor& x, const Tensor& y, std::int64_t rows, std::int64_t nq, std::int64_t n,
                      double scale, bool causal) override;
  void scaled_softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t rows, std::int64_t n,
                               double scale) override;
  bool supports_fused_attention(DType dtype, std::int64_t head_dim) const override;
  bool prefers_fused_attention(DType dtype, bool causal) const override;
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

 private:
  static constexpr std::size_t kMaxCachedBytes = std::size_t{4} << 30;  // beyond this, freed blocks go back
  void release(void* data, std::size_t rounded);
  std::mutex cache_mutex_;
  std::unordered_multimap<std::size_t, void*> cache_;
  std::size_t cached_bytes_ = 0;
};

CpuBackend& cpu_backend();

}  // namespace ellipse
