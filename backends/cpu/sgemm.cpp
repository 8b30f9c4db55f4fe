// A blocked f32 GEMM in the GotoBLAS layout: a k-slice of b is packed into panels NR columns wide, a block
// of a into panels MR rows tall, and a register-tile micro-kernel multiplies one panel of each. The block
// sizes keep one b panel in L1 and one block of a in L2 while the micro-kernel streams over them.
#include "backends/cpu/sgemm.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace ellipse::cpu {

namespace {

constexpr std::int64_t kMR = 12;   // rows of the register tile: 12 x 2 accumulators of 16 floats
constexpr std::int64_t kNR = 32;   // columns of the register tile
constexpr std::int64_t kKC = 256;  // depth of a packed slice: a b panel is 32 KiB, under L1's 48 KiB
constexpr std::int64_t kMC = 192;  // rows of a packed block of a (192 KiB, in L2)
constexpr std::int64_t kNC = 768;  // columns of a packed block of b (768 KiB, in L2)

// Per-thread packing buffers, allocated once at their largest size: the steady state allocates nothing.
struct PackBuffers {
  std::unique_ptr<float, decltype(&std::free)> a{nullptr, &std::free}, b{nullptr, &std::free};
};

PackBuffers& pack_buffers() {
  thread_local PackBuffers buffers;
  if (!buffers.a) {
    buffers.a.reset(static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kMC * kKC)));
    buffers.b.reset(static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kKC * kNC)));
    if (!buffers.a || !buffers.b) throw std::bad_alloc();
  }
  return buffers;
}

// a[0:mc, 0:kc] into panels of kMR rows: panel p holds, for each depth index, its kMR values (zero past mc).
// (pack_a and pack_b are not inlined so that profiles show them apart from the micro-kernel.)
__attribute__((noinline)) void pack_a(std::int64_t mc, std::int64_t kc, const float* a, std::int64_t a_row,
                                      std::int64_t a_col, float* dst) {
  for (std::int64_t i0 = 0; i0 < mc; i0 += kMR) {
    const std::int64_t rows = std::min(kMR, mc - i0);
    float* panel = dst + i0 * kc;
    const float* block = a + i0 * a_row;
    if (rows < kMR) {
      for (std::int64_t p = 0; p < kc; ++p)
        for (std::int64_t i = 0; i < kMR; ++i) panel[p * kMR + i] = i < rows ? block[i * a_row + p * a_col] : 0.0f;
    } else if (a_row == 1) {  // columns of a are contiguous: each depth index copies kMR adjacent values
      for (std::int64_t p = 0; p < kc; ++p)
        for (std::int64_t i = 0; i < kMR; ++i) panel[p * kMR + i] = block[p * a_col + i];
    } else {  // kMR rows read side by side, so each of their cache lines is used while it is in L1
      const float* row[kMR];
      for (std::int64_t i = 0; i < kMR; ++i) row[i] = block + i * a_row;
      for (std::int64_t p = 0; p < kc; ++p)
        for (std::int64_t i = 0; i < kMR; ++i) panel[p * kMR + i] = row[i][p * a_col];
    }
  }
}

// b[0:kc, 0:nc] into panels of kNR columns: panel q holds, for each depth index, its kNR values (zero past nc).
__attribute__((noinline)) void pack_b(std::int64_t kc, std::int64_t nc, const float* b, std::int64_t b_row,
                                      std::int64_t b_col, float* dst) {
  for (std::int64_t j0 = 0; j0 < nc; j0 += kNR) {
    const std::int64_t cols = std::min(kNR, nc - j0);
    float* panel = dst + j0 * kc;
    if (b_col == 1) {  // rows of b are contiguous: copy kNR at a time
      for (std::int64_t p = 0; p < kc; ++p) {
        const float* src = b + p * b_row + j0;
        float* out = panel + p * kNR;
        for (std::int64_t j = 0; j < cols; ++j) out[j] = src[j];
        for (std::int64_t j = cols; j < kNR; ++j) out[j] = 0.0f;
      }
    } else {  // columns of b are (closer to) contiguous: read down each column
      for (std::int64_t j = 0; j < kNR; ++j) {
        if (j >= cols) {
          for (std::int64_t p = 0; p < kc; ++p) panel[p * kNR + j] = 0.0f;
          continue;
        }
        const float* col = b + (j0 + j) * b_col;
        for (std::int64_t p = 0; p < kc; ++p) panel[p * kNR + j] = col[p * b_row];
      }
    }
  }
}

