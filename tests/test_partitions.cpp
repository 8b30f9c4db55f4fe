// The CPU kernels' work splits, each taken on purpose: the GEMM splitting c by rows and by columns, remainder
// tiles smaller than its 12 x 32 register tile, depth beyond one 256-deep slice, more than 768 columns,
// transposed operands read in place and packed, the batched products' three paths; and every parallel
// kernel at a size that is split between threads with a remainder. Each runs on 1 thread, on 3 (odd, so
// chunks are uneven even on a 2-core machine) and on all threads, against a reference computed here.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace ellipse;

namespace {

// Sets the kernels' thread count (OpenMP's, which the thread pool follows) for one scope.
class ThreadCount {
 public:
  explicit ThreadCount(int threads) : saved_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~ThreadCount() { omp_set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

std::set<int> thread_counts() { return {1, 3, omp_get_max_threads()}; }

std::vector<double> values(const Tensor& t) { return t.to(DType::f64).to_vector<double>(); }

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tolerance) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double error = std::abs(got[i] - want[i]) / (1.0 + std::abs(want[i]));
    if (!(error <= worst)) worst = error, at = i;  // also catches NaN
  }
  INFO("worst element ", at, ": got ", got[at], ", want ", want[at]);
  CHECK(worst <= tolerance);
}

// Whether the results must agree bit for bit across thread counts: they must where each element is computed
// by one thread in the same order however the work is split, not where per-thread partial sums are added.
enum class AcrossThreads { identical, within_tolerance };

// Runs `compute` on each thread count; every result must match `want`.
void check_on_all_thread_counts(const std::function<std::vector<double>()>& compute, const std::vector<double>& want,
                                double tolerance, AcrossThreads across = AcrossThreads::identical) {
  std::vector<double> first;
  for (const int threads : thread_counts()) {
    CAPTURE(threads);
    ThreadCount scope(threads);
    const auto got = compute();
    check_close(got, want, tolerance);
    if (first.empty()) first = got;
    else if (across == AcrossThreads::identical) CHECK(got == first);
  }
}

// a @ b for row-major [m, k] and [k, n] values, in double: independent of every kernel.
std::vector<double> reference_product(const std::vector<double>& a, const std::vector<double>& b, std::int64_t m,
                                      std::int64_t n, std::int64_t k) {
  std::vector<double> c(static_cast<std::size_t>(m * n), 0.0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t p = 0; p < k; ++p)
      for (std::int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * k + p] * b[p * n + j];
  return c;
}

// Whether a GEMM of this shape gives the same bits on every thread count: not when its depth is at least 4
// times the longer side of c, which it then splits between the threads, adding their partial products.
AcrossThreads gemm_across_threads(std::int64_t m, std::int64_t n, std::int64_t k) {
  return k >= 4 * std::max(m, n) ? AcrossThreads::within_tolerance : AcrossThreads::identical;
}

struct GemmShape {
  std::string path;
  std::int64_t m, n, k;
};

}  // namespace

TEST_CASE("matmul: every partitioning path of the f32 GEMM, contiguous and transposed, on 1, 3 and all threads") {
  // Above a million multiply-adds the GEMM splits c between threads, by whole register tiles of its longer
  // side, or, for a depth of 4 times that side or more, splits the depth and adds the threads' partial
  // products; none of these sizes is a multiple of the 12 x 32 tile.
  const std::vector<GemmShape> shapes = {
      {"split by rows, a last tile of 4 rows", 100, 40, 300},
      {"split by columns past 768, a last tile of 1 column", 13, 801, 300},
      {"depth of two full 256-deep slices and a remainder", 200, 50, 600},
      {"one column panel: a transposed a is read in place", 200, 20, 300},
      {"below the threading threshold, smaller than one tile", 5, 7, 3},
      {"depth split between the threads, partial products added", 37, 45, 1500},
  };
  Generator gen(31);
  for (const auto& shape : shapes) {
    CAPTURE(shape.path);
    const Tensor a = randn({shape.m, shape.k}, gen), b = randn({shape.k, shape.n}, gen);
    const auto want = reference_product(values(a), values(b), shape.m, shape.n, shape.k);
    // Transposed operands: views of the transposed contiguous copies, read with swapped strides.
    const Tensor a_transposed = contiguous(transpose(a, 0, 1)).transpose(0, 1);
    const Tensor b_transposed = contiguous(transpose(b, 0, 1)).transpose(0, 1);
    for (const auto& [layout, operands] : std::vector<std::pair<std::string, std::pair<Tensor, Tensor>>>{
             {"contiguous", {a, b}}, {"a transposed", {a_transposed, b}}, {"b transposed", {a, b_transposed}}}) {
      CAPTURE(layout);
      // f32 rounding over up to 1500 terms, measured against 1 + |c|.
      check_on_all_thread_counts([&] { return values(matmul(operands.first, operands.second)); }, want, 2e-4,
                                 gemm_across_threads(shape.m, shape.n, shape.k));
    }
  }
}

