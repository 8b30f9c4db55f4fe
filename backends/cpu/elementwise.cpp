// CPU kernels: fill, arange, copy, unary and binary maps, where, dropout masks.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/fast_math.hpp"
#include "backends/cpu/parallel.hpp"
#include "core/random.hpp"

namespace ellipse {

using cpu::for_each_strided;

namespace {

// One strided map out[i] = f(x[i]) with f chosen at compile time, so each loop vectorises on its own.
template <class T, class F>
void map1(const Tensor& x, const Tensor& out, F f) {
  for_each_strided(out.shape(), {&out.strides(), &x.strides()}, [f](T& o, const T& v) { o = f(v); }, out.data<T>(),
                   x.data<T>());
}

// GELU's forward and backward in f32 on contiguous tensors, 16 floats at a time (fast_math's gelu16); other
// layouts, dtypes and processors take the generic maps.
bool gelu16_applies(std::initializer_list<const Tensor*> tensors) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512) return false;
  for (const Tensor* t : tensors)
    if (t->dtype() != DType::f32 || !t->is_contiguous()) return false;
  return true;
}

// body(offset, lanes) over [0, n) in runs of 16 (lanes: a mask of the valid ones), split over the threads.
template <class Body>
void for_each_vector16(std::int64_t n, const Body& body) {
  cpu::parallel_for((n + 15) / 16, 16 * 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t v = begin; v < end; ++v) body(v * 16, cpu::lanes_from(v * 16, n));
  });
}

__attribute__((target("avx512f"))) void gelu_forward16(const float* x, float* y, std::int64_t n) {
  for_each_vector16(n, [=](std::int64_t offset, __mmask16 lanes) __attribute__((target("avx512f"))) {
    _mm512_mask_storeu_ps(y + offset, lanes, cpu::gelu16(_mm512_maskz_loadu_ps(lanes, x + offset)).value);
  });
}

__attribute__((target("avx512f"))) void gelu_backward16(const float* g, const float* x, float* out, std::int64_t n) {
  for_each_vector16(n, [=](std::int64_t offset, __mmask16 lanes) __attribute__((target("avx512f"))) {
    const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + offset);
    const __m512 grad = cpu::gelu_grad16(xv, cpu::gelu16(xv).sigmoid);
    _mm512_mask_storeu_ps(out + offset, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, g + offset), grad));
  });
}
}  // namespace

void CpuBackend::fill(const Tensor& out, double value) {
  dispatch_any(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T v = static_cast<T>(value);
    for_each_strided(out.shape(), {&out.strides()}, [v](T& o) { o = v; }, out.data<T>());
  });
}

