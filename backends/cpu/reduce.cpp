// CPU kernels: sum and max over the middle axis of [outer, n, inner], and prefix sums.
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/parallel.hpp"

namespace ellipse {

void CpuBackend::reduce(ReduceOp op, const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n,
                        std::int64_t inner) {
  dispatch_floating(x.dtype(), "reduce", [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.data<T>();
    T* dst = out.data<T>();
    const bool is_sum = op == ReduceOp::sum;
    if (inner == 1) {
      // Rows are contiguous: one accumulator per row, in double for sums (long f32 sums drift otherwise).
      auto reduce_row = [&](const T* row) -> T {
        if (is_sum) {
          double acc = 0;
          for (std::int64_t j = 0; j < n; ++j) acc += row[j];
          return static_cast<T>(acc);
        }
        T best = -std::numeric_limits<T>::infinity();
        for (std::int64_t j = 0; j < n; ++j) best = row[j] > best || std::isnan(row[j]) ? row[j] : best;
        return best;
      };
      if (outer == 1 && is_sum && n >= cpu::kParallelGrain) {  // one long sum: split it over the threads
        // Per-chunk partial sums, added in chunk order: the result does not depend on timing.
        std::vector<double> partial(static_cast<std::size_t>(cpu::max_threads()), 0.0);
        cpu::chunked_parallel_for(n, 1, [&](int chunk, std::int64_t begin, std::int64_t end) {
          double acc = 0;
          for (std::int64_t j = begin; j < end; ++j) acc += src[j];
          partial[static_cast<std::size_t>(chunk)] = acc;
        });
        double total = 0;
        for (double p : partial) total += p;
        dst[0] = static_cast<T>(total);
        return;
      }
      cpu::parallel_for(outer, n, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t o = begin; o < end; ++o) dst[o] = reduce_row(src + o * n);
      });
      return;
    }
    // Strided reduction: accumulate rows of `inner` elements, which vectorises. Tasks take blocks of columns,
    // so that a single reduction (a bias gradient: outer = 1) still spreads over the threads.
    constexpr std::int64_t kColumns = 64;
    const std::int64_t blocks = (inner + kColumns - 1) / kColumns;
    cpu::parallel_for(outer * blocks, n * std::min(inner, kColumns), [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t task = begin; task < end; ++task) {
        const std::int64_t o = task / blocks, lo = task % blocks * kColumns, hi = std::min(inner, lo + kColumns);
        T* acc = dst + o * inner;
        const T* block = src + o * n * inner;
        for (std::int64_t i = lo; i < hi; ++i) acc[i] = is_sum ? T(0) : -std::numeric_limits<T>::infinity();
        for (std::int64_t j = 0; j < n; ++j) {
          const T* row = block + j * inner;
          if (is_sum) {
            for (std::int64_t i = lo; i < hi; ++i) acc[i] += row[i];
          } else {
            for (std::int64_t i = lo; i < hi; ++i) acc[i] = row[i] > acc[i] || std::isnan(row[i]) ? row[i] : acc[i];
          }
        }
      }
    });
  });
}

void CpuBackend::cumsum(const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n, std::int64_t inner,
                        bool reverse) {
  dispatch_floating(x.dtype(), "cumsum", [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.data<T>();
    T* dst = out.data<T>();
    cpu::parallel_for(outer, n * inner, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t o = begin; o < end; ++o) {
        const T* in_block = src + o * n * inner;
        T* out_block = dst + o * n * inner;
        for (std::int64_t step = 0; step < n; ++step) {
          const std::int64_t j = reverse ? n - 1 - step : step;
          const T* row = in_block + j * inner;
          T* sum = out_block + j * inner;
          const T* previous = step == 0 ? nullptr : out_block + (reverse ? j + 1 : j - 1) * inner;
          for (std::int64_t i = 0; i < inner; ++i) sum[i] = previous ? previous[i] + row[i] : row[i];
        }
      }
    });
  });
}

}  // namespace ellipse
