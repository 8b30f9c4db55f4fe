// CUDA kernels: softmax, elliptical attention's metric, layer norm, embedding, cross-entropy (forward and
// backward). Row-wise work goes to one warp per row with the row held in registers when rows are short (up to 1024
// f32 or 512 f64 elements: the transformer's rows), else to one block per row that rereads it at each pass. The
// arithmetic follows backends/cpu/nn.cpp (accumulators in T, the same formulas); nothing uses float atomics and
// every reduction combines in a fixed order, so results repeat exactly.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "backends/cuda/common.cuh"

namespace ellipse {

using cuda::for_range;
using cuda::grid_for;

namespace {

using cuda::kFullWarp;
using cuda::MaxOp;
using cuda::SumOp;

template <class T>
__device__ T infinity() {
  return std::numeric_limits<T>::infinity();
}

// ---- Rows: who works on a row, and how its values are read ----

// The threads that share one row: a warp or a block. reduce() gives each of them the row's total.
struct WarpTeam {
  static constexpr int size = 32;
  int rank;
  template <class T, class Op>
  __device__ T reduce(T value, Op op) const {
    return cuda::warp_reduce(value, op);
  }
};

struct BlockTeam {
  int rank, size;
  template <class T, class Op>
  __device__ T reduce(T value, Op op) const {
    return cuda::block_reduce(value, op);
  }
};

// A lane's share of a row of `count` <= 32 K: elements j = rank + 32 k, read once into registers.
template <class T, int K>
struct HeldRow {
  int rank, count;
  T value[K];

  __device__ HeldRow(const WarpTeam& team, const T* row, std::int64_t length)
      : rank(team.rank), count(static_cast<int>(length)) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + 32 * k;
      value[k] = j < count ? row[j] : T(0);
    }
  }
  // f(j, value_j) over the share, in order.
  template <class F>
  __device__ void each(F f) const {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rank + 32 * k;
      if (j < count) f(j, value[k]);
    }
  }
};

// A thread's share of a row of `count`: elements j = rank + size k, read from memory at each pass.
template <class T>
struct StreamedRow {
  const T* src;
  int rank, size;
  std::int64_t count;

  __device__ StreamedRow(const BlockTeam& team, const T* row, std::int64_t length)
      : src(row), rank(team.rank), size(team.size), count(length) {}
  template <class F>
  __device__ void each(F f) const {
    for (std::int64_t j = rank; j < count; j += size) f(j, src[j]);
  }
};

// f(j, a_j, b_j) over the shares of two rows of one length.
template <class T, int K, class F>
__device__ void each_pair(const HeldRow<T, K>& a, const HeldRow<T, K>& b, F f) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = a.rank + 32 * k;
    if (j < a.count) f(j, a.value[k], b.value[k]);
  }
}

template <class T, class F>
__device__ void each_pair(const StreamedRow<T>& a, const StreamedRow<T>& b, F f) {
  for (std::int64_t j = a.rank; j < a.count; j += a.size) f(j, a.src[j], b.src[j]);
}

// Row strategies, a template argument of the row kernels. WarpRows<K>: one warp per row, K of its values per lane
// in registers (rows of at most 32 K). BlockRows: one block per row, rereading it at each pass (longer rows, whose
// later passes mostly hit the caches).
template <int K>
struct WarpRows {
  using Team = WarpTeam;
  template <class T>
  using Row = HeldRow<T, K>;
  // Small blocks: with a long row in registers a thread may need over 128 registers, and then blocks of 4 warps
  // still fit several to an SM.
  static constexpr int kThreads = 128, kRowsPerBlock = kThreads / 32;
  static unsigned blocks(std::int64_t rows) { return grid_for(rows, kRowsPerBlock); }
  __device__ static Team team() { return {static_cast<int>(threadIdx.x) % 32}; }
  __device__ static std::int64_t first_row() {
    return static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  }
  __device__ static std::int64_t row_step() { return static_cast<std::int64_t>(gridDim.x) * kRowsPerBlock; }
};