TEST_CASE("linear: weight and bias gradients in one pass over the output gradient, on every GEMM path") {
  // The weight gradient is g^T x [out, in] with depth `rows`; its GEMM sums the bias gradient as it packs g^T
  // (or, where it reads g^T in place, beside it).
  struct LinearShape {
    std::string path;
    std::int64_t rows, out, in;
  };
  const std::vector<LinearShape> shapes = {
      {"one thread, smaller than a tile", 5, 7, 3},
      {"depth split between the threads", 1500, 37, 45},
      {"split by rows of the weight", 300, 200, 50},
      {"split by columns of the weight past 768", 300, 13, 801},
      {"one column panel: g^T read in place", 300, 200, 20},
      {"no input features: only the bias gradient", 300, 9, 0},
  };
  Generator gen(32);
  for (const auto& shape : shapes) {
    CAPTURE(shape.path);
    const Tensor x = randn({shape.rows, shape.in}, gen), weight = randn({shape.out, shape.in}, gen);
    const Tensor bias = randn({shape.out}, gen), g = randn({shape.rows, shape.out}, gen);
    // References in double: g^T x and the column sums of g.
    const std::vector<double> gv = values(g), xv = values(x);
    std::vector<double> g_transposed(gv.size());
    for (std::int64_t r = 0; r < shape.rows; ++r)
      for (std::int64_t o = 0; o < shape.out; ++o) g_transposed[o * shape.rows + r] = gv[r * shape.out + o];
    const auto want_weight = reference_product(g_transposed, xv, shape.out, shape.in, shape.rows);
    std::vector<double> want_bias(static_cast<std::size_t>(shape.out), 0.0);
    for (std::int64_t r = 0; r < shape.rows; ++r)
      for (std::int64_t o = 0; o < shape.out; ++o) want_bias[o] += gv[r * shape.out + o];
    auto gradients = [&] {
      const Tensor w = weight.detach().requires_grad_(), b = bias.detach().requires_grad_();
      sum(mul(linear(x, w, b), g)).backward();
      return std::pair{values(w.grad()), values(b.grad())};
    };
    const AcrossThreads across = gemm_across_threads(shape.out, shape.in, shape.rows);
    check_on_all_thread_counts([&] { return gradients().first; }, want_weight, 2e-4, across);
    check_on_all_thread_counts([&] { return gradients().second; }, want_bias, 2e-4, across);
  }
}

TEST_CASE("matmul: an empty inner axis gives zeros, also in a recycled buffer") {
  for (const DType dtype : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dtype));
    // The allocator hands out freed blocks again: leave a NaN-filled one of the output's size behind first.
    { (void)full({4, 5}, std::nan(""), dtype); }
    check_close(values(matmul(zeros({4, 0}, dtype), zeros({0, 5}, dtype))), std::vector<double>(20, 0.0), 0.0);
  }
}

