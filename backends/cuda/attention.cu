// CUDA kernels of fused attention in f32, flash-attention style: no [Nq, Nk] matrix ever reaches global memory.
//
// Forward: a block takes kRowsPerBlock query rows of one (b, h) slice and walks over the keys in tiles of
// kTileRows rows staged in shared memory, keeping an online softmax per row (running max and sum in the log2
// domain, the output accumulator rescaled when the max grows). Causal blocks stop at the last key their last
// row sees. It writes the output and each row's log-sum-exp.
// Backward, two deterministic passes without atomics: the first, over query blocks and key tiles, gives gq and
// D_i = gout_i . out_i; the second, over key blocks and query tiles, gives gk and gv. Both recompute
// P = exp(S - lse) from the forward's log-sum-exp.
//
// A row's dh features are split over a group of kHeadDim / 16 consecutive threads of one warp, 16 per thread
// in float4 runs (see column()); dot products of a row are summed over its group with warp shuffles. kHeadDim
// (16, 32, 64 or 128) is the smallest instantiated width >= dh: the columns past dh are zero in registers and
// tiles, so they add nothing.
#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/common.cuh"

namespace ellipse {

namespace {

constexpr int kColumnsPerThread = 16;
constexpr int kRuns = kColumnsPerThread / 4;  // float4 runs per thread and row
constexpr int kRowsPerBlock = 64;      // query rows (forward, gq) or key rows (gk, gv) of one block
constexpr int kTileRows = 32;          // key rows (forward, gq) or query rows (gk, gv) of one shared-memory tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int kHeadDim>
constexpr int kLanes = kHeadDim / kColumnsPerThread;  // threads per row
template <int kHeadDim>
constexpr int kBlockThreads = kRowsPerBlock * kLanes<kHeadDim>;

// One call's operands, [slices, rows, dh] row-major (lse and delta [slices, nq]); pointers a kernel does not
// use are null.
struct AttentionArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* metric = nullptr;  // null for m = 1, else metric_rows (1 or nq) rows per slice
  float* out = nullptr;           // written by the forward, read by the backward
  float* lse = nullptr;           // likewise; natural log
  const float* grad_out = nullptr;
  float* delta = nullptr;  // D_i, written by the gq pass for the gk/gv pass
  float* grad_q = nullptr;
  float* grad_k = nullptr;
  float* grad_v = nullptr;
  std::int64_t slices = 0;
  int nq = 0, nk = 0, dh = 0, metric_rows = 0;
  bool causal = false;
  float scale = 1;

  // The same arguments with every pointer moved to the rows of slice s.
  __device__ AttentionArgs at_slice(std::int64_t s) const {
    AttentionArgs a = *this;
    const std::int64_t queries = s * nq * dh, keys = s * nk * dh;
    auto advance = [](auto*& pointer, std::int64_t by) {
      if (pointer) pointer += by;
    };
    advance(a.q, queries);
    advance(a.out, queries);
    advance(a.grad_out, queries);
    advance(a.grad_q, queries);
    advance(a.k, keys);
    advance(a.v, keys);
    advance(a.grad_k, keys);
    advance(a.grad_v, keys);
    advance(a.metric, s * metric_rows * dh);
    advance(a.lse, s * nq);
    advance(a.delta, s * nq);
    return a;
  }

  // Whether query row i sees key j (scaled_softmax's causal rule: j <= i + nk - nq).
  __device__ bool sees(int i, int j) const { return j < nk && (!causal || j <= i + nk - nq); }

  // The keys [0, end) that some query row of the block of rows starting at `first` sees.
  __device__ int key_end(int first) const {
    const int last = min(first + kRowsPerBlock, nq) - 1;
    return causal ? min(nk, last + nk - nq + 1) : nk;
  }

  // m at query row i and column c of the slice.
  __device__ float metric_at(int i, int c) const {
    return metric ? metric[static_cast<std::int64_t>(metric_rows == 1 ? 0 : i) * dh + c] : 1.0f;
  }