struct BlockRows {
  using Team = BlockTeam;
  template <class T>
  using Row = StreamedRow<T>;
  static constexpr int kThreads = cuda::kThreads;
  static unsigned blocks(std::int64_t rows) { return grid_for(rows, 1); }
  __device__ static Team team() { return {static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)}; }
  __device__ static std::int64_t first_row() { return blockIdx.x; }
  __device__ static std::int64_t row_step() { return gridDim.x; }
};

// The longest row held in registers: 32 values a lane for f32 (a 1024-key attention row), 16 for f64.
template <class T>
constexpr std::int64_t kMaxHeldRow = sizeof(T) == 4 ? 1024 : 512;

// Calls launch(Rows{}) with the strategy for rows of n elements (WarpRows<K> with the smallest K that holds n),
// which launches its kernel on the device's stream; then checks the launch.
template <class T, class Launch>
void launch_rows(const cuda::DeviceState& state, const char* op, std::int64_t n, Launch launch) {
  state.activate();
  if (n <= 32) launch(WarpRows<1>{});
  else if (n <= 64) launch(WarpRows<2>{});
  else if (n <= 128) launch(WarpRows<4>{});
  else if (n <= 256) launch(WarpRows<8>{});
  else if (n <= 512) launch(WarpRows<16>{});
  else if constexpr (kMaxHeldRow<T> >= 1024) {
    if (n <= 1024) launch(WarpRows<32>{});
    else launch(BlockRows{});
  } else {
    launch(BlockRows{});
  }
  cuda::check_launch(op);
}

// ---- Softmax ----

// Rows of contiguous [outer, n, 1].
template <class T, class Rows>
__global__ void softmax_rows_kernel(const T* x, T* y, std::int64_t rows, std::int64_t n, bool log_output) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const typename Rows::template Row<T> in(team, x + r * n, n);
    T* out = y + r * n;
    T max = -infinity<T>();
    in.each([&](std::int64_t, T v) { max = fmax(max, v); });
    max = team.reduce(max, MaxOp{});
    if (max == -infinity<T>()) max = T(0);  // avoids -inf - -inf: an all -inf row is 0 / 0 = NaN, as on the CPU
    T total = 0;
    in.each([&](std::int64_t, T v) { total += exp(v - max); });
    total = team.reduce(total, SumOp{});
    if (log_output) {
      const T log_total = log(total) + max;
      in.each([&](std::int64_t j, T v) { out[j] = v - log_total; });
    } else {
      const T scale = T(1) / total;
      in.each([&](std::int64_t j, T v) { out[j] = exp(v - max) * scale; });
    }
  }
}

// inner > 1: one thread per (o, i) lane, whose n elements are `inner` apart (a warp reads adjacent i: coalesced).
template <class T>
void softmax_lanes(const cuda::DeviceState& state, const T* x, T* y, std::int64_t outer, std::int64_t n,
                   std::int64_t inner, bool log_output) {
  for_range(state, "softmax", outer * inner, [=] __device__(std::int64_t lane) {
    const std::int64_t base = lane / inner * n * inner + lane % inner;
    const T* in = x + base;
    T* out = y + base;
    T max = -infinity<T>();
    for (std::int64_t j = 0; j < n; ++j) max = fmax(max, in[j * inner]);
    if (max == -infinity<T>()) max = T(0);
    T total = 0;
    for (std::int64_t j = 0; j < n; ++j) total += exp(in[j * inner] - max);
    if (log_output) {
      const T log_total = log(total) + max;
      for (std::int64_t j = 0; j < n; ++j) out[j * inner] = in[j * inner] - log_total;
    } else {
      const T scale = T(1) / total;
      for (std::int64_t j = 0; j < n; ++j) out[j * inner] = exp(in[j * inner] - max) * scale;
    }
  });
}

// softmax: gx = y (g - sum(g y)); log_softmax: gx = g - exp(y) sum(g).
template <class T, class Rows>
__global__ void softmax_backward_rows_kernel(const T* y, const T* gy, T* gx, std::int64_t rows, std::int64_t n,
                                             bool log_output) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const typename Rows::template Row<T> yv(team, y + r * n, n), g(team, gy + r * n, n);
    T* out = gx + r * n;
    T dot = 0;
    each_pair(yv, g, [&](std::int64_t, T a, T b) { dot += log_output ? b : b * a; });
    dot = team.reduce(dot, SumOp{});
    each_pair(yv, g, [&](std::int64_t j, T a, T b) { out[j] = log_output ? b - exp(a) * dot : a * (b - dot); });
  }
}

