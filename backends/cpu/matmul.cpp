// CPU kernel: (batched) matrix products, f32 on the backend's own AVX-512 GEMM where the processor has it
// (backends/cpu/sgemm.cpp), everything else on OpenBLAS. Transposed views are read in place, and a batch
// that shares one right-hand matrix (a Linear layer) becomes a single large GEMM.
#include <cblas.h>

#include <optional>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/parallel.hpp"
#include "backends/cpu/sgemm.hpp"

namespace ellipse {

namespace {

// How BLAS should read a rows x cols matrix with the given strides, if it can without a copy.
struct GemmOperand {
  CBLAS_TRANSPOSE trans;
  std::int64_t ld;
};

std::optional<GemmOperand> as_gemm_operand(std::int64_t rows, std::int64_t cols, std::int64_t row_stride,
                                           std::int64_t col_stride) {
  if ((cols == 1 || col_stride == 1) && (rows == 1 || row_stride >= cols))
    return GemmOperand{CblasNoTrans, rows == 1 ? std::max<std::int64_t>(cols, 1) : row_stride};
  if ((rows == 1 || row_stride == 1) && (cols == 1 || col_stride >= rows))
    return GemmOperand{CblasTrans, cols == 1 ? std::max<std::int64_t>(rows, 1) : col_stride};
  return std::nullopt;
}

template <class T>
void gemm(GemmOperand a, GemmOperand b, std::int64_t m, std::int64_t n, std::int64_t k, const T* pa, const T* pb,
          T* pc, T beta) {
  const auto mi = static_cast<blasint>(m), ni = static_cast<blasint>(n), ki = static_cast<blasint>(k);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, a.trans, b.trans, mi, ni, ki, 1.0f, pa, static_cast<blasint>(a.ld), pb,
                static_cast<blasint>(b.ld), beta, pc, ni);
  } else {
    cblas_dgemm(CblasRowMajor, a.trans, b.trans, mi, ni, ki, 1.0, pa, static_cast<blasint>(a.ld), pb,
                static_cast<blasint>(b.ld), beta, pc, ni);
  }
}

}  // namespace

void CpuBackend::matmul(const Tensor& a_in, const Tensor& b_in, const Tensor& out, bool accumulate) {
  dispatch_floating(out.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    const std::size_t nd = out.shape().size();
    const std::int64_t m = out.shape()[nd - 2], n = out.shape()[nd - 1], k = a_in.shape()[nd - 1];
    const T beta = accumulate ? T(1) : T(0);
    if (out.numel() == 0) return;
    if (k == 0) {
      if (!accumulate) fill(out, 0.0);
      return;
    }
    // The own GEMM reads any strides; for BLAS, operands it cannot read in place (neither row- nor
    // column-major) are copied once.
    const bool own = std::is_same_v<T, float> && cpu::sgemm_available();
    auto readable = [&](const Tensor& t) {
      const auto& s = t.strides();
      const auto& shape = t.shape();
      if (own || as_gemm_operand(shape[nd - 2], shape[nd - 1], s[nd - 2], s[nd - 1])) return t;
      Tensor dense = empty(shape, t.dtype(), t.device());  // this backend's copy kernel, not an autograd op
      copy(t, dense);
      return dense;
    };
    const Tensor a = readable(a_in), b = readable(b_in);
    const auto& sa = a.strides();
    const auto& sb = b.strides();
    // One product of `rows` rows of a (element strides a_row, a_col) with b into contiguous c.
    auto product = [&](std::int64_t rows, std::int64_t a_row, std::int64_t a_col, const T* pa, const T* pb, T* pc) {
      if constexpr (std::is_same_v<T, float>) {
        if (own) {
          cpu::sgemm(rows, n, k, pa, a_row, a_col, pb, sb[nd - 2], sb[nd - 1], pc, n, accumulate);
          return;
        }
      }
      gemm<T>(*as_gemm_operand(rows, k, a_row, a_col), *as_gemm_operand(k, n, sb[nd - 2], sb[nd - 1]), rows, n, k, pa,
              pb, pc, beta);
    };

    const std::int64_t batch = out.numel() / (m * n);
    bool b_shared = true;
    for (std::size_t d = 0; d + 2 < nd; ++d) b_shared = b_shared && (b.shape()[d] == 1 || sb[d] == 0);
    if (batch > 1 && b_shared && a.is_contiguous()) {  // [batch * m, k] @ [k, n] in one call
      product(batch * m, k, 1, a.data<T>(), b.data<T>(), out.data<T>());
      return;
    }
    auto product_of = [&](std::int64_t i) {
      std::int64_t offset_a = 0, offset_b = 0, rest = i;
      for (std::size_t d = nd - 2; d-- > 0;) {
        const std::int64_t index = rest % out.shape()[d];
        rest /= out.shape()[d];
        offset_a += index * sa[d];
        offset_b += index * sb[d];
      }
      product(m, sa[nd - 2], sa[nd - 1], a.data<T>() + offset_a, b.data<T>() + offset_b, out.data<T>() + i * m * n);
    };
    // Many small products (attention heads) run one per thread, each GEMM single-threaded; large ones use
    // all threads in turn. The own GEMM runs on the backend's thread pool; OpenBLAS's OpenMP build only
    // stays on one thread inside an OpenMP region, so its products are spread over OpenMP's threads.
    constexpr std::int64_t kSmallGemmFlops = std::int64_t{1} << 22;
    const bool one_per_thread = batch > 1 && m * n * k <= kSmallGemmFlops;
    if (one_per_thread && own) {
      cpu::parallel_for(batch, m * n * k, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) product_of(i);
      });
      return;
    }
    const bool openmp = one_per_thread && batch * m * n * k >= cpu::kParallelGrain;
#pragma omp parallel for schedule(static) if (openmp)
    for (std::int64_t i = 0; i < batch; ++i) product_of(i);
  });
}

void CpuBackend::linear(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out) {
  // The own GEMM starts each output tile from the bias; elsewhere the base class copies it in first.
  if (out.dtype() != DType::f32 || !cpu::sgemm_available() || out.numel() == 0 || a.shape()[1] == 0) {
    Backend::linear(a, b, bias, out);
    return;
  }
  const auto& sa = a.strides();
  const auto& sb = b.strides();
  cpu::sgemm(out.shape()[0], out.shape()[1], a.shape()[1], a.data<float>(), sa[0], sa[1], b.data<float>(), sb[0], sb[1],
             out.data<float>(), out.shape()[1], /*accumulate=*/false, bias.data<float>());
}

void CpuBackend::linear_weight_grad(const Tensor& g, const Tensor& x, const Tensor& gweight, const Tensor& gbias) {
  // The own GEMM packs g^T, reading every element of g once: it sums the bias gradient on the way.
  if (g.dtype() != DType::f32 || !cpu::sgemm_available() || g.shape()[0] == 0) {
    Backend::linear_weight_grad(g, x, gweight, gbias);
    return;
  }
  const std::int64_t rows = g.shape()[0], n = g.shape()[1], k = x.shape()[1];
  cpu::sgemm(n, k, rows, g.data<float>(), 1, n, x.data<float>(), k, 1, gweight.data<float>(), k,
             /*accumulate=*/false, /*bias=*/nullptr, gbias.data<float>());
}

}  // namespace ellipse