TEST_CASE("matmul: batched products take the fold, one-per-thread and broadcast paths correctly, f32 and f64") {
  Generator gen(32);
  for (const DType dtype : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dtype));
    const double tolerance = dtype == DType::f32 ? 1e-4 : 1e-12;
    // a [batch, m, k] against one shared b [k, n]: folded into one [batch * m, k] product when a is contiguous,
    // product by product when it is a transposed view.
    const std::int64_t batch = 7, m = 16, n = 16, k = 24;  // 7 small products: one per thread
    const Tensor a = randn({batch, m, k}, gen, dtype), b = randn({k, n}, gen, dtype);
    const auto av = values(a), bv = values(b);
    std::vector<double> want;
    for (std::int64_t i = 0; i < batch; ++i) {
      const std::vector<double> ai(av.begin() + i * m * k, av.begin() + (i + 1) * m * k);
      const auto ci = reference_product(ai, bv, m, n, k);
      want.insert(want.end(), ci.begin(), ci.end());
    }
    const Tensor a_view = contiguous(transpose(a, 1, 2)).transpose(1, 2);  // same values, not contiguous
    check_on_all_thread_counts([&] { return values(matmul(a, b)); }, want, tolerance);
    check_on_all_thread_counts([&] { return values(matmul(a_view, b)); }, want, tolerance);
    // The same products with b repeated per batch element (not shared): each offsets its own b.
    const Tensor b_batched = contiguous(expand(unsqueeze(b, 0), {batch, k, n}));
    check_on_all_thread_counts([&] { return values(matmul(a_view, b_batched)); }, want, tolerance);

    // Broadcast batch axes: a [2, 3, m, k] with b [3, k, n]; b's batch strides differ from a's.
    const Tensor a4 = randn({2, 3, 5, 6}, gen, dtype), b3 = randn({3, 6, 4}, gen, dtype);
    const auto a4v = values(a4), b3v = values(b3);
    std::vector<double> want4;
    for (std::int64_t i = 0; i < 2; ++i) {
      for (std::int64_t j = 0; j < 3; ++j) {
        const std::vector<double> ai(a4v.begin() + (i * 3 + j) * 30, a4v.begin() + (i * 3 + j + 1) * 30);
        const std::vector<double> bj(b3v.begin() + j * 24, b3v.begin() + (j + 1) * 24);
        const auto c = reference_product(ai, bj, 5, 4, 6);
        want4.insert(want4.end(), c.begin(), c.end());
      }
    }
    check_on_all_thread_counts([&] { return values(matmul(a4, b3)); }, want4, tolerance);
    check_on_all_thread_counts([&] { return values(matmul(contiguous(transpose(a4, 2, 3)).transpose(2, 3), b3)); },
                               want4, tolerance);
  }
}

TEST_CASE("reductions: column blocks with a remainder, a long sum split in chunks, rows split unevenly") {
  Generator gen(33);
  // Sum and max over axis 0 of [300, 130]: columns in blocks of 64, 64 and 2.
  const Tensor x = randn({300, 130}, gen, DType::f64);
  const auto xv = values(x);
  std::vector<double> column_sums(130, 0.0), column_maxima(130, -INFINITY), row_maxima(300, -INFINITY);
  for (std::size_t i = 0; i < 300; ++i)
    for (std::size_t j = 0; j < 130; ++j) {
      column_sums[j] += xv[i * 130 + j];
      column_maxima[j] = std::max(column_maxima[j], xv[i * 130 + j]);
      row_maxima[i] = std::max(row_maxima[i], xv[i * 130 + j]);
    }
  check_on_all_thread_counts([&] { return values(sum(x, {0})); }, column_sums, 1e-12);
  check_on_all_thread_counts([&] { return values(max(x, {0})); }, column_maxima, 0.0);
  // Over rows (contiguous): 300 rows of 130, split between threads.
  check_on_all_thread_counts([&] { return values(max(x, {1})); }, row_maxima, 0.0);

  // One long f32 sum of small integers, exact in double: split into per-thread partial sums.
  const std::int64_t n = 100003;
  std::vector<double> integers(static_cast<std::size_t>(n));
  double total = 0;
  for (std::int64_t i = 0; i < n; ++i) total += integers[static_cast<std::size_t>(i)] = static_cast<double>(i % 17) - 8;
  const Tensor long_row = from_vector(integers, {n}).to(DType::f32);
  check_on_all_thread_counts([&] { return values(sum(long_row)); }, {total}, 0.0);

  // Prefix sums of 1001 rows (1001 = 3 * 333 + 2: a remainder on 3 threads).
  const Tensor rows = randn({1001, 40}, gen, DType::f64);
  const auto rv = values(rows);
  std::vector<double> prefix(rv.size());
  for (std::size_t i = 0; i < 1001; ++i) {
    double running = 0;
    for (std::size_t j = 0; j < 40; ++j) prefix[i * 40 + j] = running += rv[i * 40 + j];
  }
  check_on_all_thread_counts([&] { return values(cumsum(rows, 1)); }, prefix, 1e-12);
}

