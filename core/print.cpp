// Printing: "Tensor(shape=[2, 3], dtype=f32, device=cpu)" followed by the values, nested by dimension, with
// at most kEdge leading and trailing entries per dimension.
#include <ostream>
#include <sstream>

#include "core/error.hpp"
#include "core/tensor.hpp"

namespace ellipse {

namespace {
constexpr std::int64_t kEdge = 3;

void print_values(std::ostream& out, const std::vector<double>& values, const Shape& shape, std::size_t axis,
                  std::int64_t base, bool integral) {
  if (axis == shape.size()) {
    if (integral) out << static_cast<std::int64_t>(values[static_cast<std::size_t>(base)]);
    else out << fmt::format("{:.4g}", values[static_cast<std::size_t>(base)]);
    return;
  }
  const std::int64_t n = shape[axis];
  std::int64_t stride = 1;
  for (std::size_t i = axis + 1; i < shape.size(); ++i) stride *= shape[i];
  out << '[';
  for (std::int64_t i = 0; i < n; ++i) {
    if (n > 2 * kEdge && i == kEdge) {
      out << "..., ";
      i = n - kEdge;
    }
    print_values(out, values, shape, axis + 1, base + i * stride, integral);
    if (i + 1 < n) out << (axis + 1 == shape.size() ? ", " : ",\n ");
  }
  out << ']';
}
}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream out;
  out << "Tensor(shape=" << to_string(shape()) << ", dtype=" << dtype_name(dtype()) << ", device=" << device().str();
  if (requires_grad()) out << ", requires_grad";
  out << ")\n";
  print_values(out, to_vector<double>(), shape(), 0, 0, dtype() == DType::i64);
  return out.str();
}

std::ostream& operator<<(std::ostream& out, const Tensor& tensor) { return out << tensor.str(); }

}  // namespace ellipse