// c[0:rows, 0:cols] (+)= one kMR x kNR tile: kMR rows of a times the packed b panel over depth kc. The
// rows of a come from a packed panel, or with kDirectA straight from a row-major a with row stride lda
// (packing those would be a transpose, as costly as the tile's arithmetic when b is narrow).
template <bool kDirectA>
__attribute__((target("avx512f"))) void micro_kernel(std::int64_t kc, const float* pa, std::int64_t lda,
                                                     const float* pb, float* c, std::int64_t ldc, bool accumulate,
                                                     std::int64_t rows, std::int64_t cols) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  // Direct rows are addressed from three bases, four rows each (base + r * lda fits x86 addressing).
  const float* base[3] = {pa, pa + 4 * lda, pa + 8 * lda};
  for (std::int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(pb), b1 = _mm512_load_ps(pb + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(kDirectA ? base[i / 4][(i % 4) * lda + p] : pa[p * kMR + i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    pb += kNR;
  }
  // Column masks for a tile cut by the right edge of c; rows past the bottom edge are not stored.
  const auto mask0 = static_cast<__mmask16>(cols >= 16 ? 0xffff : (1u << cols) - 1);
  const auto mask1 = static_cast<__mmask16>(cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    if (i >= rows) break;
    float* out = c + i * ldc;
    __m512 r0 = acc[i][0], r1 = acc[i][1];
    if (accumulate) {
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(mask0, out));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(mask1, out + 16));
    }
    _mm512_mask_storeu_ps(out, mask0, r0);
    _mm512_mask_storeu_ps(out + 16, mask1, r1);
  }
}

// One thread's share: the whole product for its rows of a and c (or its columns of b and c).
void sgemm_serial(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t a_row,
                  std::int64_t a_col, const float* b, std::int64_t b_row, std::int64_t b_col, float* c,
                  std::int64_t ldc, bool accumulate) {
  PackBuffers& buffers = pack_buffers();
  float* pa = buffers.a.get();
  float* pb = buffers.b.get();
  for (std::int64_t jc = 0; jc < n; jc += kNC) {
    const std::int64_t nc = std::min(kNC, n - jc);
    for (std::int64_t pc = 0; pc < k; pc += kKC) {
      const std::int64_t kc = std::min(kKC, k - pc);
      pack_b(kc, nc, b + pc * b_row + jc * b_col, b_row, b_col, pb);
      const bool add = accumulate || pc > 0;  // later depth slices add to the first one's result
      const bool direct_a = a_col == 1;
      for (std::int64_t ic = 0; ic < m; ic += kMC) {
        const std::int64_t mc = std::min(kMC, m - ic);
        const float* a_block = a + ic * a_row + pc * a_col;
        // Direct rows need no packing, except a last panel of fewer than kMR rows (padded with zeros).
        const std::int64_t packed_from = direct_a ? mc / kMR * kMR : 0;
        if (packed_from < mc)
          pack_a(mc - packed_from, kc, a_block + packed_from * a_row, a_row, a_col, pa + packed_from * kc);
        for (std::int64_t jr = 0; jr < nc; jr += kNR) {
          const std::int64_t cols = std::min(kNR, nc - jr);
          float* c_panel = c + ic * ldc + jc + jr;
          for (std::int64_t ir = 0; ir < mc; ir += kMR) {
            if (ir < packed_from) {
              micro_kernel<true>(kc, a_block + ir * a_row, a_row, pb + jr * kc, c_panel + ir * ldc, ldc, add, kMR,
                                 cols);
            } else {
              micro_kernel<false>(kc, pa + ir * kc, 0, pb + jr * kc, c_panel + ir * ldc, ldc, add,
                                  std::min(kMR, mc - ir), cols);
            }
          }
        }
      }
    }
  }
}

}  // namespace

bool sgemm_available() {
  static const bool available = __builtin_cpu_supports("avx512f");
  return available;
}

void sgemm(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t a_row, std::int64_t a_col,
           const float* b, std::int64_t b_row, std::int64_t b_col, float* c, std::int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  // Below about a million multiply-adds the threads' start-up and second packing of b cost more than they save.
  constexpr std::int64_t kParallelFlops = std::int64_t{1} << 20;
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads == 1 || m * n * k < kParallelFlops) {
    sgemm_serial(m, n, k, a, a_row, a_col, b, b_row, b_col, c, ldc, accumulate);
    return;
  }
  // Each thread takes whole register tiles of the longer side of c, so no two threads write one element.
  const bool split_rows = (m + kMR - 1) / kMR >= (n + kNR - 1) / kNR;
  const std::int64_t tile = split_rows ? kMR : kNR;
  const std::int64_t tiles = ((split_rows ? m : n) + tile - 1) / tile;
  const int used = static_cast<int>(std::min<std::int64_t>(threads, tiles));
#pragma omp parallel num_threads(used)
  {
    const std::int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t begin = tiles * t / nt * tile;
    const std::int64_t end = std::min(tiles * (t + 1) / nt * tile, split_rows ? m : n);
    if (begin < end) {
      if (split_rows) {
        sgemm_serial(end - begin, n, k, a + begin * a_row, a_row, a_col, b, b_row, b_col, c + begin * ldc, ldc,
                     accumulate);
      } else {
        sgemm_serial(m, end - begin, k, a, a_row, a_col, b + begin * b_col, b_row, b_col, c + begin, ldc, accumulate);
      }
    }
  }
}

}  // namespace ellipse::cpu
