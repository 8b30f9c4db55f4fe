// CUDA kernels: fill, arange, copy, unary and binary maps, where, dropout masks and the AdamW step.
#include <cmath>

#include "backends/cuda/common.cuh"
#include "core/random.hpp"

namespace ellipse {

using cuda::for_each_strided;
using cuda::for_range;

namespace {

template <class T>
__device__ T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// GELU, tanh approximation, written as x sigmoid(2u) as on the CPU (backends/cpu/fast_math.hpp).
template <class T>
__device__ T gelu(T x) {
  const T u = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
  return x * sigmoid(T(2) * u);
}

template <class T>
__device__ T gelu_grad(T x) {
  const T s = sigmoid(T(2) * (T(0.7978845608028654) * (x + T(0.044715) * x * x * x)));
  const T du = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * x * x);
  return s + x * s * (T(1) - s) * T(2) * du;
}

// out[i] = f(x[i]) over out's shape.
template <class T, class F>
void map1(const cuda::DeviceState& state, const Tensor& x, const Tensor& out, F f) {
  T* o = out.data<T>();
  const T* in = x.data<T>();
  for_each_strided<2>(state, "unary", out.shape(), {&out.strides(), &x.strides()},
                      [=] __device__(const std::int64_t* at) { o[at[0]] = f(in[at[1]]); });
}

template <class T>
void unary_typed(const cuda::DeviceState& s, UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  const T ta = static_cast<T>(a), tb = static_cast<T>(b);
  switch (op) {
    case UnaryOp::neg: return map1<T>(s, x, out, [] __device__(T v) { return -v; });
    case UnaryOp::exp: return map1<T>(s, x, out, [] __device__(T v) { return exp(v); });
    case UnaryOp::log: return map1<T>(s, x, out, [] __device__(T v) { return log(v); });
    case UnaryOp::sqrt: return map1<T>(s, x, out, [] __device__(T v) { return sqrt(v); });
    case UnaryOp::abs: return map1<T>(s, x, out, [] __device__(T v) { return fabs(v); });
    case UnaryOp::tanh: return map1<T>(s, x, out, [] __device__(T v) { return tanh(v); });
    case UnaryOp::sigmoid: return map1<T>(s, x, out, [] __device__(T v) { return sigmoid(v); });
    case UnaryOp::relu: return map1<T>(s, x, out, [] __device__(T v) { return v > T(0) ? v : T(0); });
    case UnaryOp::gelu: return map1<T>(s, x, out, [] __device__(T v) { return gelu(v); });
    case UnaryOp::sin: return map1<T>(s, x, out, [] __device__(T v) { return sin(v); });
    case UnaryOp::cos: return map1<T>(s, x, out, [] __device__(T v) { return cos(v); });
    case UnaryOp::add_scalar: return map1<T>(s, x, out, [ta] __device__(T v) { return v + ta; });
    case UnaryOp::mul_scalar: return map1<T>(s, x, out, [ta] __device__(T v) { return v * ta; });
    case UnaryOp::pow_scalar:
      if (a == 2.0) return map1<T>(s, x, out, [] __device__(T v) { return v * v; });
      return map1<T>(s, x, out, [ta] __device__(T v) { return pow(v, ta); });
    case UnaryOp::clamp: return map1<T>(s, x, out, [ta, tb] __device__(T v) { return fmin(fmax(v, ta), tb); });
    case UnaryOp::sign: return map1<T>(s, x, out, [] __device__(T v) { return T((v > T(0)) - (v < T(0))); });
    case UnaryOp::step: return map1<T>(s, x, out, [] __device__(T v) { return v > T(0) ? T(1) : T(0); });
    case UnaryOp::inside:
      return map1<T>(s, x, out, [ta, tb] __device__(T v) { return v >= ta && v <= tb ? T(1) : T(0); });
  }
}

template <class T, class F>
void map2(const cuda::DeviceState& state, const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  T* o = out.data<T>();
  const T* x = a.data<T>();
  const T* y = b.data<T>();
  for_each_strided<3>(state, "binary", out.shape(), {&out.strides(), &a.strides(), &b.strides()},
                      [=] __device__(const std::int64_t* at) { o[at[0]] = f(x[at[1]], y[at[2]]); });
}

template <class T>
void binary_typed(const cuda::DeviceState& s, BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (op) {
    case BinaryOp::add: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x + y; });
    case BinaryOp::sub: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x - y; });
    case BinaryOp::mul: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x * y; });
    case BinaryOp::div: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x / y; });
    // Not fmax and fmin, which drop a NaN.
    case BinaryOp::maximum: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x > y || x != x ? x : y; });
    case BinaryOp::minimum: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x < y || x != x ? x : y; });
    case BinaryOp::eq: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x == y ? T(1) : T(0); });
    case BinaryOp::ne: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x != y ? T(1) : T(0); });
    case BinaryOp::gt: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x > y ? T(1) : T(0); });
    case BinaryOp::lt: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x < y ? T(1) : T(0); });
    case BinaryOp::ge: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x >= y ? T(1) : T(0); });
    case BinaryOp::le: return map2<T>(s, a, b, out, [] __device__(T x, T y) { return x <= y ? T(1) : T(0); });
    case BinaryOp::gelu_backward:
      // Integer tensors never get here: gelu's backward rule is the only caller.
      if constexpr (std::is_floating_point_v<T>)
        map2<T>(s, a, b, out, [] __device__(T g, T x) { return g * gelu_grad(x); });
      return;
  }
}