void CpuBackend::arange(const Tensor& out, double start, double step) {
  dispatch_any(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = out.data<T>();
    for (std::int64_t i = 0; i < out.numel(); ++i) p[i] = static_cast<T>(start + static_cast<double>(i) * step);
  });
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  dispatch_any(dst.dtype(), [&](auto dst_tag) {
    using D = decltype(dst_tag);
    dispatch_any(src.dtype(), [&](auto src_tag) {
      using S = decltype(src_tag);
      for_each_strided(dst.shape(), {&dst.strides(), &src.strides()}, [](D& o, const S& v) { o = static_cast<D>(v); },
                       dst.data<D>(), src.data<S>());
    });
  });
}

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  if (op == UnaryOp::gelu && gelu16_applies({&x, &out}))
    return gelu_forward16(x.data<float>(), out.data<float>(), x.numel());
  dispatch_floating(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    const T ta = static_cast<T>(a), tb = static_cast<T>(b);
    switch (op) {
      case UnaryOp::neg: return map1<T>(x, out, [](T v) { return -v; });
      case UnaryOp::exp: return map1<T>(x, out, [](T v) { return cpu::exp_fast(v); });
      case UnaryOp::log: return map1<T>(x, out, [](T v) { return std::log(v); });
      case UnaryOp::sqrt: return map1<T>(x, out, [](T v) { return std::sqrt(v); });
      case UnaryOp::abs: return map1<T>(x, out, [](T v) { return std::abs(v); });
      case UnaryOp::tanh: return map1<T>(x, out, [](T v) { return std::tanh(v); });
      case UnaryOp::sigmoid: return map1<T>(x, out, [](T v) { return cpu::sigmoid_fast(v); });
      case UnaryOp::relu: return map1<T>(x, out, [](T v) { return v > T(0) ? v : T(0); });
      case UnaryOp::gelu: return map1<T>(x, out, [](T v) { return cpu::gelu_fast(v); });
      case UnaryOp::sin: return map1<T>(x, out, [](T v) { return std::sin(v); });
      case UnaryOp::cos: return map1<T>(x, out, [](T v) { return std::cos(v); });
      case UnaryOp::add_scalar: return map1<T>(x, out, [ta](T v) { return v + ta; });
      case UnaryOp::mul_scalar: return map1<T>(x, out, [ta](T v) { return v * ta; });
      case UnaryOp::pow_scalar:
        if (a == 2.0) return map1<T>(x, out, [](T v) { return v * v; });
        return map1<T>(x, out, [ta](T v) { return std::pow(v, ta); });
      case UnaryOp::clamp: return map1<T>(x, out, [ta, tb](T v) { return std::min(std::max(v, ta), tb); });
      case UnaryOp::sign: return map1<T>(x, out, [](T v) { return T((v > T(0)) - (v < T(0))); });
      case UnaryOp::step: return map1<T>(x, out, [](T v) { return v > T(0) ? T(1) : T(0); });
      case UnaryOp::inside: return map1<T>(x, out, [ta, tb](T v) { return v >= ta && v <= tb ? T(1) : T(0); });
    }
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (op == BinaryOp::gelu_backward && gelu16_applies({&a, &b, &out}) && a.shape() == out.shape() &&
      b.shape() == out.shape())
    return gelu_backward16(a.data<float>(), b.data<float>(), out.data<float>(), out.numel());
  dispatch_any(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto run = [&](auto f) {
      for_each_strided(out.shape(), {&out.strides(), &a.strides(), &b.strides()},
                       [f](T& o, const T& x, const T& y) { o = f(x, y); }, out.data<T>(), a.data<T>(), b.data<T>());
    };
    switch (op) {
      case BinaryOp::add: return run([](T x, T y) { return x + y; });
      case BinaryOp::sub: return run([](T x, T y) { return x - y; });
      case BinaryOp::mul: return run([](T x, T y) { return x * y; });
      case BinaryOp::div: return run([](T x, T y) { return x / y; });
      case BinaryOp::maximum: return run([](T x, T y) { return x > y || x != x ? x : y; });
      case BinaryOp::minimum: return run([](T x, T y) { return x < y || x != x ? x : y; });
      case BinaryOp::eq: return run([](T x, T y) { return x == y ? T(1) : T(0); });
      case BinaryOp::ne: return run([](T x, T y) { return x != y ? T(1) : T(0); });
      case BinaryOp::gt: return run([](T x, T y) { return x > y ? T(1) : T(0); });
      case BinaryOp::lt: return run([](T x, T y) { return x < y ? T(1) : T(0); });
      case BinaryOp::ge: return run([](T x, T y) { return x >= y ? T(1) : T(0); });
      case BinaryOp::le: return run([](T x, T y) { return x <= y ? T(1) : T(0); });
      case BinaryOp::gelu_backward:
        // Integer tensors never get here: gelu's backward rule is the only caller.
        if constexpr (std::is_floating_point_v<T>) run([](T g, T x) { return g * cpu::gelu_grad_fast(x); });
        return;
    }
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_any(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_any(cond.dtype(), [&](auto cond_tag) {
      using C = decltype(cond_tag);
      for_each_strided(out.shape(), {&out.strides(), &cond.strides(), &a.strides(), &b.strides()},
                       [](T& o, const C& c, const T& x, const T& y) { o = c != C(0) ? x : y; }, out.data<T>(),
                       cond.data<C>(), a.data<T>(), b.data<T>());
    });
  });
}

void CpuBackend::dropout_mask(const Tensor& mask, double p, std::uint64_t seed) {
  dispatch_floating(mask.dtype(), "dropout", [&](auto tag) {
    using T = decltype(tag);
    T* m = mask.data<T>();
    const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
    cpu::parallel_for(mask.numel(), 8, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) {
        const double u = static_cast<double>(mix64(seed, static_cast<std::uint64_t>(i)) >> 11) * 0x1.0p-53;
        m[i] = u >= p ? keep_scale : T(0);
      }
    });
  });
}

}  // namespace ellipse

namespace ellipse {

void CpuBackend::adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                            const AdamWStep& s) {
  dispatch_floating(param.dtype(), "adamw_step", [&](auto tag) {
    using T = decltype(tag);
    T* p = param.data<T>();
    T* mp = m.data<T>();
    T* vp = v.data<T>();
    const T* g = grad.data<T>();
    const T decay = static_cast<T>(s.decay()), step_size = static_cast<T>(s.step_size());
    const T inv_sqrt_bc2 = static_cast<T>(s.inv_sqrt_bias_correction2());
    const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
    const T eps = static_cast<T>(s.eps);
    cpu::parallel_for(param.numel(), 16, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) {
        mp[i] = b1 * mp[i] + (T(1) - b1) * g[i];
        vp[i] = b2 * vp[i] + (T(1) - b2) * g[i] * g[i];
        p[i] = p[i] * decay - step_size * mp[i] / (std::sqrt(vp[i]) * inv_sqrt_bc2 + eps);
      }
    });
  });
}

}  // namespace ellipse
