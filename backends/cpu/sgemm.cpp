// A blocked f32 GEMM in the GotoBLAS layout: a k-slice of b is packed into panels NR columns wide, a block
// of a into panels MR rows tall, and a register-tile micro-kernel multiplies one panel of each. The block
// sizes keep one b panel in L1 and one block of a in L2 while the micro-kernel streams over them.
#include "backends/cpu/sgemm.hpp"

#include "backends/cpu/thread_pool.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

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

// row_sums[i] += sum over p < kc of a[i, p] for i < rows (a linear layer's bias gradient, when a is the
// transposed output gradient), for rows of a that are read in place rather than packed.
void add_row_sums(std::int64_t rows, std::int64_t kc, const float* a, std::int64_t a_row, std::int64_t a_col,
                  float* row_sums) {
  for (std::int64_t i = 0; i < rows; ++i) {
    float total = 0.0f;
    for (std::int64_t p = 0; p < kc; ++p) total += a[i * a_row + p * a_col];
    row_sums[i] += total;
  }
}

// a[0:mc, 0:kc] into panels of kMR rows: panel p holds, for each depth index, its kMR values (zero past mc).
// With row_sums, also adds each row's sum over the slice to it, while the values pass through registers.
// (pack_a and pack_b are not inlined so that profiles show them apart from the micro-kernel.)
__attribute__((noinline, target("avx512f"))) void pack_a(std::int64_t mc, std::int64_t kc, const float* a,
                                                         std::int64_t a_row, std::int64_t a_col, float* dst,
                                                         float* row_sums) {
  for (std::int64_t i0 = 0; i0 < mc; i0 += kMR) {
    const std::int64_t rows = std::min(kMR, mc - i0);
    float* panel = dst + i0 * kc;
    const float* block = a + i0 * a_row;
    if (a_row == 1) {  // columns of a are contiguous (a transposed view): one masked vector per depth index
      constexpr __mmask16 kTile = (1u << kMR) - 1;
      const auto valid = static_cast<__mmask16>((1u << rows) - 1);  // zeros past the last row
      __m512 sums = _mm512_setzero_ps();
      for (std::int64_t p = 0; p < kc; ++p) {
        const __m512 column = _mm512_maskz_loadu_ps(valid, block + p * a_col);
        _mm512_mask_storeu_ps(panel + p * kMR, kTile, column);
        sums = _mm512_add_ps(sums, column);
      }
      if (row_sums)
        _mm512_mask_storeu_ps(row_sums + i0, valid,
                              _mm512_add_ps(sums, _mm512_maskz_loadu_ps(valid, row_sums + i0)));
      continue;
    }
    if (rows < kMR) {
      for (std::int64_t p = 0; p < kc; ++p)
        for (std::int64_t i = 0; i < kMR; ++i) panel[p * kMR + i] = i < rows ? block[i * a_row + p * a_col] : 0.0f;
    } else {  // kMR rows read side by side, so each of their cache lines is used while it is in L1
      const float* row[kMR];
      for (std::int64_t i = 0; i < kMR; ++i) row[i] = block + i * a_row;
      for (std::int64_t p = 0; p < kc; ++p)
        for (std::int64_t i = 0; i < kMR; ++i) panel[p * kMR + i] = row[i][p * a_col];
    }
    if (row_sums) add_row_sums(rows, kc, block, a_row, a_col, row_sums + i0);
  }
}

// The 16 x 16 block src[r * src_stride + c] (r, c < 16) into dst[c * dst_stride + r]: four rounds of
// shuffles, since AVX-512 has no transpose and gathers are slow.
__attribute__((target("avx512f"))) inline void transpose16x16(const float* src, std::int64_t src_stride, float* dst,
                                                              std::int64_t dst_stride) {
  // (The zero-masking forms with every lane selected: GCC 12's plain forms warn of an uninitialised operand.)
  constexpr __mmask16 kAll = 0xffff;
  constexpr __mmask8 kAll8 = 0xff;
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 16; i += 2) {  // interleave pairs of rows element by element
    t[i] = _mm512_maskz_unpacklo_ps(kAll, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(kAll, r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then pairs of elements
    for (int h = 0; h < 2; ++h) {
      const __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + h + 2]);
      r[i + h] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, a, b));
      r[i + h + 2] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, a, b));
    }
  }
  for (int i = 0; i < 16; i += 8) {  // then 128-bit lanes, four rows apart
    for (int h = 0; h < 4; ++h) {
      t[i + h] = _mm512_maskz_shuffle_f32x4(kAll, r[i + h], r[i + h + 4], 0x88);
      t[i + h + 4] = _mm512_maskz_shuffle_f32x4(kAll, r[i + h], r[i + h + 4], 0xdd);
    }
  }
  for (int h = 0; h < 8; ++h) {  // and lanes eight rows apart
    r[h] = _mm512_maskz_shuffle_f32x4(kAll, t[h], t[h + 8], 0x88);
    r[h + 8] = _mm512_maskz_shuffle_f32x4(kAll, t[h], t[h + 8], 0xdd);
  }
  // After the four rounds, register i holds output row kOrder[i] (the first round pairs rows 2i and 2i+1).
  static constexpr int kOrder[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + kOrder[i] * dst_stride, r[i]);
}