template <class T>
void softmax_backward_lanes(const cuda::DeviceState& state, const T* y, const T* gy, T* gx, std::int64_t outer,
                            std::int64_t n, std::int64_t inner, bool log_output) {
  for_range(state, "softmax_backward", outer * inner, [=] __device__(std::int64_t lane) {
    const std::int64_t base = lane / inner * n * inner + lane % inner;
    T dot = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = base + j * inner;
      dot += log_output ? gy[i] : gy[i] * y[i];
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = base + j * inner;
      gx[i] = log_output ? gy[i] - exp(y[i]) * dot : y[i] * (gy[i] - dot);
    }
  });
}

// Row r is query r % nq; with the causal mask it sees keys j <= r % nq + n - nq, and the others get 0.
template <class T, class Rows>
__global__ void scaled_softmax_kernel(const T* x, T* y, std::int64_t rows, std::int64_t nq, std::int64_t n, T scale,
                                      bool causal) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const std::int64_t visible = causal ? r % nq + n - nq + 1 : n;
    const typename Rows::template Row<T> in(team, x + r * n, visible);  // the visible prefix only
    T* out = y + r * n;
    T max = -infinity<T>();
    in.each([&](std::int64_t, T v) { max = fmax(max, scale * v); });
    max = team.reduce(max, MaxOp{});
    if (max == -infinity<T>()) max = T(0);  // as softmax: an all -inf row is NaN
    T total = 0;
    in.each([&](std::int64_t, T v) { total += exp(scale * v - max); });
    const T inv = T(1) / team.reduce(total, SumOp{});
    in.each([&](std::int64_t j, T v) { out[j] = exp(scale * v - max) * inv; });
    for (std::int64_t j = visible + team.rank; j < n; j += team.size) out[j] = T(0);
  }
}

// gx = scale * y * (gy - sum(gy * y)).
template <class T, class Rows>
__global__ void scaled_softmax_backward_kernel(const T* y, const T* gy, T* gx, std::int64_t rows, std::int64_t n,
                                               T scale) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const typename Rows::template Row<T> yv(team, y + r * n, n), g(team, gy + r * n, n);
    T* out = gx + r * n;
    T dot = 0;
    each_pair(yv, g, [&](std::int64_t, T a, T b) { dot += b * a; });
    dot = team.reduce(dot, SumOp{});
    each_pair(yv, g, [&](std::int64_t j, T a, T b) { out[j] = scale * a * (b - dot); });
  }
}

// ---- Elliptical attention's metric ----

// Element strides of v and v_prev [B, H, N, dh] along batch, head and row (dh has unit stride).
struct MetricGeometry {
  std::int64_t heads, n, dh;
  std::int64_t v_batch, v_head, v_row, prev_batch, prev_head, prev_row;
};

constexpr int kMetricThreads = 64;  // few (b, h, d) columns: small blocks spread them over more SMs
constexpr int kMetricBatch = 8;     // rows loaded at once, so a thread keeps several loads in flight

// One thread per (b, h, d) column adds |v - v_prev| down the rows in order (the CPU's order: the same rounding);
// writes sum and s = sum / count, per row when causal. normalize_metric_kernel then divides s by its row's max.
template <class T>
__global__ void metric_totals_kernel(const T* v, const T* v_prev, const T* past_sum, MetricGeometry g,
                                     std::int64_t past, bool causal, T* metric, T* sum, std::int64_t columns) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t column = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; column < columns;
       column += step) {
    const std::int64_t bh = column / g.dh, d = column % g.dh, b = bh / g.heads, h = bh % g.heads;
    const T* cur = v + b * g.v_batch + h * g.v_head + d;
    const T* prev = v_prev + b * g.prev_batch + h * g.prev_head + d;
    T* s = metric + (causal ? bh * g.n * g.dh + d : column);
    T total = past_sum ? past_sum[column] : T(0);
    for (std::int64_t first = 0; first < g.n; first += kMetricBatch) {
      T diff[kMetricBatch];
#pragma unroll
      for (int k = 0; k < kMetricBatch; ++k) {
        const std::int64_t i = first + k;
        diff[k] = i < g.n ? fabs(cur[i * g.v_row] - prev[i * g.prev_row]) : T(0);
      }
#pragma unroll
      for (int k = 0; k < kMetricBatch; ++k) {
        const std::int64_t i = first + k;
        if (i < g.n) {
          total += diff[k];
          if (causal) s[i * g.dh] = total / static_cast<T>(past + i + 1);
        }
      }
    }
    sum[column] = total;
    if (!causal) *s = total / static_cast<T>(past + g.n);
  }
}