  // The query as the scores see it, scale * q * m, at row i and column c of the slice.
  __device__ float scaled_query(int i, int c) const {
    return scale * q[static_cast<std::int64_t>(i) * dh + c] * metric_at(i, c);
  }
};

// The column of a row that thread `lane` of its group holds as its element u: runs of 4, the group's
// lanes side by side, so that a warp reads shared memory as 16-byte vectors without bank conflicts.
template <int kHeadDim>
__device__ int column(int lane, int u) {
  return 4 * (lane + kLanes<kHeadDim> * (u / 4)) + u % 4;
}

using Fragment = float[kColumnsPerThread];  // a thread's part of one row

// This thread's part of a row of the matrix at `src` (dh columns), zero past dh and for an invalid row.
template <int kHeadDim>
__device__ void load_fragment(Fragment& x, const float* src, bool valid, int dh, int lane) {
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) {
    const int c = column<kHeadDim>(lane, u);
    x[u] = valid && c < dh ? src[c] : 0.0f;
  }
}

// This thread's part of query row i, scale * q * m; zero for an invalid row.
template <int kHeadDim>
__device__ void load_query_fragment(Fragment& x, const AttentionArgs& a, int i, bool valid, int lane) {
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) {
    const int c = column<kHeadDim>(lane, u);
    x[u] = valid && c < a.dh ? a.scaled_query(i, c) : 0.0f;
  }
}

template <int kHeadDim>
__device__ void store_fragment(const Fragment& x, float* dst, int dh, int lane) {
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) {
    const int c = column<kHeadDim>(lane, u);
    if (c < dh) dst[c] = x[u];
  }
}

