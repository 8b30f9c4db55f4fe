// CUDA kernels: gather and its adjoint scatter_add, topk's indices. No float atomics: scatter_add gives each line
// along the axis to one thread, which adds in order, so results repeat exactly and match the CPU's sums.
#include <cstdint>

#include "backends/cuda/common.cuh"

namespace ellipse {

using cuda::for_each_strided;
using cuda::for_range;

namespace {

template <class T>
void gather_typed(const cuda::DeviceState& state, const Tensor& x, const Tensor& index, int axis, const Tensor& out) {
  // x is read at out's position off the axis (stride 0 along it), then index[p] steps along the axis.
  Strides x_off_axis = x.strides();
  x_off_axis[axis] = 0;
  const std::int64_t step = x.strides()[axis];
  const T* in = x.data<T>();
  const std::int64_t* id = index.data<std::int64_t>();
  T* o = out.data<T>();
  for_each_strided<3>(state, "gather", out.shape(), {&out.strides(), &x_off_axis, &index.strides()},
                      [=] __device__(const std::int64_t* at) { o[at[0]] = in[at[1] + id[at[2]] * step]; });
}

template <class T>
void scatter_add_typed(const cuda::DeviceState& state, const Tensor& src, const Tensor& index, int axis,
                       const Tensor& out) {
  // One thread per line along the axis (src's shape with the axis dropped to 1), walking the line in order.
  Shape lines_shape = src.shape();
  const std::int64_t n = lines_shape[axis];
  lines_shape[axis] = 1;
  const std::int64_t src_step = src.strides()[axis], index_step = index.strides()[axis];
  const std::int64_t out_step = out.strides()[axis];
  const T* s = src.data<T>();
  const std::int64_t* id = index.data<std::int64_t>();
  T* o = out.data<T>();
  for_each_strided<3>(state, "scatter_add", lines_shape, {&src.strides(), &index.strides(), &out.strides()},
                      [=] __device__(const std::int64_t* at) {
                        for (std::int64_t j = 0; j < n; ++j)
                          o[at[2] + id[at[1] + j * index_step] * out_step] += s[at[0] + j * src_step];
                      });
}

template <class T>
__device__ bool ranks_above(T a, T b) {
  return (isnan(a) && !isnan(b)) || a > b;  // NaN ranks highest
}

// Whether entry a of a topk lane comes before entry b, as on the CPU: the better value first, the lower index
// between equals.
template <class T>
__device__ bool topk_first(const T* lane, std::int64_t inner, std::int64_t a, std::int64_t b, bool largest) {
  T va = lane[a * inner], vb = lane[b * inner];
  if (!largest) {  // smallest first: a is better when b's value ranks above a's
    const T swapped = va;
    va = vb;
    vb = swapped;
  }
  return ranks_above(va, vb) || (!ranks_above(vb, va) && a < b);
}

// One thread per lane picks its k entries in order, each the first of those after the previous pick: k passes over
// the lane, no scratch memory.
template <class T>
void topk_typed(const cuda::DeviceState& state, const Tensor& x, const Tensor& indices, std::int64_t outer,
                std::int64_t n, std::int64_t inner, std::int64_t k, bool largest) {
  const T* src = x.data<T>();
  std::int64_t* dst = indices.data<std::int64_t>();
  for_range(state, "topk", outer * inner, [=] __device__(std::int64_t lane) {
    const T* in = src + lane / inner * n * inner + lane % inner;
    std::int64_t* out = dst + lane / inner * k * inner + lane % inner;
    std::int64_t previous = -1;
    for (std::int64_t r = 0; r < k; ++r) {
      std::int64_t best = -1;
      for (std::int64_t j = 0; j < n; ++j) {
        if (previous >= 0 && !topk_first(in, inner, previous, j, largest)) continue;
        if (best < 0 || topk_first(in, inner, j, best, largest)) best = j;
      }
      out[r * inner] = best;
      previous = best;
    }
  });
}

}  // namespace

void CudaBackend::gather(const Tensor& x, const Tensor& index, int axis, const Tensor& out) {
  dispatch_any(out.dtype(), [&](auto tag) { gather_typed<decltype(tag)>(*state_, x, index, axis, out); });
}

void CudaBackend::scatter_add(const Tensor& src, const Tensor& index, int axis, const Tensor& out) {
  dispatch_floating(out.dtype(), "scatter_add",
                    [&](auto tag) { scatter_add_typed<decltype(tag)>(*state_, src, index, axis, out); });
}

void CudaBackend::topk(const Tensor& x, const Tensor& indices, std::int64_t outer, std::int64_t n, std::int64_t inner,
                       std::int64_t k, bool largest) {
  dispatch_floating(x.dtype(), "topk",
                    [&](auto tag) { topk_typed<decltype(tag)>(*state_, x, indices, outer, n, inner, k, largest); });
}

}  // namespace ellipse