// In place on rows of dh: m = s / max(max_d s, 1e-12) (fmax skips NaN, as the CPU's std::max does).
template <class T, class Rows>
__global__ void normalize_metric_kernel(T* metric, std::int64_t rows, std::int64_t dh) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    T* m = metric + r * dh;
    const typename Rows::template Row<T> s(team, m, dh);
    T largest = -infinity<T>();
    s.each([&](std::int64_t, T v) { largest = fmax(largest, v); });
    largest = fmax(team.reduce(largest, MaxOp{}), T(1e-12));
    s.each([&](std::int64_t j, T v) { m[j] = v / largest; });
  }
}

// ---- Layer norm ----

template <class T, class Rows>
__global__ void layer_norm_kernel(const T* x, const T* weight, const T* bias, T eps, T* y, T* mean, T* rstd,
                                  std::int64_t rows, std::int64_t n) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const typename Rows::template Row<T> in(team, x + r * n, n);
    T* out = y + r * n;
    T sum = 0;
    in.each([&](std::int64_t, T v) { sum += v; });
    const T mu = team.reduce(sum, SumOp{}) / T(n);
    T squares = 0;  // two passes: the one-pass formula cancels badly when |mean| >> std
    in.each([&](std::int64_t, T v) { squares += (v - mu) * (v - mu); });
    const T inv = T(1) / sqrt(team.reduce(squares, SumOp{}) / T(n) + eps);
    in.each([&](std::int64_t j, T v) { out[j] = (v - mu) * inv * weight[j] + bias[j]; });
    if (team.rank == 0) {
      mean[r] = mu;
      rstd[r] = inv;
    }
  }
}

// gx only; the weight and bias gradients are column sums, left to the two kernels below.
template <class T, class Rows>
__global__ void layer_norm_backward_kernel(const T* x, const T* weight, const T* mean, const T* rstd, const T* gy,
                                           T* gx, std::int64_t rows, std::int64_t n) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const typename Rows::template Row<T> in(team, x + r * n, n), g(team, gy + r * n, n);
    T* out = gx + r * n;
    const T mu = mean[r], inv = rstd[r];
    T mean_g = 0, mean_gx = 0;  // means over the row of (g * w) and (g * w * xhat)
    each_pair(in, g, [&](std::int64_t j, T xv, T gv) {
      const T gw = gv * weight[j];
      mean_g += gw;
      mean_gx += gw * ((xv - mu) * inv);
    });
    mean_g = team.reduce(mean_g, SumOp{}) / T(n);
    mean_gx = team.reduce(mean_gx, SumOp{}) / T(n);
    each_pair(in, g, [&](std::int64_t j, T xv, T gv) {
      const T xhat = (xv - mu) * inv;
      out[j] = inv * (gv * weight[j] - mean_g - xhat * mean_gx);
    });
  }
}

// Threads for the weight and bias gradients: (chunk of rows, column) pairs, enough to keep an H100 busy.
constexpr std::int64_t kParamThreads = 65536;