// The sum over a row's group of threads; every thread of the group gets the same (bitwise) value.
template <int kHeadDim>
__device__ float group_sum(float x) {
#pragma unroll
  for (int offset = kLanes<kHeadDim> / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// This thread's part of x . row, row a tile row in shared memory.
template <int kHeadDim>
__device__ float partial_dot(const Fragment& x, const float* row, int lane) {
  float total = 0.0f;
#pragma unroll
  for (int run = 0; run < kRuns; ++run) {
    const float4 y = *reinterpret_cast<const float4*>(row + column<kHeadDim>(lane, 4 * run));
    total += x[4 * run] * y.x + x[4 * run + 1] * y.y + x[4 * run + 2] * y.z + x[4 * run + 3] * y.w;
  }
  return total;
}

// acc += a * row, row a tile row in shared memory.
template <int kHeadDim>
__device__ void add_scaled(Fragment& acc, float a, const float* row, int lane) {
#pragma unroll
  for (int run = 0; run < kRuns; ++run) {
    const float4 y = *reinterpret_cast<const float4*>(row + column<kHeadDim>(lane, 4 * run));
    acc[4 * run] += a * y.x;
    acc[4 * run + 1] += a * y.y;
    acc[4 * run + 2] += a * y.z;
    acc[4 * run + 3] += a * y.w;
  }
}

template <int kHeadDim>
using Tile = float[kTileRows][kHeadDim];

// Fills a tile with rows [first, first + kTileRows) of value(row, column), zero past `rows` and past dh.
template <int kHeadDim, class Value>
__device__ void load_tile(Tile<kHeadDim>& tile, int first, int rows, int dh, Value value) {
  for (int at = threadIdx.x; at < kTileRows * kHeadDim; at += kBlockThreads<kHeadDim>) {
    const int r = at / kHeadDim, c = at % kHeadDim;
    tile[r][c] = first + r < rows && c < dh ? value(first + r, c) : 0.0f;
  }
}

// The key and value rows [first, first + kTileRows) of the slice.
template <int kHeadDim>
__device__ void load_key_value_tiles(Tile<kHeadDim>& keys, Tile<kHeadDim>& values, const AttentionArgs& a, int first) {
  load_tile<kHeadDim>(keys, first, a.nk, a.dh, [&](int j, int c) { return a.k[std::int64_t{j} * a.dh + c]; });
  load_tile<kHeadDim>(values, first, a.nk, a.dh, [&](int j, int c) { return a.v[std::int64_t{j} * a.dh + c]; });
}

// A block's place: the slice and the first of its kRowsPerBlock rows, out of `rows` rows per slice.
struct BlockRows {
  std::int64_t slice;
  int first;
};

__device__ BlockRows block_rows(int rows) {
  const int blocks_per_slice = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  return {blockIdx.x / blocks_per_slice, static_cast<int>(blockIdx.x % blocks_per_slice) * kRowsPerBlock};
}

template <int kHeadDim>
__global__ void __launch_bounds__(kBlockThreads<kHeadDim>) attention_forward_kernel(AttentionArgs args) {
  __shared__ __align__(16) Tile<kHeadDim> keys;
  __shared__ __align__(16) Tile<kHeadDim> values;
  const BlockRows block = block_rows(args.nq);
  const AttentionArgs a = args.at_slice(block.slice);
  const int lane = threadIdx.x % kLanes<kHeadDim>;
  const int i = block.first + threadIdx.x / kLanes<kHeadDim>;
  const bool valid = i < a.nq;  // rows past nq compute along (the shuffles need every lane) but write nothing

  Fragment query, acc;
  load_query_fragment<kHeadDim>(query, a, i, valid, lane);
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) acc[u] = 0.0f;
  // Online softmax in the log2 domain. Key 0 is in the first tile and every row sees it, so row_max is finite
  // from the first tile on: the rescale factor is 0 there and never NaN.
  float row_max = -INFINITY, row_sum = 0.0f;
  const int key_end = a.key_end(block.first);
  for (int first_key = 0; first_key < key_end; first_key += kTileRows) {
    __syncthreads();  // every thread is done with the previous tiles
    load_key_value_tiles<kHeadDim>(keys, values, a, first_key);
    __syncthreads();
    float score[kTileRows];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kTileRows; ++j) {
      const float s = group_sum<kHeadDim>(partial_dot<kHeadDim>(query, keys[j], lane)) * kLog2e;
      score[j] = a.sees(i, first_key + j) ? s : -INFINITY;
      tile_max = fmaxf(tile_max, score[j]);
    }
    const float new_max = fmaxf(row_max, tile_max);
    const float rescale = exp2f(row_max - new_max);
    row_sum *= rescale;
#pragma unroll
    for (int u = 0; u < kColumnsPerThread; ++u) acc[u] *= rescale;
#pragma unroll
    for (int j = 0; j < kTileRows; ++j) {
      const float weight = exp2f(score[j] - new_max);
      row_sum += weight;
      add_scaled<kHeadDim>(acc, weight, values[j], lane);
    }
    row_max = new_max;
  }
  if (!valid) return;
  const float inverse_sum = 1.0f / row_sum;
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) acc[u] *= inverse_sum;
  store_fragment<kHeadDim>(acc, a.out + std::int64_t{i} * a.dh, a.dh, lane);
  if (lane == 0) a.lse[i] = (row_max + log2f(row_sum)) * kLn2;
}

