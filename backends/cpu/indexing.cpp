// CPU kernels: gather and its adjoint scatter_add, topk's indices.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/parallel.hpp"

namespace ellipse {

void CpuBackend::gather(const Tensor& x, const Tensor& index, int axis, const Tensor& out) {
  // x is read at out's position off the axis (stride 0 along it), then index[p] steps along the axis.
  Strides x_off_axis = x.strides();
  x_off_axis[axis] = 0;
  const std::int64_t step = x.strides()[axis];
  dispatch_any(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::for_each_strided(out.shape(), {&out.strides(), &x_off_axis, &index.strides()},
                          [step](T& o, const T& line, const std::int64_t& i) { o = (&line)[i * step]; },
                          out.data<T>(), x.data<T>(), index.data<std::int64_t>());
  });
}

void CpuBackend::scatter_add(const Tensor& src, const Tensor& index, int axis, const Tensor& out) {
  // Positions of src that differ only along the axis may add into one element of out, so each line along the
  // axis belongs to one thread and adds in order: no races, and sums that do not depend on the thread count.
  // Lines go in blocks, the block's lines advanced together, so that memory is read in runs whether the lines
  // or the axis are the contiguous direction.
  constexpr std::int64_t kLinesPerBlock = 64;
  Shape lines_shape = src.shape();
  const std::int64_t n = lines_shape[axis];
  lines_shape[axis] = 1;
  const std::int64_t src_step = src.strides()[axis], index_step = index.strides()[axis];
  const std::int64_t out_step = out.strides()[axis];
  dispatch_floating(out.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    const T* s = src.data<T>();
    const std::int64_t* id = index.data<std::int64_t>();
    T* o = out.data<T>();
    cpu::parallel_for(numel(lines_shape), n, [&](std::int64_t begin, std::int64_t end) {
      std::array<std::array<std::int64_t, 3>, kLinesPerBlock> starts;  // offsets in src, index, out of each line
      for (std::int64_t first = begin; first < end; first += kLinesPerBlock) {
        const std::int64_t count = std::min(kLinesPerBlock, end - first);
        for (std::int64_t l = 0; l < count; ++l) {
          std::array<std::int64_t, 3> start{};
          for (std::int64_t d = src.dim() - 1, rest = first + l; d >= 0; --d) {
            const std::int64_t at = rest % lines_shape[d];
            rest /= lines_shape[d];
            start[0] += at * src.strides()[d];
            start[1] += at * index.strides()[d];
            start[2] += at * out.strides()[d];
          }
          starts[l] = start;
        }
        for (std::int64_t j = 0; j < n; ++j)
          for (std::int64_t l = 0; l < count; ++l) {
            const auto& [s0, i0, o0] = starts[l];
            o[o0 + id[i0 + j * index_step] * out_step] += s[s0 + j * src_step];
          }
      }
    });
  });
}

void CpuBackend::topk(const Tensor& x, const Tensor& indices, std::int64_t outer, std::int64_t n, std::int64_t inner,
                      std::int64_t k, bool largest) {
  dispatch_floating(x.dtype(), "topk", [&](auto tag) {
    using T = decltype(tag);
    auto above = [](T a, T b) { return (std::isnan(a) && !std::isnan(b)) || a > b; };  // NaN ranks highest
    // One lane per (outer, inner) pair; its n entries are `inner` apart.
    cpu::parallel_for(outer * inner, n, [&](std::int64_t begin, std::int64_t end) {
      std::vector<std::int64_t> order(static_cast<std::size_t>(n));
      for (std::int64_t lane = begin; lane < end; ++lane) {
        const T* in = x.data<T>() + lane / inner * n * inner + lane % inner;
        std::int64_t* out = indices.data<std::int64_t>() + lane / inner * k * inner + lane % inner;
        // A strict total order: the better value first, the lower index between equals.
        auto first = [&](std::int64_t a, std::int64_t b) {
          T va = in[a * inner], vb = in[b * inner];
          if (!largest) std::swap(va, vb);  // smallest first: a is better when b's value ranks above a's
          return above(va, vb) || (!above(vb, va) && a < b);
        };
        std::iota(order.begin(), order.end(), std::int64_t{0});
        std::partial_sort(order.begin(), order.begin() + k, order.end(), first);
        for (std::int64_t r = 0; r < k; ++r) out[r * inner] = order[static_cast<std::size_t>(r)];
      }
    });
  });
}

}  // namespace ellipse