// partial[0, c, j] = sum of g * xhat and partial[1, c, j] = sum of g over chunk c's rows, in row order (a warp reads
// adjacent columns: coalesced).
template <class T>
__global__ void layer_norm_param_partials_kernel(const T* x, const T* gy, const T* mean, const T* rstd,
                                                 std::int64_t rows, std::int64_t n, std::int64_t chunks,
                                                 std::int64_t chunk_rows, T* partial) {
  const std::int64_t items = chunks * n;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += step) {
    const std::int64_t j = item % n, begin = item / n * chunk_rows, end = std::min(rows, begin + chunk_rows);
    T gw = 0, gb = 0;
#pragma unroll 4
    for (std::int64_t r = begin; r < end; ++r) {
      const T g = gy[r * n + j];
      gw += g * ((x[r * n + j] - mean[r]) * rstd[r]);
      gb += g;
    }
    partial[item] = gw;
    partial[items + item] = gb;
  }
}

// Adds the chunks' partials, in chunk order, into gweight and gbias.
template <class T>
__global__ void layer_norm_param_totals_kernel(const T* partial, std::int64_t chunks, std::int64_t n, T* gweight,
                                               T* gbias) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += step) {
    T gw = 0, gb = 0;
    for (std::int64_t c = 0; c < chunks; ++c) {
      gw += partial[c * n + j];
      gb += partial[(chunks + c) * n + j];
    }
    gweight[j] += gw;
    gbias[j] += gb;
  }
}

// ---- Embedding ----

constexpr int kIdTile = 256;  // ids staged in shared memory at a time: one per thread of the 32 x 8 block

// Thread (j, bucket) owns the entries gweight[id, j] with id % buckets == bucket (a power of two), and adds into
// them the rows of gy with such ids, in row order: no two threads share an entry, and each entry sums its rows in
// the CPU's order. A warp (32 adjacent columns, one bucket) finds its rows among 32 ids with one ballot.
template <class T>
__global__ void embedding_backward_kernel(const std::int64_t* ids, const T* gy, T* gweight, std::int64_t rows,
                                          std::int64_t n, std::int64_t bucket_mask) {
  __shared__ std::int64_t tile[kIdTile];
  const int lane = static_cast<int>(threadIdx.x), thread = static_cast<int>(threadIdx.y) * 32 + lane;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * 32 + lane;
  const std::int64_t bucket = static_cast<std::int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  for (std::int64_t start = 0; start < rows; start += kIdTile) {
    const int count = static_cast<int>(std::min<std::int64_t>(kIdTile, rows - start));
    __syncthreads();  // every warp is done with the previous tile
    if (thread < count) tile[thread] = ids[start + thread];
    __syncthreads();
    for (int first = 0; first < count; first += 32) {
      const int t = first + lane;
      unsigned mine = __ballot_sync(kFullWarp, t < count && (tile[t] & bucket_mask) == bucket);
      while (mine != 0) {
        const int k = __ffs(static_cast<int>(mine)) - 1;
        mine &= mine - 1;
        if (j < n) gweight[tile[first + k] * n + j] += gy[(start + first + k) * n + j];
      }
    }
  }
}

// ---- Cross-entropy ----

template <class T, class Rows>
__global__ void cross_entropy_kernel(const T* logits, const std::int64_t* targets, std::int64_t ignore_index,
                                     T* losses, T* lse, std::int64_t rows, std::int64_t classes) {
  const auto team = Rows::team();
  for (std::int64_t r = Rows::first_row(); r < rows; r += Rows::row_step()) {
    const T* row = logits + r * classes;
    const typename Rows::template Row<T> in(team, row, classes);
    // One pass (vocabulary rows are long): a running maximum and the sum of exponentials relative to it, rescaled
    // when the maximum grows.
    T max = -infinity<T>(), total = 0;
    in.each([&](std::int64_t, T v) {
      if (v > max) {
        total = total * exp(max - v) + T(1);
        max = v;
      } else if (v != -infinity<T>()) {  // -inf adds 0 (and -inf - -inf would be NaN); NaN makes NaN
        total += exp(v - max);
      }
    });
    const T row_max = team.reduce(max, MaxOp{});
    // Each share's sum relative to the row's maximum (a share of only -inf holds 0, or NaN from a NaN logit).
    total = team.reduce(max == -infinity<T>() ? total : total * exp(max - row_max), SumOp{});
    if (team.rank == 0) {
      // An infinite maximum gives NaN, as the CPU's -inf - -inf or inf - inf does.
      const T log_sum_exp =
          fabs(row_max) == infinity<T>() ? std::numeric_limits<T>::quiet_NaN() : row_max + log(total);
      lse[r] = log_sum_exp;
      const std::int64_t target = targets[r];
      losses[r] = target == ignore_index ? T(0) : log_sum_exp - row[target];
    }
  }
}

