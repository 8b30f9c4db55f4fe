// CUDA kernels: sum and max over the middle axis of contiguous [outer, n, inner], and prefix sums along it. Sums
// accumulate in double, as the CPU's row sums do (long f32 sums drift otherwise). No atomics: each output combines
// its terms in a fixed order, so results repeat exactly.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "backends/cuda/common.cuh"

namespace ellipse {

using cuda::for_range;
using cuda::grid_for;

namespace {

using cuda::kFullWarp;
using cuda::kThreads;

constexpr int kWarpsPerBlock = kThreads / 32;

template <class T>
struct SumReduction {
  using Acc = double;  // what partial results keep
  __device__ static Acc identity() { return 0; }
  __device__ Acc operator()(Acc a, Acc b) const { return a + b; }
};

template <class T>
struct MaxReduction {
  using Acc = T;
  __device__ static Acc identity() { return -std::numeric_limits<T>::infinity(); }
  // NaN wins, as on the CPU.
  __device__ Acc operator()(Acc best, Acc x) const { return x > best || isnan(x) ? x : best; }
};

// Rows up to kWarpRow long get one warp each. Longer ones are cut into chunks of at least kBlockChunk elements,
// one block each, aiming at kTargetBlocks blocks in all; columns (inner > 1) into chunks of at least kColumnChunk,
// one thread each, aiming at kTargetThreads threads. Fewer would leave most of an H100 idle on a long reduction.
constexpr std::int64_t kWarpRow = 2048;
constexpr std::int64_t kBlockChunk = 4096;
constexpr std::int64_t kTargetBlocks = 1024;
constexpr std::int64_t kColumnChunk = 32;
constexpr std::int64_t kTargetThreads = 65536;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// n cut into `count` chunks of `length` (the last one shorter, none empty), at most `wanted` >= 1 of them.
struct Chunks {
  std::int64_t count, length;
};

Chunks split(std::int64_t n, std::int64_t wanted) {
  const std::int64_t length = std::max<std::int64_t>(1, ceil_div(n, wanted));
  return {std::max<std::int64_t>(1, ceil_div(n, length)), length};
}

// One warp per contiguous row of n: short rows, and the per-chunk partials of long ones.
template <class Op, class In, class Out>
__global__ void reduce_rows_by_warp(const In* x, Out* out, std::int64_t rows, std::int64_t n) {
  using Acc = typename Op::Acc;
  const Op op;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += step) {
    const In* row = x + r * n;
    Acc acc = Op::identity();
#pragma unroll 4
    for (std::int64_t j = lane; j < n; j += 32) acc = op(acc, static_cast<Acc>(row[j]));
    acc = cuda::warp_reduce(acc, op);
    if (lane == 0) out[r] = static_cast<Out>(acc);
  }
}

// One block per (row, chunk) of long rows: partial[row * chunks.count + chunk].
template <class Op, class T>
__global__ void reduce_row_chunks(const T* x, typename Op::Acc* partial, std::int64_t rows, std::int64_t n,
                                  Chunks chunks) {
  using Acc = typename Op::Acc;
  const Op op;
  for (std::int64_t item = blockIdx.x; item < rows * chunks.count; item += gridDim.x) {
    const T* row = x + item / chunks.count * n;
    const std::int64_t begin = item % chunks.count * chunks.length;
    const std::int64_t end = std::min(n, begin + chunks.length);
    Acc acc = Op::identity();
#pragma unroll 4
    for (std::int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) acc = op(acc, static_cast<Acc>(row[j]));
    acc = cuda::block_reduce(acc, op);
    if (threadIdx.x == 0) partial[item] = acc;
  }
}

// One thread per (o, chunk, i) of [outer, n, inner] with inner > 1, walking its chunk of the column down n (a warp
// reads adjacent i: coalesced). Writes out[o, chunk, i]: the result when chunks.count is 1, else partials.
template <class Op, class In, class Out>
__global__ void reduce_columns(const In* x, Out* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
                               Chunks chunks) {
  using Acc = typename Op::Acc;
  const Op op;
  const std::int64_t items = outer * chunks.count * inner;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += step) {
    const std::int64_t i = item % inner, chunk = item / inner % chunks.count, o = item / inner / chunks.count;
    const In* column = x + o * n * inner + i;
    const std::int64_t begin = chunk * chunks.length, end = std::min(n, begin + chunks.length);
    Acc acc = Op::identity();
#pragma unroll 4
    for (std::int64_t j = begin; j < end; ++j) acc = op(acc, static_cast<Acc>(column[j * inner]));
    out[item] = static_cast<Out>(acc);
  }
}