// Backward, pass 1: gq = scale * m * sum_j dS_ij k_j for a block of query rows, and D_i for pass 2.
template <int kHeadDim>
__global__ void __launch_bounds__(kBlockThreads<kHeadDim>) attention_grad_query_kernel(AttentionArgs args) {
  __shared__ __align__(16) Tile<kHeadDim> keys;
  __shared__ __align__(16) Tile<kHeadDim> values;
  const BlockRows block = block_rows(args.nq);
  const AttentionArgs a = args.at_slice(block.slice);
  const int lane = threadIdx.x % kLanes<kHeadDim>;
  const int i = block.first + threadIdx.x / kLanes<kHeadDim>;
  const bool valid = i < a.nq;

  Fragment query, grad_out, grad_query;
  load_query_fragment<kHeadDim>(query, a, i, valid, lane);
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) grad_query[u] = 0.0f;
  load_fragment<kHeadDim>(grad_out, a.grad_out + std::int64_t{i} * a.dh, valid, a.dh, lane);
  float partial_delta = 0.0f;
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) {
    const int c = column<kHeadDim>(lane, u);
    if (valid && c < a.dh) partial_delta += grad_out[u] * a.out[std::int64_t{i} * a.dh + c];
  }
  const float delta = group_sum<kHeadDim>(partial_delta);
  const float lse2 = valid ? a.lse[i] * kLog2e : 0.0f;

  const int key_end = a.key_end(block.first);
  for (int first_key = 0; first_key < key_end; first_key += kTileRows) {
    __syncthreads();
    load_key_value_tiles<kHeadDim>(keys, values, a, first_key);
    __syncthreads();
#pragma unroll 2  // 4 spills registers with kHeadDim 128
    for (int j = 0; j < kTileRows; ++j) {
      const float s = group_sum<kHeadDim>(partial_dot<kHeadDim>(query, keys[j], lane));
      const float dp = group_sum<kHeadDim>(partial_dot<kHeadDim>(grad_out, values[j], lane));
      const float p = valid && a.sees(i, first_key + j) ? exp2f(fmaf(s, kLog2e, -lse2)) : 0.0f;
      add_scaled<kHeadDim>(grad_query, p * (dp - delta), keys[j], lane);
    }
  }
  if (!valid) return;
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) {
    const int c = column<kHeadDim>(lane, u);
    if (c < a.dh) grad_query[u] *= a.scale * a.metric_at(i, c);
  }
  store_fragment<kHeadDim>(grad_query, a.grad_q + std::int64_t{i} * a.dh, a.dh, lane);
  if (lane == 0) a.delta[i] = delta;
}

// Backward, pass 2: gk = sum_i dS_ij (scale * q_i * m_i) and gv = sum_i P_ij gout_i for a block of key rows.
template <int kHeadDim>
__global__ void __launch_bounds__(kBlockThreads<kHeadDim>) attention_grad_key_value_kernel(AttentionArgs args) {
  __shared__ __align__(16) Tile<kHeadDim> queries;  // scale * q * m
  __shared__ __align__(16) Tile<kHeadDim> grad_outs;
  __shared__ float tile_lse2[kTileRows], tile_delta[kTileRows];
  const BlockRows block = block_rows(args.nk);
  const AttentionArgs a = args.at_slice(block.slice);
  const int lane = threadIdx.x % kLanes<kHeadDim>;
  const int j = block.first + threadIdx.x / kLanes<kHeadDim>;
  const bool valid = j < a.nk;

  Fragment key, value, grad_key, grad_value;
  load_fragment<kHeadDim>(key, a.k + std::int64_t{j} * a.dh, valid, a.dh, lane);
  load_fragment<kHeadDim>(value, a.v + std::int64_t{j} * a.dh, valid, a.dh, lane);
#pragma unroll
  for (int u = 0; u < kColumnsPerThread; ++u) grad_key[u] = grad_value[u] = 0.0f;

  // Causal: query i sees key j when i >= j - (nk - nq), so the block's first key bounds the first query.
  const int first_query = a.causal ? max(0, block.first - (a.nk - a.nq)) : 0;
  for (int tile_first = first_query; tile_first < a.nq; tile_first += kTileRows) {
    __syncthreads();
    load_tile<kHeadDim>(queries, tile_first, a.nq, a.dh, [&](int i, int c) { return a.scaled_query(i, c); });
    load_tile<kHeadDim>(grad_outs, tile_first, a.nq, a.dh,
                        [&](int i, int c) { return a.grad_out[std::int64_t{i} * a.dh + c]; });
    if (threadIdx.x < kTileRows) {
      const int i = tile_first + threadIdx.x;
      tile_lse2[threadIdx.x] = i < a.nq ? a.lse[i] * kLog2e : 0.0f;
      tile_delta[threadIdx.x] = i < a.nq ? a.delta[i] : 0.0f;
    }
    __syncthreads();
#pragma unroll 4
    for (int r = 0; r < kTileRows; ++r) {
      const int i = tile_first + r;
      const float s = group_sum<kHeadDim>(partial_dot<kHeadDim>(key, queries[r], lane));
      const float dp = group_sum<kHeadDim>(partial_dot<kHeadDim>(value, grad_outs[r], lane));
      const float p = valid && i < a.nq && a.sees(i, j) ? exp2f(fmaf(s, kLog2e, -tile_lse2[r])) : 0.0f;
      add_scaled<kHeadDim>(grad_value, p, grad_outs[r], lane);
      add_scaled<kHeadDim>(grad_key, p * (dp - tile_delta[r]), queries[r], lane);
    }
  }
  if (!valid) return;
  store_fragment<kHeadDim>(grad_key, a.grad_k + std::int64_t{j} * a.dh, a.dh, lane);
  store_fragment<kHeadDim>(grad_value, a.grad_v + std::int64_t{j} * a.dh, a.dh, lane);
}

