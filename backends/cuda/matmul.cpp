// CUDA kernel: (batched) matrix products on cuBLAS. Transposed views are read in place, operands that are
// neither row- nor column-major are copied once, batches become strided-batched calls, and a batch that
// shares one right-hand matrix (a Linear layer) becomes a single large GEMM, as on the CPU.
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>

#include "backends/cuda/cublas.hpp"
#include "backends/cuda/device_state.hpp"
#include "backends/kernel_helpers.hpp"
#include "core/error.hpp"

namespace ellipse {

namespace {

constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();  // cuBLAS takes sizes and counts as int

// How cuBLAS reads one of our row-major-indexed rows x cols matrices. cuBLAS is column-major, so a row-major
// matrix (unit column stride) is, as cuBLAS sees it, its own transpose with ld = row stride: op N yields the
// transpose. A column-major one (unit row stride) is read as is with ld = column stride: op T yields the
// transpose. A size-1 dim never steps, so its stride may be anything; ld then gets the least legal value.
struct GemmOperand {
  cublasOperation_t op;
  int ld;
};

std::optional<GemmOperand> as_gemm_operand(std::int64_t rows, std::int64_t cols, std::int64_t row_stride,
                                           std::int64_t col_stride) {
  cublasOperation_t op;
  std::int64_t ld;
  if ((cols == 1 || col_stride == 1) && (rows == 1 || row_stride >= cols)) {
    op = CUBLAS_OP_N;
    ld = rows == 1 ? cols : row_stride;
  } else if ((rows == 1 || row_stride == 1) && (cols == 1 || col_stride >= rows)) {
    op = CUBLAS_OP_T;
    ld = cols == 1 ? rows : col_stride;
  } else {
    return std::nullopt;
  }
  if (ld > kIntMax) return std::nullopt;  // a contiguous copy has ld = cols, which fits
  return GemmOperand{op, static_cast<int>(ld)};
}

// cuBLAS's C[i] = op(A[i]) op(B[i]) + beta C[i] for i < count, all column-major, with A[i] = pa + i * stride_a
// (likewise B and C); op(A) is m x k, op(B) k x n, C m x n.
template <class T>
void gemm_strided_batched(cublasHandle_t handle, GemmOperand a, GemmOperand b, int m, int n, int k, const T* pa,
                          std::int64_t stride_a, const T* pb, std::int64_t stride_b, T beta, T* pc, int ldc,
                          std::int64_t stride_c, int count) {
  const T alpha = 1;
  if constexpr (std::is_same_v<T, float>) {
    cuda::check(cuda::cublas().sgemm_strided_batched(handle, a.op, b.op, m, n, k, &alpha, pa, a.ld, stride_a, pb, b.ld,
                                                     stride_b, &beta, pc, ldc, stride_c, count),
                "cublasSgemmStridedBatched");
  } else {
    cuda::check(cuda::cublas().dgemm_strided_batched(handle, a.op, b.op, m, n, k, &alpha, pa, a.ld, stride_a, pb, b.ld,
                                                     stride_b, &beta, pc, ldc, stride_c, count),
                "cublasDgemmStridedBatched");
  }
}

}  // namespace

void CudaBackend::matmul(const Tensor& a_in, const Tensor& b_in, const Tensor& out, bool accumulate) {
  state_->activate();
  dispatch_floating(out.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    const std::size_t nd = out.shape().size();
    const std::int64_t m = out.shape()[nd - 2], n = out.shape()[nd - 1], k = a_in.shape()[nd - 1];
    if (out.numel() == 0) return;
    if (k == 0) {
      if (!accumulate) fill(out, 0.0);
      return;
    }
    ELLIPSE_CHECK(m <= kIntMax && n <= kIntMax && k <= kIntMax,
                  "matmul: cuBLAS takes sizes up to {}, got M = {}, N = {}, K = {}", kIntMax, m, n, k);

    // Operands cuBLAS cannot read in place (e.g. a step-2 slice) are copied once into contiguous tensors.
    Tensor a = a_in, b = b_in;
    auto readable = [&](Tensor& t) {
      const std::int64_t rows = t.shape()[nd - 2], cols = t.shape()[nd - 1];
      if (auto operand = as_gemm_operand(rows, cols, t.strides()[nd - 2], t.strides()[nd - 1])) return *operand;
      Tensor dense = ellipse::empty(t.shape(), t.dtype(), device());
      copy(t, dense);
      t = dense;
      return *as_gemm_operand(rows, cols, t.strides()[nd - 2], t.strides()[nd - 1]);  // row-major now
    };
    const GemmOperand op_a = readable(a), op_b = readable(b);

    // The batch dims of out, a and b, merged where all three step evenly (broadcast dims have stride 0).
    // The innermost run becomes one strided-batched call; the dims outside it are looped over.
    const Shape batch_shape(out.shape().begin(), out.shape().end() - 2);
    const Strides so(out.strides().begin(), out.strides().end() - 2), sa(a.strides().begin(), a.strides().end() - 2),
        sb(b.strides().begin(), b.strides().end() - 2);
    const Coalesced<3> batch = coalesce<3>(batch_shape, {&so, &sa, &sb});
    const std::size_t runs = batch.dims.size(), outer_dims = runs ? runs - 1 : 0;
    std::int64_t count = runs ? batch.dims.back() : 1;
    const std::int64_t stride_out = runs ? batch.strides[0].back() : 0, stride_a = runs ? batch.strides[1].back() : 0,
                       stride_b = runs ? batch.strides[2].back() : 0;

    // A run sharing one b, over row-major a whose matrices follow each other at its row pitch and out's
    // (a Linear layer on [B, T, C]), is one product of count * m rows.
    std::int64_t rows = m;
    if (stride_b == 0 && op_a.op == CUBLAS_OP_N && stride_a == m * op_a.ld && stride_out == m * n &&
        count * m <= kIntMax) {
      rows = count * m;
      count = 1;
    }
    ELLIPSE_CHECK(count <= kIntMax, "matmul: cuBLAS takes batches of up to {} products, got {} (batch shape {})",
                  kIntMax, count, to_string(batch_shape));

    std::int64_t outer = 1;
    for (std::size_t d = 0; d < outer_dims; ++d) outer *= batch.dims[d];
    const T beta = accumulate ? T(1) : T(0);
    for (std::int64_t i = 0; i < outer; ++i) {
      std::int64_t offset_out = 0, offset_a = 0, offset_b = 0, rest = i;
      for (std::size_t d = outer_dims; d-- > 0;) {
        const std::int64_t index = rest % batch.dims[d];
        rest /= batch.dims[d];
        offset_out += index * batch.strides[0][d];
        offset_a += index * batch.strides[1][d];
        offset_b += index * batch.strides[2][d];
      }
      // Row-major out [rows, n] is column-major out^T [n, rows] with ld n, and out^T = b^T a^T: cuBLAS's A is
      // our b and its B our a, each read per as_gemm_operand so that op() yields the transpose.
      gemm_strided_batched<T>(state_->blas, op_b, op_a, static_cast<int>(n), static_cast<int>(rows),
                              static_cast<int>(k), b.data<T>() + offset_b, stride_b, a.data<T>() + offset_a, stride_a,
                              beta, out.data<T>() + offset_out, static_cast<int>(n), stride_out,
                              static_cast<int>(count));
    }
  });
}

}  // namespace ellipse
