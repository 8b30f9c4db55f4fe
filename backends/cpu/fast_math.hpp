#pragma once
// exp and the functions built on it, and row reductions, written so that loops over them vectorise (std::exp
// is an opaque libm call that does not). exp_fast is f32 only: f64 keeps libm, since it exists for exactness,
// not speed. Accuracy: exp_fast is within 2 ulp of exp over its whole range.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace ellipse::cpu {

inline float exp_fast(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 split in two so that n * kLn2Hi is exact
  constexpr float kLn2Lo = 1.428606765330187e-06f;
  constexpr float kLow = -86.5f, kHigh = 88.72f;  // beyond: 0 (below 2.7e-38) and infinity
  float clamped = x < kLow ? kLow : x;  // plain selects, not fmin/fmax: those are calls and stop vectorisation
  clamped = clamped > kHigh ? kHigh : clamped;
  // x = n ln2 + r with |r| <= ln2 / 2; rounding by truncation (SSE2 has no vector floor).
  const float scaled = clamped * kLog2e;
  const auto n = static_cast<std::int32_t>(scaled + (scaled >= 0 ? 0.5f : -0.5f));
  const float nf = static_cast<float>(n);
  const float r = (clamped - nf * kLn2Hi) - nf * kLn2Lo;
  // Taylor series of e^r to degree 7: the first omitted term is below 6e-9 for |r| <= 0.347.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n as 2^(n-1) * 2: n reaches 128 near the top of the range, one past the largest exponent.
  const float result = p * std::bit_cast<float>((n + 126) << 23) * 2.0f;
  // Below the range the value is (nearly) 0, e.g. for -inf from a mask; NaN stays NaN. Written as bit
  // masks: with AVX2 or AVX-512 enabled, GCC 12 turns the equivalent ?: chain into branches and then
  // vectorises no loop that calls this.
  const std::uint32_t below = 0u - static_cast<std::uint32_t>(x < kLow);
  const std::uint32_t above = 0u - static_cast<std::uint32_t>(x > kHigh);
  const std::uint32_t nan = 0u - static_cast<std::uint32_t>(x != x);
  std::uint32_t bits = std::bit_cast<std::uint32_t>(result) & ~below;
  bits = (bits & ~above) | (std::bit_cast<std::uint32_t>(INFINITY) & above);
  bits = (bits & ~nan) | (std::bit_cast<std::uint32_t>(x) & nan);
  return std::bit_cast<float>(bits);
}

inline double exp_fast(double x) { return std::exp(x); }

template <class T>
T sigmoid_fast(T x) {
  return T(1) / (T(1) + exp_fast(-x));
}

// GELU, tanh approximation: 0.5 x (1 + tanh(u)) with u = c (x + a x^3). Since 1 + tanh(u) = 2 sigmoid(2u),
// this is x sigmoid(2u), which keeps full relative accuracy where 1 + tanh(u) is tiny.
inline constexpr double kGeluC = 0.7978845608028654;  // sqrt(2 / pi)
inline constexpr double kGeluA = 0.044715;

template <class T>
T gelu_fast(T x) {
  const T u = T(kGeluC) * (x + T(kGeluA) * x * x * x);
  return x * sigmoid_fast(T(2) * u);
}

template <class T>
T gelu_grad_fast(T x) {
  const T s = sigmoid_fast(T(2) * (T(kGeluC) * (x + T(kGeluA) * x * x * x)));
  const T du = T(kGeluC) * (T(1) + T(3 * kGeluA) * x * x);
  return s + x * s * (T(1) - s) * T(2) * du;
}

// e^x on 16 floats at once with AVX-512, for loops that the processor's vector units should run at full
// width (callers check that the processor has it). The auto-vectorised exp_fast spends much of its time in the
// bit masks that make its edge cases vectorisable; here vscalefps gives 2^n with overflow to infinity and
// underflow to 0 built in, and the clamp to [-104, 89] only keeps the reduction finite (e^x is 0 and
// infinity beyond it). NaN in gives NaN out. Within 2 ulp of exp_fast.
// (The zero-masking forms with every lane selected: GCC 12's plain forms warn of an uninitialised operand.)
constexpr __mmask16 kAllLanes = 0xffff;