// ---- Typed entry points ----

template <class T>
void softmax_typed(const cuda::DeviceState& state, const Tensor& x, const Tensor& y, std::int64_t outer,
                   std::int64_t n, std::int64_t inner, bool log_output) {
  if (outer * n * inner == 0) return;
  if (inner > 1) return softmax_lanes(state, x.data<T>(), y.data<T>(), outer, n, inner, log_output);
  launch_rows<T>(state, "softmax", n, [&](auto strategy) {
    using Rows = decltype(strategy);
    softmax_rows_kernel<T, Rows>
        <<<Rows::blocks(outer), Rows::kThreads, 0, state.stream>>>(x.data<T>(), y.data<T>(), outer, n, log_output);
  });
}

template <class T>
void softmax_backward_typed(const cuda::DeviceState& state, const Tensor& y, const Tensor& gy, const Tensor& gx,
                            std::int64_t outer, std::int64_t n, std::int64_t inner, bool log_output) {
  if (outer * n * inner == 0) return;
  if (inner > 1)
    return softmax_backward_lanes(state, y.data<T>(), gy.data<T>(), gx.data<T>(), outer, n, inner, log_output);
  launch_rows<T>(state, "softmax_backward", n, [&](auto strategy) {
    using Rows = decltype(strategy);
    softmax_backward_rows_kernel<T, Rows><<<Rows::blocks(outer), Rows::kThreads, 0, state.stream>>>(
        y.data<T>(), gy.data<T>(), gx.data<T>(), outer, n, log_output);
  });
}

template <class T>
void elliptical_metric_typed(const cuda::DeviceState& state, const Tensor& v, const Tensor& v_prev,
                             const Tensor& past_sum, std::int64_t past, bool causal, const Tensor& metric,
                             const Tensor& sum) {
  const Shape& shape = v.shape();
  const Strides &vs = v.strides(), &ps = v_prev.strides();
  const MetricGeometry g{shape[1], shape[2], shape[3], vs[0], vs[1], vs[2], ps[0], ps[1], ps[2]};
  const std::int64_t columns = shape[0] * g.heads * g.dh;
  if (columns == 0) return;
  state.activate();
  metric_totals_kernel<T><<<grid_for(columns, kMetricThreads), kMetricThreads, 0, state.stream>>>(
      v.data<T>(), v_prev.data<T>(), past_sum.defined() ? past_sum.data<T>() : nullptr, g, past, causal,
      metric.data<T>(), sum.data<T>(), columns);
  cuda::check_launch("elliptical_metric");
  const std::int64_t rows = shape[0] * g.heads * (causal ? g.n : 1);
  if (rows == 0) return;
  launch_rows<T>(state, "elliptical_metric", g.dh, [&](auto strategy) {
    using Rows = decltype(strategy);
    normalize_metric_kernel<T, Rows>
        <<<Rows::blocks(rows), Rows::kThreads, 0, state.stream>>>(metric.data<T>(), rows, g.dh);
  });
}