void require_f32(const Tensor& q, const char* op) {
  if (q.dtype() != DType::f32)
    cuda::raise(std::string(op) + ": the CUDA kernels are f32 only, got " + std::string(dtype_name(q.dtype())));
}

AttentionArgs make_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale,
                        bool causal) {
  AttentionArgs args;
  args.q = q.data<float>();
  args.k = k.data<float>();
  args.v = v.data<float>();
  args.metric = metric.defined() ? metric.data<float>() : nullptr;
  args.slices = q.shape()[0] * q.shape()[1];
  args.nq = static_cast<int>(q.shape()[2]);
  args.nk = static_cast<int>(k.shape()[2]);
  args.dh = static_cast<int>(q.shape()[3]);
  args.metric_rows = metric.defined() ? static_cast<int>(metric.shape()[2]) : 0;
  args.causal = causal;
  args.scale = static_cast<float>(scale);
  return args;
}

// The widest head dim the kernels are instantiated for.
constexpr int kMaxHeadDim = 128;

// Calls f(std::integral_constant<int, W>) with W the smallest instantiated head-dim width >= dh.
template <class F>
void with_head_dim(const char* op, int dh, F&& f) {
  if (dh <= 16) return f(std::integral_constant<int, 16>{});
  if (dh <= 32) return f(std::integral_constant<int, 32>{});
  if (dh <= 64) return f(std::integral_constant<int, 64>{});
  if (dh <= kMaxHeadDim) return f(std::integral_constant<int, kMaxHeadDim>{});
  cuda::raise(std::string(op) + ": the CUDA kernels take head dims up to " + std::to_string(kMaxHeadDim) + ", got " +
              std::to_string(dh));
}

// Blocks of kRowsPerBlock rows over every slice.
unsigned blocks_over(std::int64_t slices, int rows) {
  return static_cast<unsigned>(slices * ((rows + kRowsPerBlock - 1) / kRowsPerBlock));
}

void launch_forward(const cuda::DeviceState& state, const AttentionArgs& args) {
  const unsigned blocks = blocks_over(args.slices, args.nq);
  if (blocks == 0) return;
  state.activate();
  with_head_dim("attention", args.dh, [&](auto width) {
    constexpr int kHeadDim = decltype(width)::value;
    attention_forward_kernel<kHeadDim><<<blocks, kBlockThreads<kHeadDim>, 0, state.stream>>>(args);
  });
  cuda::check_launch("attention");
}