// b[0:kc, 0:nc] into panels of kNR columns: panel q holds, for each depth index, its kNR values (zero past nc).
__attribute__((noinline, target("avx512f"))) void pack_b(std::int64_t kc, std::int64_t nc, const float* b,
                                                         std::int64_t b_row, std::int64_t b_col, float* dst) {
  for (std::int64_t j0 = 0; j0 < nc; j0 += kNR) {
    const std::int64_t cols = std::min(kNR, nc - j0);
    float* panel = dst + j0 * kc;
    if (b_col == 1) {  // rows of b are contiguous: two (masked) vectors per depth index
      const auto mask0 = static_cast<__mmask16>(cols >= 16 ? 0xffff : (1u << cols) - 1);
      const auto mask1 = static_cast<__mmask16>(cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
      for (std::int64_t p = 0; p < kc; ++p) {
        const float* src = b + p * b_row + j0;
        _mm512_store_ps(panel + p * kNR, _mm512_maskz_loadu_ps(mask0, src));
        _mm512_store_ps(panel + p * kNR + 16, _mm512_maskz_loadu_ps(mask1, src + 16));
      }
    } else if (b_row == 1) {  // b is a transposed view: 16 x 16 blocks transposed in registers, the rest one by one
      const float* block = b + j0 * b_col;
      const std::int64_t whole_depth = kc / 16 * 16, whole_cols = cols / 16 * 16;
      for (std::int64_t p = 0; p < whole_depth; p += 16)
        for (std::int64_t j = 0; j < whole_cols; j += 16)
          transpose16x16(block + j * b_col + p, b_col, panel + p * kNR + j, kNR);
      for (std::int64_t j = 0; j < kNR; ++j) {
        const std::int64_t from = j < whole_cols ? whole_depth : 0;
        for (std::int64_t p = from; p < kc; ++p) panel[p * kNR + j] = j < cols ? block[j * b_col + p] : 0.0f;
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

// c[0:rows, 0:cols] (+)= one kMR x kNR tile: kMR rows of a times the packed b panel over depth kc, plus the
// tile's columns of bias when given. With kRowMajorA the rows of a are read straight from a row-major a
// with row stride lda (packing those would be a transpose, as costly as the tile's arithmetic when b is
// narrow); otherwise a[i, p] is pa[p * lda + i], which is both a packed panel (lda = kMR) and a transposed
// view read in place (lda = its depth stride), so that neither needs a copy.
template <bool kRowMajorA>
__attribute__((target("avx512f"))) void micro_kernel(std::int64_t kc, const float* pa, std::int64_t lda,
                                                     const float* pb, float* c, std::int64_t ldc, bool accumulate,
                                                     const float* bias, std::int64_t rows, std::int64_t cols) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  // Row-major rows are addressed from three bases, four rows each (base + r * lda fits x86 addressing).
  const float* base[3] = {pa, pa + 4 * lda, pa + 8 * lda};
  // The c tile is read (or written) only after the depth loop: fetching it now hides that miss behind the
  // loop (single-threaded 1024^3: 133-147 GFLOP/s without, 147-160 with, on a Xeon), as does unrolling the
  // loop, which spends fewer instructions on its counter.
  for (int i = 0; i < kMR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
#pragma GCC unroll 4
  for (std::int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(pb), b1 = _mm512_load_ps(pb + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(kRowMajorA ? base[i / 4][(i % 4) * lda + p] : pa[p * lda + i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    pb += kNR;
  }
  // Column masks for a tile cut by the right edge of c; rows past the bottom edge are not stored.
  const auto mask0 = static_cast<__mmask16>(cols >= 16 ? 0xffff : (1u << cols) - 1);
  const auto mask1 = static_cast<__mmask16>(cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(mask0, bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(mask1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    if (i >= rows) break;
    float* out = c + i * ldc;
    __m512 r0 = acc[i][0], r1 = acc[i][1];
    if (bias) {
      r0 = _mm512_add_ps(r0, bias0);
      r1 = _mm512_add_ps(r1, bias1);
    }
    if (accumulate) {
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(mask0, out));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(mask1, out + 16));
    }
    _mm512_mask_storeu_ps(out, mask0, r0);
    _mm512_mask_storeu_ps(out + 16, mask1, r1);
  }
}

// One thread's share: the whole product for its rows of a and c (or its columns of b and c).
// With a_row_sums, also adds each row of a's sum over the depth to it.
void sgemm_serial(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t a_row,
                  std::int64_t a_col, const float* b, std::int64_t b_row, std::int64_t b_col, float* c,
                  std::int64_t ldc, bool accumulate, const float* bias, float* a_row_sums) {
  PackBuffers& buffers = pack_buffers();
  float* pa = buffers.a.get();
  float* pb = buffers.b.get();
  for (std::int64_t jc = 0; jc < n; jc += kNC) {
    const std::int64_t nc = std::min(kNC, n - jc);
    for (std::int64_t pc = 0; pc < k; pc += kKC) {
      const std::int64_t kc = std::min(kKC, k - pc);
      pack_b(kc, nc, b + pc * b_row + jc * b_col, b_row, b_col, pb);
      const bool add = accumulate || pc > 0;  // later depth slices add to the first one's result
      const float* slice_bias = pc == 0 && bias ? bias + jc : nullptr;  // added once, with the first slice
      // Rows (or, transposed, depth steps) a multiple of 4 KiB apart share one L1 set and overflow its ways
      // (1024 x 1024 read in place ran at 75% of packed): such an a is packed instead. A transposed a is read
      // in place only when one panel of b covers all of c's columns: otherwise every column panel would
      // fetch its scattered depth steps again (a vit-s weight gradient, 512 x 128 x 6400, ran at 230 GFLOP/s
      // in place and 263 packed on a Xeon).
      const bool row_major_a = a_col == 1 && a_row % 1024 != 0;
      const bool transposed_a = a_col != 1 && a_row == 1 && a_col % 1024 != 0 && nc <= kNR;
      for (std::int64_t ic = 0; ic < m; ic += kMC) {
        const std::int64_t mc = std::min(kMC, m - ic);
        const float* a_block = a + ic * a_row + pc * a_col;
        // Row-major and transposed a are read in place, except a last panel of fewer than kMR rows (padded
        // with zeros: the micro-kernel reads all kMR rows).
        const std::int64_t packed_from = row_major_a || transposed_a ? mc / kMR * kMR : 0;
        // a is packed (or read) once per column block: its rows are summed with the first.
        float* block_sums = a_row_sums && jc == 0 ? a_row_sums + ic : nullptr;
        if (packed_from < mc)
          pack_a(mc - packed_from, kc, a_block + packed_from * a_row, a_row, a_col, pa + packed_from * kc,
                 block_sums ? block_sums + packed_from : nullptr);
        if (block_sums && packed_from > 0) add_row_sums(packed_from, kc, a_block, a_row, a_col, block_sums);
        for (std::int64_t jr = 0; jr < nc; jr += kNR) {
          const std::int64_t cols = std::min(kNR, nc - jr);
          float* c_panel = c + ic * ldc + jc + jr;
          const float* panel_bias = slice_bias ? slice_bias + jr : nullptr;
          for (std::int64_t ir = 0; ir < mc; ir += kMR) {
            if (ir >= packed_from) {
              micro_kernel<false>(kc, pa + ir * kc, kMR, pb + jr * kc, c_panel + ir * ldc, ldc, add, panel_bias,
                                  std::min(kMR, mc - ir), cols);
            } else if (row_major_a) {
              micro_kernel<true>(kc, a_block + ir * a_row, a_row, pb + jr * kc, c_panel + ir * ldc, ldc, add,
                                 panel_bias, kMR, cols);
            } else {
              micro_kernel<false>(kc, a_block + ir, a_col, pb + jr * kc, c_panel + ir * ldc, ldc, add, panel_bias,
                                  kMR, cols);
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
           const float* b, std::int64_t b_row, std::int64_t b_col, float* c, std::int64_t ldc, bool accumulate,
           const float* bias, float* a_row_sums) {
  if (a_row_sums) std::fill_n(a_row_sums, std::max<std::int64_t>(m, 0), 0.0f);
  if (m <= 0) return;
  if (n <= 0) {
    if (a_row_sums) add_row_sums(m, k, a, a_row, a_col, a_row_sums);
    return;
  }
  // Below about a million multiply-adds the threads' start-up and second packing of b cost more than they save.
  constexpr std::int64_t kParallelFlops = std::int64_t{1} << 20;
  constexpr std::int64_t kDeep = 4;  // depth over the larger side of c from which the threads split the depth
  const int threads = cpu::in_parallel_region() ? 1 : cpu::max_threads();
  if (threads == 1 || m * n * k < kParallelFlops) {
    sgemm_serial(m, n, k, a, a_row, a_col, b, b_row, b_col, c, ldc, accumulate, bias, a_row_sums);
    return;
  }
  // A deep product (a weight's gradient: k is the batch's tokens, m x n the weight) splits its depth instead.
  // Split by rows or columns of c, each thread would pack all of the operand it shares with the others, which
  // for such shapes costs as much as the arithmetic (128 x 128 x 6400 ran at 117 GFLOP/s split by rows on a
  // 2-core Xeon). Each thread multiplies its depth range into a partial result of its own (and partial row
  // sums); thread 0's is c itself (with `accumulate` and the bias), and the others are added to it after, in
  // thread order.
  if (k >= kDeep * std::max(m, n)) {
    const std::int64_t used = std::min<std::int64_t>(threads, k / kKC + 1);
    const std::int64_t part_size = m * n + m;  // a partial product, then partial row sums
    thread_local std::vector<float> partials;
    partials.resize(static_cast<std::size_t>((used - 1) * part_size));  // each thread overwrites its part
    float* partial = partials.data();
    cpu::run_on_threads(static_cast<int>(used), [&](std::int64_t t, std::int64_t nt) {
      const std::int64_t begin = k * t / nt, end = k * (t + 1) / nt;
      if (t == 0) {
        sgemm_serial(m, n, end - begin, a, a_row, a_col, b, b_row, b_col, c, ldc, accumulate, bias, a_row_sums);
      } else {
        float* own = partial + (t - 1) * part_size;
        if (a_row_sums) std::fill_n(own + m * n, m, 0.0f);  // sgemm_serial adds to row sums
        sgemm_serial(m, n, end - begin, a + begin * a_col, a_row, a_col, b + begin * b_row, b_row, b_col, own, n,
                     false, nullptr, a_row_sums ? own + m * n : nullptr);
      }
    });
    cpu::run_on_threads(static_cast<int>(used), [&](std::int64_t t, std::int64_t nt) {
      for (std::int64_t i = m * t / nt; i < m * (t + 1) / nt; ++i)
        for (std::int64_t part = 0; part + 1 < nt; ++part) {
          const float* from = partial + part * part_size;
          float* row = c + i * ldc;
          for (std::int64_t j = 0; j < n; ++j) row[j] += from[i * n + j];
          if (a_row_sums) a_row_sums[i] += from[m * n + i];
        }
    });
    return;
  }
  // Each thread takes whole register tiles of the longer side of c, so no two threads write one element.
  const bool split_rows = (m + kMR - 1) / kMR >= (n + kNR - 1) / kNR;
  const std::int64_t tile = split_rows ? kMR : kNR;
  const std::int64_t tiles = ((split_rows ? m : n) + tile - 1) / tile;
  const int used = static_cast<int>(std::min<std::int64_t>(threads, tiles));
  cpu::run_on_threads(used, [&](std::int64_t t, std::int64_t nt) {
    const std::int64_t begin = tiles * t / nt * tile;
    const std::int64_t end = std::min(tiles * (t + 1) / nt * tile, split_rows ? m : n);
    if (begin < end) {
      if (split_rows) {
        sgemm_serial(end - begin, n, k, a + begin * a_row, a_row, a_col, b, b_row, b_col, c + begin * ldc, ldc,
                     accumulate, bias, a_row_sums ? a_row_sums + begin : nullptr);
      } else {  // every thread reads all of a: the first sums its rows
        sgemm_serial(m, end - begin, k, a, a_row, a_col, b + begin * b_col, b_row, b_col, c + begin, ldc, accumulate,
                     bias ? bias + begin : nullptr, t == 0 ? a_row_sums : nullptr);
      }
    }
  });
}

}  // namespace ellipse::cpu