template <class T>
void fill_typed(const cuda::DeviceState& s, const Tensor& out, double value) {
  T* o = out.data<T>();
  const T v = static_cast<T>(value);
  for_each_strided<1>(s, "fill", out.shape(), {&out.strides()}, [=] __device__(const std::int64_t* at) { o[at[0]] = v; });
}

template <class T>
void arange_typed(const cuda::DeviceState& s, const Tensor& out, double start, double step) {
  T* o = out.data<T>();
  for_range(s, "arange", out.numel(),
            [=] __device__(std::int64_t i) { o[i] = static_cast<T>(start + static_cast<double>(i) * step); });
}

template <class D, class S>
void copy_typed(const cuda::DeviceState& s, const Tensor& src, const Tensor& dst) {
  D* o = dst.data<D>();
  const S* in = src.data<S>();
  for_each_strided<2>(s, "copy", dst.shape(), {&dst.strides(), &src.strides()},
                      [=] __device__(const std::int64_t* at) { o[at[0]] = static_cast<D>(in[at[1]]); });
}

template <class T, class C>
void where_typed(const cuda::DeviceState& s, const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  T* o = out.data<T>();
  const C* c = cond.data<C>();
  const T* x = a.data<T>();
  const T* y = b.data<T>();
  for_each_strided<4>(s, "where", out.shape(), {&out.strides(), &cond.strides(), &a.strides(), &b.strides()},
                      [=] __device__(const std::int64_t* at) { o[at[0]] = c[at[1]] != C(0) ? x[at[2]] : y[at[3]]; });
}

template <class T>
void dropout_typed(const cuda::DeviceState& s, const Tensor& mask, double p, std::uint64_t seed) {
  T* m = mask.data<T>();
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
  for_range(s, "dropout", mask.numel(), [=] __device__(std::int64_t i) {
    const double u = static_cast<double>(mix64(seed, static_cast<std::uint64_t>(i)) >> 11) * 0x1.0p-53;
    m[i] = u >= p ? keep_scale : T(0);
  });
}

template <class T>
void adamw_typed(const cuda::DeviceState& s, const Tensor& param, const Tensor& grad, const Tensor& m_state,
                 const Tensor& v_state, const AdamWStep& step) {
  T* p = param.data<T>();
  T* m = m_state.data<T>();
  T* v = v_state.data<T>();
  const T* g = grad.data<T>();
  const T decay = static_cast<T>(step.decay()), step_size = static_cast<T>(step.step_size());
  const T inv_sqrt_bc2 = static_cast<T>(step.inv_sqrt_bias_correction2());
  const T b1 = static_cast<T>(step.beta1), b2 = static_cast<T>(step.beta2);
  const T eps = static_cast<T>(step.eps);
  for_range(s, "adamw_step", param.numel(), [=] __device__(std::int64_t i) {
    const T gi = g[i];
    const T mi = b1 * m[i] + (T(1) - b1) * gi;
    const T vi = b2 * v[i] + (T(1) - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (sqrt(vi) * inv_sqrt_bc2 + eps);
  });
}

}  // namespace

void CudaBackend::fill(const Tensor& out, double value) {
  dispatch_any(out.dtype(), [&](auto tag) { fill_typed<decltype(tag)>(*state_, out, value); });
}

void CudaBackend::arange(const Tensor& out, double start, double step) {
  dispatch_any(out.dtype(), [&](auto tag) { arange_typed<decltype(tag)>(*state_, out, start, step); });
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  dispatch_any(dst.dtype(), [&](auto dst_tag) {
    dispatch_any(src.dtype(), [&](auto src_tag) {
      copy_typed<decltype(dst_tag), decltype(src_tag)>(*state_, src, dst);
    });
  });
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  dispatch_floating(x.dtype(), "unary", [&](auto tag) { unary_typed<decltype(tag)>(*state_, op, x, out, a, b); });
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_any(out.dtype(), [&](auto tag) { binary_typed<decltype(tag)>(*state_, op, a, b, out); });
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_any(out.dtype(), [&](auto tag) {
    dispatch_any(cond.dtype(), [&](auto cond_tag) {
      where_typed<decltype(tag), decltype(cond_tag)>(*state_, cond, a, b, out);
    });
  });
}

void CudaBackend::dropout_mask(const Tensor& mask, double p, std::uint64_t seed) {
  dispatch_floating(mask.dtype(), "dropout", [&](auto tag) { dropout_typed<decltype(tag)>(*state_, mask, p, seed); });
}

void CudaBackend::adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                             const AdamWStep& step) {
  dispatch_floating(param.dtype(), "adamw_step",
                    [&](auto tag) { adamw_typed<decltype(tag)>(*state_, param, grad, m, v, step); });
}

}  // namespace ellipse