// Needs nq > 0 (else there is nothing to run, and gk, gv are 0) and args.delta for slices * nq floats.
void launch_backward(const cuda::DeviceState& state, const AttentionArgs& args) {
  state.activate();
  with_head_dim("attention_backward", args.dh, [&](auto width) {
    constexpr int kHeadDim = decltype(width)::value;
    attention_grad_query_kernel<kHeadDim>
        <<<blocks_over(args.slices, args.nq), kBlockThreads<kHeadDim>, 0, state.stream>>>(args);
    cuda::check_launch("attention_backward");
    attention_grad_key_value_kernel<kHeadDim>
        <<<blocks_over(args.slices, args.nk), kBlockThreads<kHeadDim>, 0, state.stream>>>(args);
  });
  cuda::check_launch("attention_backward");
}

// The kernels index contiguous [B, H, N, dh] operands, while the layers pass strided views (q, k and v of one
// qkv output; out in [B, N, H, dh] memory): those go through contiguous stand-ins on the device.
Tensor contiguous_operand(Backend& backend, const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor packed = empty(t.shape(), t.dtype(), t.device());
  backend.copy(t, packed);
  return packed;
}

// An output that the kernels write contiguously: a stand-in where the target is strided, which copy_back()
// then moves into the target.
struct StagedOutput {
  Backend& backend;
  Tensor target, staged;
  StagedOutput(Backend& b, const Tensor& t)
      : backend(b), target(t), staged(t.is_contiguous() ? t : empty(t.shape(), t.dtype(), t.device())) {}
  float* data() const { return staged.data<float>(); }
  void copy_back() const {
    if (!target.is_contiguous()) backend.copy(staged, target);
  }
};

}  // namespace

bool CudaBackend::supports_fused_attention(DType dtype, std::int64_t head_dim) const {
  return dtype == DType::f32 && head_dim <= kMaxHeadDim;
}

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale,
                            bool causal, const Tensor& out, const Tensor& lse) {
  require_f32(q, "attention");
  const Tensor qc = contiguous_operand(*this, q), kc = contiguous_operand(*this, k), vc = contiguous_operand(*this, v);
  AttentionArgs args = make_args(qc, kc, vc, metric, scale, causal);
  const StagedOutput staged_out(*this, out);
  args.out = staged_out.data();
  args.lse = lse.data<float>();
  launch_forward(*state_, args);
  staged_out.copy_back();
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                                     const Tensor& out, const Tensor& lse, const Tensor& gout, double scale,
                                     bool causal, const Tensor& gq, const Tensor& gk, const Tensor& gv) {
  require_f32(q, "attention_backward");
  const Tensor qc = contiguous_operand(*this, q), kc = contiguous_operand(*this, k), vc = contiguous_operand(*this, v);
  AttentionArgs args = make_args(qc, kc, vc, metric, scale, causal);
  if (args.slices * args.nq == 0) {  // no queries: the keys and values get no gradient
    fill(gk, 0.0);
    fill(gv, 0.0);
    return;
  }
  const Tensor out_c = contiguous_operand(*this, out), gout_c = contiguous_operand(*this, gout);
  const StagedOutput staged_gq(*this, gq), staged_gk(*this, gk), staged_gv(*this, gv);
  args.out = out_c.data<float>();
  args.lse = lse.data<float>();
  args.grad_out = gout_c.data<float>();
  args.grad_q = staged_gq.data();
  args.grad_k = staged_gk.data();
  args.grad_v = staged_gv.data();
  // Freed when this returns, while the kernels may still run: safe, as the allocator hands the block out
  // again only to work queued after them on the one stream (the stand-ins above too).
  const std::shared_ptr<Storage> delta = allocate(static_cast<std::size_t>(args.slices * args.nq) * sizeof(float));
  args.delta = static_cast<float*>(delta->data());
  launch_backward(*state_, args);
  for (const StagedOutput* staged : {&staged_gq, &staged_gk, &staged_gv}) staged->copy_back();
}

}  // namespace ellipse
