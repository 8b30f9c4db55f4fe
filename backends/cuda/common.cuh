#pragma once
// Shared by the CUDA kernels (.cu files): strided layouts and launch helpers.
#include <array>
#include <cstdint>
#include <string>

#include "backends/cuda/device_state.hpp"
#include "backends/kernel_helpers.hpp"

namespace ellipse::cuda {

inline constexpr int kThreads = 256;  // threads per block of the elementwise kernels
inline constexpr int kMaxDims = 8;    // after coalescing; more is refused with a message

// Blocks for `items` work items, `per_block` to a block, capped at 65535: the kernels loop (grid-stride)
// over any beyond the cap.
inline unsigned grid_for(std::int64_t items, std::int64_t per_block) {
  const std::int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// Enough blocks of kThreads for n items (grid_for with the elementwise kernels' block size).
inline unsigned blocks_for(std::int64_t n) { return grid_for(n, kThreads); }

// Reports a failed launch (bad configuration, no kernel image for this GPU) at the op that made it.
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

// The coalesced geometry of N same-shaped operands, passed to kernels by value.
template <int N>
struct Layout {
  int dims = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[N][kMaxDims] = {};

  // Element offsets of each operand for the row-major index `linear`.
  __device__ void offsets(std::int64_t linear, std::int64_t (&offset)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) offset[k] = 0;
    for (int d = dims - 1; d >= 0; --d) {
      const std::int64_t index = linear % shape[d];
      linear /= shape[d];
#pragma unroll
      for (int k = 0; k < N; ++k) offset[k] += index * strides[k][d];
    }
  }
};

template <int N>
Layout<N> make_layout(const char* op, const Shape& shape, const std::array<const Strides*, N>& strides) {
  const Coalesced<N> c = coalesce(shape, strides);
  if (c.dims.size() > kMaxDims)
    raise(std::string(op) + ": the CUDA kernels take at most " + std::to_string(kMaxDims) +
          " non-mergeable axes, got shape " + to_string(shape));
  Layout<N> layout;
  layout.dims = static_cast<int>(c.dims.size());
  for (int d = 0; d < layout.dims; ++d) {
    layout.shape[d] = c.dims[d];
    for (int k = 0; k < N; ++k) layout.strides[k][d] = c.strides[k][d];
  }
  return layout;
}

template <int N, class F>
__global__ void for_each_kernel(std::int64_t n, Layout<N> layout, F f) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    std::int64_t offset[N];
    layout.offsets(i, offset);
    f(offset);
  }
}

// Calls f(offsets) on the device for every index of `shape`; offsets[k] is operand k's element offset.
template <int N, class F>
void for_each_strided(const DeviceState& state, const char* op, const Shape& shape,
                      const std::array<const Strides*, N>& strides, F f) {
  const std::int64_t n = numel(shape);
  if (n == 0) return;
  const Layout<N> layout = make_layout<N>(op, shape, strides);
  state.activate();
  for_each_kernel<N><<<blocks_for(n), kThreads, 0, state.stream>>>(n, layout, f);
  check_launch(op);
}

// Calls f(i) on the device for i in [0, n) (contiguous work).
template <class F>
__global__ void for_range_kernel(std::int64_t n, F f) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) f(i);
}

template <class F>
void for_range(const DeviceState& state, const char* op, std::int64_t n, F f) {
  if (n == 0) return;
  state.activate();
  for_range_kernel<<<blocks_for(n), kThreads, 0, state.stream>>>(n, f);
  check_launch(op);
}

}  // namespace ellipse::cuda

// ---------------------------------------------------------------------------------------------------------------
// Warp and block reductions (reduce.cu, nn.cu). Every thread of the warp, or of the block (blockDim.x a multiple of
// 32, blockDim.y and .z 1), must make the call; each gets the total. The combining order is fixed, so results
// repeat exactly from run to run.
namespace ellipse::cuda {

inline constexpr unsigned kFullWarp = 0xffffffffu;

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

// fmax: NaN only when both are NaN, like the CPU kernels' std::max(best, x), which skips a NaN x.
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return fmax(a, b);
  }
};

// A butterfly: lane l combines with lane l ^ offset, so for an op that commutes every lane ends with the same bits.
template <class T, class Op>
__device__ T warp_reduce(T value, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_xor_sync(kFullWarp, value, offset));
  return value;
}

template <class T, class Op>
__device__ T block_reduce(T value, Op op) {
  __shared__ T warp_totals[32];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  value = warp_reduce(value, op);
  if (lane == 0) warp_totals[warp] = value;
  __syncthreads();
  value = warp_totals[0];
  for (int w = 1; w < static_cast<int>(blockDim.x) / 32; ++w) value = op(value, warp_totals[w]);
  __syncthreads();  // the next call writes warp_totals again
  return value;
}

}  // namespace ellipse::cuda
