#pragma once
// Loop helpers shared by the CPU kernels: a parallel-for and a strided N-operand loop.
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "backends/cpu/thread_pool.hpp"
#include "backends/kernel_helpers.hpp"
#include "core/tensor.hpp"

namespace ellipse::cpu {

// Below this many elements of work a loop runs on one thread: forking costs more than it saves.
inline constexpr std::int64_t kParallelGrain = 1 << 15;

// Runs body(begin, end) over [0, n) split into contiguous chunks, one per thread, when the total work
// (n * cost_per_item elements) is worth it. chunked_parallel_for also passes the chunk's index, which is
// below max_threads(), for bodies that keep per-chunk partial results.
template <class Body>
void chunked_parallel_for(std::int64_t n, std::int64_t cost_per_item, const Body& body) {
  if (n <= 0) return;
  const int threads = max_threads();
  if (threads == 1 || n == 1 || n * cost_per_item < kParallelGrain || in_parallel_region()) {
    body(0, std::int64_t{0}, n);
    return;
  }
  run_on_threads(static_cast<int>(std::min<std::int64_t>(threads, n)), [&](int t, int nt) {
    const std::int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    if (begin < end) body(t, begin, end);
  });
}

template <class Body>
void parallel_for(std::int64_t n, std::int64_t cost_per_item, const Body& body) {
  chunked_parallel_for(n, cost_per_item, [&](int, std::int64_t begin, std::int64_t end) { body(begin, end); });
}

// Calls f(a[i], b[i], ...) for every index of `shape`, the operands given as typed base pointers with
// their element strides. Dimensions are coalesced first, and the innermost run gets a unit-stride loop
// when every operand allows it, so simple bodies vectorise.
template <class F, class... T>
void for_each_strided(const Shape& shape, const std::array<const Strides*, sizeof...(T)>& strides, F&& f,
                      T*... bases) {
  constexpr std::size_t N = sizeof...(T);
  if (numel(shape) == 0) return;
  const Coalesced<N> coalesced = coalesce(shape, strides);
  const Shape& dims = coalesced.dims;
  const std::array<Strides, N>& st = coalesced.strides;
  if (dims.empty()) {  // a single element
    f(*bases...);
    return;
  }
  const std::int64_t inner = dims.back();
  std::array<std::int64_t, N> inner_stride;
  bool unit = true;
  for (std::size_t k = 0; k < N; ++k) {
    inner_stride[k] = st[k].back();
    unit = unit && inner_stride[k] == 1;
  }
  const std::int64_t rows = numel(dims) / inner;
  // Split long rows into blocks so that a single long row still spreads over the threads.
  const std::int64_t block = rows >= 64 ? inner : std::min<std::int64_t>(inner, 8192);
  const std::int64_t blocks_per_row = (inner + block - 1) / block;

  parallel_for(rows * blocks_per_row, block, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t row = task / blocks_per_row;
      const std::int64_t lo = (task % blocks_per_row) * block, hi = std::min(inner, lo + block);
      std::array<std::int64_t, N> offset{};
      std::int64_t rest = row;
      for (std::size_t d = dims.size() - 1; d-- > 0;) {
        const std::int64_t index = rest % dims[d];
        rest /= dims[d];
        for (std::size_t k = 0; k < N; ++k) offset[k] += index * st[k][d];
      }
      [&]<std::size_t... K>(std::index_sequence<K...>) {
        auto ptrs = std::make_tuple((bases + offset[K])...);
        if (unit) {
          for (std::int64_t i = lo; i < hi; ++i) f(std::get<K>(ptrs)[i]...);
        } else {
          for (std::int64_t i = lo; i < hi; ++i) f(std::get<K>(ptrs)[i * inner_stride[K]]...);
        }
      }(std::index_sequence_for<T...>{});
    }
  });
}

}  // namespace ellipse::cpu