template <class T>
void layer_norm_backward_typed(CudaBackend& backend, const Tensor& x, const Tensor& weight, const Tensor& mean,
                               const Tensor& rstd, const Tensor& gy, const Tensor& gx, const Tensor& gweight,
                               const Tensor& gbias) {
  const std::int64_t n = x.shape().back(), rows = x.numel() / std::max<std::int64_t>(n, 1);
  if (rows == 0) return;
  const cuda::DeviceState& state = backend.state();
  launch_rows<T>(state, "layer_norm_backward", n, [&](auto strategy) {
    using Rows = decltype(strategy);
    layer_norm_backward_kernel<T, Rows><<<Rows::blocks(rows), Rows::kThreads, 0, state.stream>>>(
        x.data<T>(), weight.data<T>(), mean.data<T>(), rstd.data<T>(), gy.data<T>(), gx.data<T>(), rows, n);
  });
  // Weight and bias gradients: per-chunk column sums, then the chunks in order (deterministic, no atomics).
  const std::int64_t wanted = std::clamp<std::int64_t>(kParamThreads / n, 1, rows);
  const std::int64_t chunk_rows = (rows + wanted - 1) / wanted, chunks = (rows + chunk_rows - 1) / chunk_rows;
  // Freed on return: a later user of the block is queued after these kernels on the same stream.
  const auto partial = backend.allocate(static_cast<std::size_t>(2 * chunks * n) * sizeof(T));
  T* p = static_cast<T*>(partial->data());
  layer_norm_param_partials_kernel<T><<<grid_for(chunks * n, cuda::kThreads), cuda::kThreads, 0, state.stream>>>(
      x.data<T>(), gy.data<T>(), mean.data<T>(), rstd.data<T>(), rows, n, chunks, chunk_rows, p);
  cuda::check_launch("layer_norm_backward");
  layer_norm_param_totals_kernel<T><<<grid_for(n, cuda::kThreads), cuda::kThreads, 0, state.stream>>>(
      p, chunks, n, gweight.data<T>(), gbias.data<T>());
  cuda::check_launch("layer_norm_backward");
}

template <class T>
void embedding_typed(const cuda::DeviceState& state, const Tensor& weight, const Tensor& ids, const Tensor& out) {
  const std::int64_t n = weight.shape()[1];
  const T* w = weight.data<T>();
  const std::int64_t* id = ids.data<std::int64_t>();
  T* o = out.data<T>();
  for_range(state, "embedding", ids.numel() * n, [=] __device__(std::int64_t i) { o[i] = w[id[i / n] * n + i % n]; });
}

template <class T>
void embedding_backward_typed(const cuda::DeviceState& state, const Tensor& ids, const Tensor& gy,
                              const Tensor& gweight) {
  const std::int64_t vocab = gweight.shape()[0], n = gweight.shape()[1], rows = ids.numel();
  if (rows == 0 || n == 0) return;
  // Buckets: one per warp of a block at least; more while they add warps the GPU can use and ids to spread.
  const std::int64_t column_blocks = (n + 31) / 32;
  std::int64_t buckets = 8;
  while (buckets < 256 && buckets < vocab && column_blocks * buckets < 8192) buckets *= 2;
  state.activate();
  embedding_backward_kernel<T>
      <<<dim3(static_cast<unsigned>(column_blocks), static_cast<unsigned>(buckets / 8)), dim3(32, 8), 0,
         state.stream>>>(ids.data<std::int64_t>(), gy.data<T>(), gweight.data<T>(), rows, n, buckets - 1);
  cuda::check_launch("embedding_backward");
}

template <class T>
void cross_entropy_backward_typed(const cuda::DeviceState& state, const Tensor& logits, const Tensor& targets,
                                  const Tensor& lse, std::int64_t ignore_index, double scale, const Tensor& glogits) {
  const std::int64_t classes = logits.shape()[1];
  const T* x = logits.data<T>();
  const T* log_sum_exp = lse.data<T>();
  const std::int64_t* target = targets.data<std::int64_t>();
  T* out = glogits.data<T>();
  const T s = static_cast<T>(scale);
  for_range(state, "cross_entropy_backward", logits.numel(), [=] __device__(std::int64_t i) {
    const std::int64_t r = i / classes, t = target[r];
    T value = 0;
    if (t != ignore_index) {
      value = s * exp(x[i] - log_sum_exp[r]);
      if (i % classes == t) value -= s;
    }
    out[i] = value;
  });
}

}  // namespace

void CudaBackend::softmax(const Tensor& x, const Tensor& y, std::int64_t outer, std::int64_t n, std::int64_t inner,
                          bool log) {
  dispatch_floating(x.dtype(), "softmax",
                    [&](auto tag) { softmax_typed<decltype(tag)>(*state_, x, y, outer, n, inner, log); });
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t outer,
                                   std::int64_t n, std::int64_t inner, bool log) {
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    softmax_backward_typed<decltype(tag)>(*state_, y, gy, gx, outer, n, inner, log);
  });
}

