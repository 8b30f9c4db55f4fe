#pragma once
// The CPU backend's own f32 GEMM, for processors with AVX-512. Debian's OpenBLAS 0.3.21 does not
// recognise every recent x86 core and then falls back to its generic SSE kernel (Prescott), which runs at
// a fraction of what the hardware does; this kernel uses the AVX-512 units directly. Everything else
// (f64, processors without AVX-512) stays on OpenBLAS.
#include <cstdint>

namespace ellipse::cpu {

// Whether this processor can run sgemm below (checked once).
bool sgemm_available();

// c[i, j] = sum_p a[i, p] b[p, j] (+ c[i, j] when `accumulate`) (+ bias[j] when bias is given) for i < m,
// j < n, p < k, with any element strides for a and b (a[i, p] is a[i * a_row + p * a_col]) and c row-major
// with row stride ldc. With a_row_sums, also sets a_row_sums[i] = sum_p a[i, p] (a linear layer's bias
// gradient when a is its transposed output gradient), summed as a passes through the packing. Runs on the
// thread pool when called outside a parallel region and the product is large enough; k >= 1.
void sgemm(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t a_row, std::int64_t a_col,
           const float* b, std::int64_t b_row, std::int64_t b_col, float* c, std::int64_t ldc, bool accumulate,
           const float* bias = nullptr, float* a_row_sums = nullptr);

}  // namespace ellipse::cpu