TEST_CASE("nn kernels split by rows, lanes or columns: layer norm with its backward, softmax, cross-entropy, "
          "embedding") {
  Generator gen(34);
  const std::int64_t rows = 1001, n = 40;  // 1001 = 3 * 333 + 2
  const Tensor x = randn({rows, n}, gen, DType::f64);
  const Tensor weight = randn({n}, gen, DType::f64), bias = randn({n}, gen, DType::f64);
  const Tensor upstream = randn({rows, n}, gen, DType::f64);
  const auto xv = values(x), wv = values(weight), bv = values(bias), gv = values(upstream);

  // Layer norm, forward and the parameters' gradients (summed per thread, then added), against the formulas.
  std::vector<double> y(xv.size()), gw(n, 0.0), gb(n, 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean = 0, variance = 0;
    for (std::int64_t j = 0; j < n; ++j) mean += xv[r * n + j] / n;
    for (std::int64_t j = 0; j < n; ++j) variance += (xv[r * n + j] - mean) * (xv[r * n + j] - mean) / n;
    for (std::int64_t j = 0; j < n; ++j) {
      const double xhat = (xv[r * n + j] - mean) / std::sqrt(variance + 1e-5);
      y[r * n + j] = xhat * wv[j] + bv[j];
      gw[j] += gv[r * n + j] * xhat;
      gb[j] += gv[r * n + j];
    }
  }
  std::vector<double> want = y;
  want.insert(want.end(), gw.begin(), gw.end());
  want.insert(want.end(), gb.begin(), gb.end());
  check_on_all_thread_counts(
      [&] {
        Tensor w = weight.detach().requires_grad_(), b = bias.detach().requires_grad_();
        const Tensor out = layer_norm(x, w, b, 1e-5);
        sum(mul(out, upstream)).backward();
        auto got = values(out);
        for (const Tensor& g : {w.grad(), b.grad()}) {
          const auto part = values(g);
          got.insert(got.end(), part.begin(), part.end());
        }
        return got;
      },
      want, 1e-10, AcrossThreads::within_tolerance);

  // Softmax over axis 0: 40 elements per lane, 1001 lanes `inner` apart.
  std::vector<double> soft(xv.size());
  for (std::int64_t lane = 0; lane < rows; ++lane) {
    double largest = -INFINITY, total = 0;
    for (std::int64_t j = 0; j < n; ++j) largest = std::max(largest, xv[j * rows + lane]);
    for (std::int64_t j = 0; j < n; ++j) total += std::exp(xv[j * rows + lane] - largest);
    for (std::int64_t j = 0; j < n; ++j) soft[j * rows + lane] = std::exp(xv[j * rows + lane] - largest) / total;
  }
  const Tensor lanes = x.reshape({n, rows});
  check_on_all_thread_counts([&] { return values(softmax(lanes, 0)); }, soft, 1e-12);

  // Cross-entropy's per-row losses, 1001 rows of 40 classes.
  std::vector<std::int64_t> targets(static_cast<std::size_t>(rows));
  double loss = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    targets[static_cast<std::size_t>(r)] = (r * 7) % n;
    double largest = -INFINITY, total = 0;
    for (std::int64_t j = 0; j < n; ++j) largest = std::max(largest, xv[r * n + j]);
    for (std::int64_t j = 0; j < n; ++j) total += std::exp(xv[r * n + j] - largest);
    loss += (largest + std::log(total) - xv[r * n + targets[static_cast<std::size_t>(r)]]) / rows;
  }
  const Tensor target_tensor = from_vector(targets, {rows});
  check_on_all_thread_counts([&] { return values(cross_entropy(x, target_tensor)); }, {loss}, 1e-12);

  // Embedding backward: 1001 columns split between threads, ids repeated many times.
  const std::int64_t vocab = 5, columns = 1001, lookups = 40;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(lookups));
  for (std::int64_t i = 0; i < lookups; ++i) ids[static_cast<std::size_t>(i)] = (i * 3) % vocab;
  const Tensor table = randn({vocab, columns}, gen, DType::f64);
  const Tensor grads = randn({lookups, columns}, gen, DType::f64);
  const auto grad_values = values(grads);
  std::vector<double> table_grad(static_cast<std::size_t>(vocab * columns), 0.0);
  for (std::int64_t i = 0; i < lookups; ++i)
    for (std::int64_t j = 0; j < columns; ++j)
      table_grad[ids[static_cast<std::size_t>(i)] * columns + j] += grad_values[i * columns + j];
  const Tensor id_tensor = from_vector(ids, {lookups});
  check_on_all_thread_counts(
      [&] {
        Tensor t = table.detach().requires_grad_();
        sum(mul(embedding(t, id_tensor), grads)).backward();
        return values(t.grad());
      },
      table_grad, 1e-12);
}