void CudaBackend::scaled_softmax(const Tensor& x, const Tensor& y, std::int64_t rows, std::int64_t nq, std::int64_t n,
                                 double scale, bool causal) {
  dispatch_floating(x.dtype(), "scaled_softmax", [&](auto tag) {
    using T = decltype(tag);
    if (rows * n == 0) return;
    launch_rows<T>(*state_, "scaled_softmax", n, [&](auto strategy) {
      using Rows = decltype(strategy);
      scaled_softmax_kernel<T, Rows><<<Rows::blocks(rows), Rows::kThreads, 0, state_->stream>>>(
          x.data<T>(), y.data<T>(), rows, nq, n, static_cast<T>(scale), causal);
    });
  });
}

void CudaBackend::scaled_softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t rows,
                                          std::int64_t n, double scale) {
  dispatch_floating(y.dtype(), "scaled_softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    if (rows * n == 0) return;
    launch_rows<T>(*state_, "scaled_softmax_backward", n, [&](auto strategy) {
      using Rows = decltype(strategy);
      scaled_softmax_backward_kernel<T, Rows><<<Rows::blocks(rows), Rows::kThreads, 0, state_->stream>>>(
          y.data<T>(), gy.data<T>(), gx.data<T>(), rows, n, static_cast<T>(scale));
    });
  });
}

void CudaBackend::elliptical_metric(const Tensor& v, const Tensor& v_prev, const Tensor& past_sum, std::int64_t past,
                                    bool causal, const Tensor& metric, const Tensor& sum) {
  dispatch_floating(v.dtype(), "elliptical_metric", [&](auto tag) {
    elliptical_metric_typed<decltype(tag)>(*state_, v, v_prev, past_sum, past, causal, metric, sum);
  });
}

void CudaBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                             const Tensor& mean, const Tensor& rstd) {
  dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t n = x.shape().back(), rows = x.numel() / std::max<std::int64_t>(n, 1);
    if (rows == 0) return;
    launch_rows<T>(*state_, "layer_norm", n, [&](auto strategy) {
      using Rows = decltype(strategy);
      layer_norm_kernel<T, Rows><<<Rows::blocks(rows), Rows::kThreads, 0, state_->stream>>>(
          x.data<T>(), weight.data<T>(), bias.data<T>(), static_cast<T>(eps), y.data<T>(), mean.data<T>(),
          rstd.data<T>(), rows, n);
    });
  });
}

void CudaBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                      const Tensor& gy, const Tensor& gx, const Tensor& gweight,
                                      const Tensor& gbias) {
  dispatch_floating(x.dtype(), "layer_norm_backward", [&](auto tag) {
    layer_norm_backward_typed<decltype(tag)>(*this, x, weight, mean, rstd, gy, gx, gweight, gbias);
  });
}

void CudaBackend::embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  dispatch_floating(weight.dtype(), "embedding",
                    [&](auto tag) { embedding_typed<decltype(tag)>(*state_, weight, ids, out); });
}

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& gy, const Tensor& gweight) {
  dispatch_floating(gweight.dtype(), "embedding_backward",
                    [&](auto tag) { embedding_backward_typed<decltype(tag)>(*state_, ids, gy, gweight); });
}

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index,
                                const Tensor& losses, const Tensor& lse) {
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t rows = logits.shape()[0], classes = logits.shape()[1];
    if (rows == 0) return;
    launch_rows<T>(*state_, "cross_entropy", classes, [&](auto strategy) {
      using Rows = decltype(strategy);
      cross_entropy_kernel<T, Rows><<<Rows::blocks(rows), Rows::kThreads, 0, state_->stream>>>(
          logits.data<T>(), targets.data<std::int64_t>(), ignore_index, losses.data<T>(), lse.data<T>(), rows,
          classes);
    });
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                         std::int64_t ignore_index, double scale, const Tensor& glogits) {
  dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    cross_entropy_backward_typed<decltype(tag)>(*state_, logits, targets, lse, ignore_index, scale, glogits);
  });
}

}  // namespace ellipse