template <template <class> class Reduction, class T>
void reduce_typed(CudaBackend& backend, const T* x, T* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  using Op = Reduction<T>;
  using Acc = typename Op::Acc;
  const cuda::DeviceState& state = backend.state();
  state.activate();
  if (inner == 1 && n <= kWarpRow) {
    reduce_rows_by_warp<Op, T, T><<<grid_for(outer, kWarpsPerBlock), kThreads, 0, state.stream>>>(x, out, outer, n);
    cuda::check_launch("reduce");
    return;
  }
  if (inner == 1) {
    const Chunks chunks = split(n, std::min(ceil_div(n, kBlockChunk), ceil_div(kTargetBlocks, outer)));
    // Freed on return: a later user of the block is queued after these kernels on the same stream.
    const auto partial = backend.allocate(static_cast<std::size_t>(outer * chunks.count) * sizeof(Acc));
    Acc* p = static_cast<Acc*>(partial->data());
    reduce_row_chunks<Op, T><<<grid_for(outer * chunks.count, 1), kThreads, 0, state.stream>>>(x, p, outer, n, chunks);
    cuda::check_launch("reduce");
    reduce_rows_by_warp<Op, Acc, T>
        <<<grid_for(outer, kWarpsPerBlock), kThreads, 0, state.stream>>>(p, out, outer, chunks.count);
    cuda::check_launch("reduce");
    return;
  }
  const Chunks chunks =
      split(n, std::max<std::int64_t>(1, std::min(ceil_div(n, kColumnChunk), kTargetThreads / (outer * inner))));
  const std::int64_t columns = outer * inner;
  if (chunks.count == 1) {
    reduce_columns<Op, T, T>
        <<<grid_for(columns, kThreads), kThreads, 0, state.stream>>>(x, out, outer, n, inner, chunks);
    cuda::check_launch("reduce");
    return;
  }
  const auto partial = backend.allocate(static_cast<std::size_t>(columns * chunks.count) * sizeof(Acc));
  Acc* p = static_cast<Acc*>(partial->data());
  reduce_columns<Op, T, Acc>
      <<<grid_for(columns * chunks.count, kThreads), kThreads, 0, state.stream>>>(x, p, outer, n, inner, chunks);
  cuda::check_launch("reduce");
  reduce_columns<Op, Acc, T><<<grid_for(columns, kThreads), kThreads, 0, state.stream>>>(
      p, out, outer, chunks.count, inner, Chunks{1, chunks.count});
  cuda::check_launch("reduce");
}

// Prefix sums of contiguous rows, one warp per row. Each step covers 32 * kScanPerLane elements, kScanPerLane
// consecutive ones per lane: the lane sums its own, a warp scan adds the lanes before it, and the step's total
// carries into the next. `reverse` scans the positions p = 0, 1, ... of elements j = n - 1 - p.
constexpr int kScanPerLane = 8;

template <class T>
__global__ void cumsum_rows(const T* x, T* out, std::int64_t rows, std::int64_t n, bool reverse) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += step) {
    const T* src = x + r * n;
    T* dst = out + r * n;
    double carry = 0;  // the sum of the earlier steps
    for (std::int64_t base = 0; base < n; base += 32 * kScanPerLane) {
      const std::int64_t first = base + static_cast<std::int64_t>(lane) * kScanPerLane;
      double own[kScanPerLane];  // inclusive prefix sums of this lane's elements
      double running = 0;
#pragma unroll
      for (int k = 0; k < kScanPerLane; ++k) {
        const std::int64_t p = first + k;
        if (p < n) running += src[reverse ? n - 1 - p : p];
        own[k] = running;
      }
      double inclusive = running;  // Hillis-Steele scan of the lanes' totals
#pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const double below = __shfl_up_sync(kFullWarp, inclusive, offset);
        if (lane >= offset) inclusive += below;
      }
      const double before_lane = __shfl_up_sync(kFullWarp, inclusive, 1);
      const double offset = carry + (lane == 0 ? 0.0 : before_lane);
#pragma unroll
      for (int k = 0; k < kScanPerLane; ++k) {
        const std::int64_t p = first + k;
        if (p < n) dst[reverse ? n - 1 - p : p] = static_cast<T>(offset + own[k]);
      }
      carry += __shfl_sync(kFullWarp, inclusive, 31);
    }
  }
}

// inner > 1: one thread per (o, i) column walks down n in order (a warp reads adjacent i: coalesced).
template <class T>
void cumsum_columns(const cuda::DeviceState& state, const T* x, T* out, std::int64_t outer, std::int64_t n,
                    std::int64_t inner, bool reverse) {
  for_range(state, "cumsum", outer * inner, [=] __device__(std::int64_t column) {
    const std::int64_t base = column / inner * n * inner + column % inner;
    double total = 0;
    for (std::int64_t step = 0; step < n; ++step) {
      const std::int64_t at = base + (reverse ? n - 1 - step : step) * inner;
      total += x[at];
      out[at] = static_cast<T>(total);
    }
  });
}

}  // namespace

void CudaBackend::reduce(ReduceOp op, const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n,
                         std::int64_t inner) {
  dispatch_floating(x.dtype(), "reduce", [&](auto tag) {
    using T = decltype(tag);
    if (outer * inner == 0) return;
    if (op == ReduceOp::sum) reduce_typed<SumReduction>(*this, x.data<T>(), out.data<T>(), outer, n, inner);
    else reduce_typed<MaxReduction>(*this, x.data<T>(), out.data<T>(), outer, n, inner);
  });
}

void CudaBackend::cumsum(const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n, std::int64_t inner,
                         bool reverse) {
  dispatch_floating(x.dtype(), "cumsum", [&](auto tag) {
    using T = decltype(tag);
    if (outer * n * inner == 0) return;
    if (inner > 1) return cumsum_columns(*state_, x.data<T>(), out.data<T>(), outer, n, inner, reverse);
    state_->activate();
    cumsum_rows<T><<<grid_for(outer, kWarpsPerBlock), kThreads, 0, state_->stream>>>(x.data<T>(), out.data<T>(),
                                                                                     outer, n, reverse);
    cuda::check_launch("cumsum");
  });
}

}  // namespace ellipse