// The mask of lanes j .. j + 15 that lie below n (all 16 but in a last, partial vector).
inline __mmask16 lanes_from(std::int64_t j, std::int64_t n) {
  return static_cast<__mmask16>(j + 16 <= n ? kAllLanes : (1u << (n - j)) - 1);
}

__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  // max(lo, v) and min(hi, v) return v when v is NaN, so NaN reaches the result.
  const __m512 t = _mm512_maskz_min_ps(kAllLanes, _mm512_set1_ps(89.0f),
                                       _mm512_maskz_max_ps(kAllLanes, _mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_maskz_roundscale_ps(kAllLanes, _mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), t);  // exp_fast's two-part ln 2
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, one);
  p = _mm512_fmadd_ps(p, r, one);
  return _mm512_maskz_scalef_ps(kAllLanes, p, n);
}

// GELU and its derivative on 16 floats, gelu_fast's formula; 1 / (1 + e) is a reciprocal estimate with one
// Newton step (relative error about 2^-28) instead of a division.
struct Gelu16 {
  __m512 value, sigmoid;  // gelu(x) and sigmoid(2u), which the derivative reuses
};

__attribute__((target("avx512f"))) inline Gelu16 gelu16(__m512 x) {
  // -2u = x (-2c - 2ca x^2)
  const __m512 minus_2u = _mm512_mul_ps(
      x, _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(static_cast<float>(-2 * kGeluC * kGeluA)),
                         _mm512_set1_ps(static_cast<float>(-2 * kGeluC))));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(minus_2u));
  __m512 s = _mm512_maskz_rcp14_ps(kAllLanes, d);
  s = _mm512_mul_ps(s, _mm512_fnmadd_ps(d, s, _mm512_set1_ps(2.0f)));
  // Where e^-2u overflows the sigmoid is 0, as in gelu_fast (so gelu(-inf) is NaN in both, from -inf * 0).
  s = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(minus_2u, _mm512_set1_ps(88.0f), _CMP_LE_OQ), s);
  return {_mm512_mul_ps(x, s), s};
}

// gelu'(x) from gelu16's sigmoid s: s + x s (1 - s) 2c (1 + 3a x^2).
__attribute__((target("avx512f"))) inline __m512 gelu_grad16(__m512 x, __m512 s) {
  const __m512 du2 = _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(static_cast<float>(6 * kGeluC * kGeluA)),
                                     _mm512_set1_ps(static_cast<float>(2 * kGeluC)));
  const __m512 s_one_minus_s = _mm512_fnmadd_ps(s, s, s);
  return _mm512_fmadd_ps(_mm512_mul_ps(x, s_one_minus_s), du2, s);
}

// Row reductions in 16 interleaved partial results: GCC vectorises those, while a single running sum or
// maximum is a dependency chain it keeps scalar (floating-point addition is not reassociated for it).
constexpr std::int64_t kLanes = 16;

template <class T, class F>
T lane_sum(std::int64_t n, F term) {
  T partial[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (std::int64_t l = 0; l < kLanes; ++l) partial[l] += term(j + l);
  T total = 0;
  for (; j < n; ++j) total += term(j);
  for (std::int64_t l = 0; l < kLanes; ++l) total += partial[l];
  return total;
}

template <class T, class F>
T lane_max(std::int64_t n, F term) {
  T partial[kLanes];
  std::fill_n(partial, kLanes, -std::numeric_limits<T>::infinity());
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (std::int64_t l = 0; l < kLanes; ++l) partial[l] = std::max(partial[l], term(j + l));
  T best = -std::numeric_limits<T>::infinity();
  for (; j < n; ++j) best = std::max(best, term(j));
  for (std::int64_t l = 0; l < kLanes; ++l) best = std::max(best, partial[l]);
  return best;
}

}  // namespace ellipse::cpu
