// CUDA kernels: gather and its adjoint scatter_add. No float atomics: scatter_add gives each line along the axis
// to one thread, which adds in order, so results repeat exactly and match the CPU's sums.
#include <cstdint>

#include "backends/cuda/common.cuh"

namespace ellipse {

using cuda::for_each_strided;

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

}  // namespace

void CudaBackend::gather(const Tensor& x, const Tensor& index, int axis, const Tensor& out) {
  dispatch_any(out.dtype(), [&](auto tag) { gather_typed<decltype(tag)>(*state_, x, index, axis, out); });
}

void CudaBackend::scatter_add(const Tensor& src, const Tensor& index, int axis, const Tensor& out) {
  dispatch_floating(out.dtype(), "scatter_add",
                    [&](auto tag) { scatter_add_typed<decltype(tag)>(*state_, src, index, axis, out); });
}

}  // namespace ellipse
