// Times a 1024x1024x1024 f32 matmul through the library against a direct cblas_sgemm call on the same
// buffers, and prints both (median of repeated runs).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "ellipse.hpp"

namespace {
template <class F>
double median_ms(int repeats, F&& f) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}
}  // namespace

int main() {
  using namespace ellipse;
  constexpr std::int64_t n = 1024;
  constexpr int kRepeats = 15;
  Generator gen(0);
  const Tensor a = randn({n, n}, gen), b = randn({n, n}, gen);
  Tensor c = empty({n, n});
  auto direct = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n,
                0.0f, c.data<float>(), n);
  };
  auto library = [&] { c = matmul(a, b); };
  direct();
  library();  // warm-up: thread pools and page faults
  // Alternate the two so that both see the same machine state.
  double direct_ms = 0, library_ms = 0;
  for (int round = 0; round < 3; ++round) {
    direct_ms += median_ms(kRepeats, direct);
    library_ms += median_ms(kRepeats, library);
  }
  direct_ms /= 3;
  library_ms /= 3;
  const double gflop = 2.0 * n * n * n / 1e9;
  std::printf("{\"bench\": \"matmul\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"cblas_sgemm_ms\": %.3f, "
              "\"ellipse_matmul_ms\": %.3f, \"ratio\": %.3f, \"cblas_gflops\": %.1f, \"ellipse_gflops\": %.1f}\n",
              static_cast<long long>(n), static_cast<long long>(n), static_cast<long long>(n), direct_ms, library_ms,
              library_ms / direct_ms, gflop / direct_ms * 1e3, gflop / library_ms * 1e3);
  return 0;
}
