// ellipse.Tensor, dtypes and devices, zero-copy exchange with NumPy and DLPack, indexing, operators, creation.
#include <nanobind/ndarray.h>
#include <nanobind/operators.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "bindings.hpp"
#include "core/error.hpp"
#include "core/random.hpp"
#include "core/tensor.hpp"

namespace ellipse::python {
namespace {

using namespace nb::literals;
using Release = nb::call_guard<nb::gil_scoped_release>;
using Axes = std::vector<std::int64_t>;

nb::dlpack::dtype dlpack_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return nb::dtype<float>();
    case DType::f64: return nb::dtype<double>();
    case DType::i64: return nb::dtype<std::int64_t>();
  }
  fail("dlpack: unknown dtype");
}

// A view of the tensor's memory for NumPy (Framework = nb::numpy) or any DLPack consumer (no framework). The
// array owns a handle to the tensor, so the memory outlives the tensor object it came from. A CUDA tensor's
// stream is synchronised first, so that the consumer reads finished values.
template <class... Framework>
nb::ndarray<Framework...> export_array(const Tensor& tensor) {
  if (!tensor.device().is_cpu()) backend_for(tensor.device()).synchronize();
  std::vector<std::size_t> shape(tensor.shape().begin(), tensor.shape().end());
  nb::capsule owner(new Tensor(tensor), [](void* handle) noexcept { delete static_cast<Tensor*>(handle); });
  const int device_type = tensor.device().is_cpu() ? nb::device::cpu::value : nb::device::cuda::value;
  return nb::ndarray<Framework...>(tensor.raw_data(), shape.size(), shape.data(), owner, tensor.strides().data(),
                                   dlpack_dtype(tensor.dtype()), device_type, tensor.device().index);
}

nb::ndarray<nb::numpy> to_numpy(const Tensor& tensor) {
  ELLIPSE_CHECK(tensor.device().is_cpu(), "numpy: the tensor is on {}; copy it to the CPU first with .to('cpu')",
                tensor.device().str());
  return export_array<nb::numpy>(tensor);
}

// A tensor over the memory of a DLPack-capable array (a NumPy array, a CUDA array of another framework) without
// copying: any strides of whole elements, not negative. The storage keeps the array alive and releases it, under
// the GIL, when the last tensor over it is gone.
Tensor from_dlpack(const nb::ndarray<>& array) {
  DType dtype;
  if (array.dtype() == nb::dtype<float>()) {
    dtype = DType::f32;
  } else if (array.dtype() == nb::dtype<double>()) {
    dtype = DType::f64;
  } else if (array.dtype() == nb::dtype<std::int64_t>()) {
    dtype = DType::i64;
  } else {
    fail("from_dlpack: the array's dtype (code {}, {} bits) is not float32, float64 or int64; convert it first",
         array.dtype().code, array.dtype().bits);
  }
  Device device;
  if (array.device_type() == nb::device::cpu::value) {
    device = Device::cpu();
  } else if (array.device_type() == nb::device::cuda::value) {
    device = Device::cuda(array.device_id());
  } else {
    fail("from_dlpack: the array is on DLPack device type {}; only CPU and CUDA arrays are accepted",
         array.device_type());
  }
  auto impl = std::make_shared<TensorImpl>();
  std::int64_t last = 0;  // the largest element offset
  for (std::size_t i = 0; i < array.ndim(); ++i) {
    const auto size = static_cast<std::int64_t>(array.shape(i));
    const std::int64_t stride = array.stride(i);
    ELLIPSE_CHECK(stride >= 0 || size <= 1, "from_dlpack: axis {} has the negative stride {}; copy the array first",
                  i, stride);
    impl->shape.push_back(size);
    impl->strides.push_back(size <= 1 ? 0 : stride);
    last += (size - 1) * (size <= 1 ? 0 : stride);
  }
  const bool empty = numel(impl->shape) == 0;
  const std::size_t bytes = empty ? 0 : static_cast<std::size_t>(last + 1) * itemsize(dtype);
  // The storage frees nothing itself: dropping its deleter drops the array.
  impl->storage = std::make_shared<Storage>(array.data(), bytes, device, [keep = hold(array)](void*) {});
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

// Python's indexing as views: an int selects (drops the axis), a slice with a positive step slices, None inserts an
// axis, ... stands for the axes not named, and a 1-D i64 tensor picks entries along its axis (index_select, a copy).
Tensor get_item(const Tensor& tensor, nb::handle key) {
  std::vector<nb::handle> items;
  if (nb::isinstance<nb::tuple>(key)) {
    for (nb::handle item : nb::borrow<nb::tuple>(key)) items.push_back(item);
  } else {
    items.push_back(key);
  }
  std::int64_t consuming = 0, ellipses = 0;  // consuming: the items that stand for one axis each
  for (nb::handle item : items) {
    ellipses += item.is(nb::ellipsis());
    consuming += !(item.is_none() || item.is(nb::ellipsis()));
  }
  ELLIPSE_CHECK(ellipses <= 1, "__getitem__: {} ellipses (...) in one index; at most one is allowed", ellipses);
  ELLIPSE_CHECK(consuming <= tensor.dim(), "__getitem__: {} indices for a tensor of {} dimensions (shape {})",
                consuming, tensor.dim(), to_string(tensor.shape()));
  Tensor out = tensor;
  std::int64_t axis = 0;  // in out
  for (std::size_t position = 0; position < items.size(); ++position) {
    const nb::handle item = items[position];
    if (item.is_none()) {
      out = unsqueeze(out, axis++);
    } else if (item.is(nb::ellipsis())) {
      axis = out.dim() - consuming;  // consuming counts the items still to come
    } else if (nb::isinstance<nb::int_>(item)) {
      const auto index = nb::cast<std::int64_t>(item);
      const std::int64_t size = out.shape()[axis];
      // IndexError, as Python's sequences raise it: iteration (for row in t) stops on it.
      if (index < -size || index >= size) {
        throw nb::index_error(fmt::format("__getitem__: index {} at position {} is out of range for an axis of "
                                          "size {} (shape {})", index, position, size, to_string(tensor.shape()))
                                  .c_str());
      }
      out = select(out, axis, index);
      --consuming;
    } else if (nb::isinstance<nb::slice>(item)) {
      Py_ssize_t start, stop, step;
      if (PySlice_Unpack(item.ptr(), &start, &stop, &step) < 0) throw nb::python_error();
      ELLIPSE_CHECK(step > 0, "__getitem__: slice step {} at position {}: only positive steps make views", step,
                    position);
      PySlice_AdjustIndices(static_cast<Py_ssize_t>(out.shape()[axis]), &start, &stop, step);
      out = slice(out, axis, start, std::max(start, stop), step);
      ++axis;
      --consuming;
    } else if (nb::isinstance<Tensor>(item)) {
      out = index_select(out, axis++, nb::cast<Tensor>(item));
      --consuming;
    } else {
      throw nb::type_error(("ellipse.Tensor indices are int, slice, None, ... or an i64 Tensor, not " +
                            nb::cast<std::string>(nb::str(item.type()))).c_str());
    }
  }
  return out;
}

// t[key] = value: value (a number, a Tensor, or nested lists or an array as ellipse.tensor takes them) is
// broadcast to the view t[key] and written into it, and so into t. An index tensor would select a copy, which the
// write would not reach, so keys are views only. In place, as fill_ and copy_: not on a tensor in autograd while
// grad mode is on.
void set_item(Tensor& tensor, nb::handle key, nb::handle value) {
  const auto is_index_tensor = [](nb::handle item) { return nb::isinstance<Tensor>(item); };
  bool indexed = is_index_tensor(key);
  if (nb::isinstance<nb::tuple>(key))
    for (nb::handle item : nb::borrow<nb::tuple>(key)) indexed = indexed || is_index_tensor(item);
  ELLIPSE_CHECK(!indexed, "__setitem__: an index tensor selects a copy, which an assignment would not reach; assign "
                "through ints, slices, None and ... (views), or build the result with index ops");
  ELLIPSE_CHECK(!(grad_enabled() && (tensor.requires_grad() || tensor.grad_fn())),
                "__setitem__: assignment into a tensor of shape {} that takes part in autograd; do it under "
                "ellipse.no_grad()", to_string(tensor.shape()));
  Tensor target = get_item(tensor, key);
  // A float fills exactly in f32 and f64; an int into i64 goes through an i64 tensor, as a double would round it.
  if (nb::isinstance<nb::float_>(value) || (nb::isinstance<nb::int_>(value) && target.dtype() != DType::i64)) {
    target.fill_(nb::cast<double>(value));
    return;
  }
  Tensor source;
  if (nb::isinstance<Tensor>(value)) {
    source = nb::cast<Tensor>(value).to(target.dtype());
    ELLIPSE_CHECK(source.device() == target.device(), "__setitem__: the value is on {}, the tensor on {}",
                  source.device().str(), target.device().str());
    // The value may read the memory the copy writes (t[1:] = t[:-1]): then it is copied out first.
    if (source.storage() == target.storage()) source = source.clone();
  } else {
    source = nb::cast<Tensor>(nb::module_::import_("ellipse").attr("tensor")(value, target.dtype()))
                 .to(target.device());
  }
  ELLIPSE_CHECK(broadcast_shapes(target.shape(), source.shape(), "__setitem__") == target.shape(),
                "__setitem__: a value of shape {} does not broadcast to the selection's shape {}",
                to_string(source.shape()), to_string(target.shape()));
  target.copy_(source.expand(target.shape()));
}

Tensor scalar_like(double value, const Tensor& like) { return scalar(value, like.dtype(), like.device()); }

nb::tuple to_tuple(const std::vector<std::int64_t>& values) {
  nb::list list;
  for (std::int64_t value : values) list.append(value);
  return nb::tuple(list);
}

}  // namespace

void bind_tensor(nb::module_& m) {
  nb::enum_<DType>(m, "dtype", "Element types: f32 (the working type), f64 (gradient checks), i64 (ids, labels)")
      .value("f32", DType::f32)
      .value("f64", DType::f64)
      .value("i64", DType::i64)
      .export_values()
      .def("__str__", [](DType dtype) { return std::string(dtype_name(dtype)); })
      .def("__repr__", [](DType dtype) { return "ellipse." + std::string(dtype_name(dtype)); });

  nb::class_<Device>(m, "Device", "A device: 'cpu', 'cuda' or 'cuda:N'. Functions taking a device accept the string.")
      .def("__init__", [](Device* device, const std::string& text) { new (device) Device(Device::parse(text)); },
           "text"_a)
      .def_prop_ro("is_cpu", &Device::is_cpu)
      .def_ro("index", &Device::index)
      .def("__str__", &Device::str)
      .def("__repr__", [](const Device& device) { return "Device('" + device.str() + "')"; })
      .def(nb::self == nb::self);
  nb::implicitly_convertible<std::string, Device>();
  m.def("cuda_device_count", &cuda_device_count,
        "The CUDA devices this process can use: 0 without the CUDA backend or a usable driver.");

  nb::class_<Generator>(m, "Generator", "A seeded random generator: the same seed gives the same numbers everywhere.")
      .def(nb::init<std::uint64_t>(), "seed"_a = 0)
      .def("manual_seed", &Generator::manual_seed, "seed"_a)
      .def("state", &Generator::state, "The full state as 6 words: set_state continues the same stream.")
      .def("set_state", &Generator::set_state, "words"_a);
  m.def("manual_seed", &manual_seed, "seed"_a, "Reseeds the process-wide generator used when none is passed.");
  m.def("default_generator", &default_generator, nb::rv_policy::reference, "The process-wide generator.");

  m.def("grad_enabled", &grad_enabled, "Whether ops record the autograd graph on this thread.");
  m.def("set_grad_enabled", &set_grad_enabled, "enabled"_a);
  m.def("set_anomaly_detection", &set_anomaly_detection, "enabled"_a,
        "While on, the first op or backward rule that produces a NaN or Inf raises an Error naming it.");

  nb::class_<Tensor> tensor(m, "Tensor",
                            "A strided view of shared storage with autograd state. Create one with ellipse.tensor, "
                            "from_numpy, from_dlpack, zeros, randn, ...; indexing and slicing give views.");
  tensor.def_prop_ro("shape", [](const Tensor& t) { return to_tuple(t.shape()); })
      .def_prop_ro("strides", [](const Tensor& t) { return to_tuple(t.strides()); },
                   "Strides in elements, not bytes.")
      .def_prop_ro("ndim", &Tensor::dim)
      .def_prop_ro("dtype", &Tensor::dtype)
      .def_prop_ro("device", &Tensor::device)
      .def("numel", &Tensor::numel)
      .def("__len__", [](const Tensor& t) { return t.size(0); })
      .def("is_contiguous", &Tensor::is_contiguous)
      .def(
          "data_ptr", [](const Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.raw_data()); },
          "The address of the first element (a device address for a CUDA tensor).")
      .def_prop_rw(
          "requires_grad", &Tensor::requires_grad, [](Tensor& t, bool value) { t.requires_grad_(value); },
          "Whether backward fills this tensor's .grad (set it on leaves).")
      .def_prop_ro(
          "grad", [](const Tensor& t) -> std::optional<Tensor> {
            Tensor grad = t.grad();
            return grad.defined() ? std::optional<Tensor>(grad) : std::nullopt;
          },
          "The gradient backward accumulated, or None.")
      .def_prop_ro("is_leaf", &Tensor::is_leaf)
      .def("zero_grad", &Tensor::zero_grad, "Drops .grad, so that the next backward starts from zero.")
      .def(
          "backward",
          [](const Tensor& t, std::optional<Tensor> grad, bool retain_graph) {
            t.backward(grad.value_or(Tensor()), retain_graph);
          },
          "grad"_a = nb::none(), "retain_graph"_a = false, Release(),
          "Backpropagates from this tensor (a one-element tensor needs no grad), filling the leaves' .grad.")
      .def("detach", &Tensor::detach, "The same storage without history.")
      .def("item", &Tensor::item, "The value of a one-element tensor, as a float.")
      .def("__float__", &Tensor::item)
      .def("__int__", [](const Tensor& t) { return static_cast<std::int64_t>(t.item()); })
      .def("__bool__", [](const Tensor& t) { return t.item() != 0; }, "The truth of a one-element tensor.")
      .def("tolist", [](const Tensor& t) { return nb::cast(to_numpy(t.to(Device::cpu()))).attr("tolist")(); })
      .def("contiguous", &Tensor::contiguous)
      .def("clone", &Tensor::clone)
      .def("to", nb::overload_cast<DType>(&Tensor::to, nb::const_), "dtype"_a, Release())
      .def("to", nb::overload_cast<Device>(&Tensor::to, nb::const_), "device"_a, Release())
      .def("reshape", [](const Tensor& t, const Shape& shape) { return reshape(t, shape); }, "shape"_a)
      .def("view", [](const Tensor& t, const Shape& shape) { return view(t, shape); }, "shape"_a)
      .def("permute", [](const Tensor& t, const std::vector<std::int64_t>& order) { return permute(t, order); },
           "order"_a)
      .def("transpose", &Tensor::transpose, "a"_a, "b"_a)
      .def("expand", &Tensor::expand, "shape"_a)
      .def("unsqueeze", &Tensor::unsqueeze, "axis"_a)
      .def("squeeze", &Tensor::squeeze, "axis"_a)
      .def("sum", nb::overload_cast<const Tensor&, const Axes&, bool>(&sum), "axes"_a = Axes{}, "keepdim"_a = false,
           Release())
      .def("mean", nb::overload_cast<const Tensor&, const Axes&, bool>(&mean), "axes"_a = Axes{}, "keepdim"_a = false,
           Release())
      .def("fill_", [](Tensor& t, double value) { t.fill_(value); }, "value"_a, "Fills in place (outside autograd).")
      .def("copy_", [](Tensor& t, const Tensor& source) { t.copy_(source); }, "source"_a, Release(),
           "Copies source's values in place (outside autograd).")
      .def("add_", [](Tensor& t, const Tensor& other, double alpha) { t.add_(other, alpha); }, "other"_a,
           "alpha"_a = 1.0, Release(), "Adds alpha * other in place (outside autograd); other broadcasts to t.")
      .def("mul_", [](Tensor& t, double factor) { t.mul_(factor); }, "factor"_a, Release(),
           "Multiplies by factor in place (outside autograd).")
      .def("__getitem__", &get_item, nb::arg("key").none(),
           "Views for ints, slices (positive steps), None and ...; index_select for an i64 Tensor.")
      .def("__setitem__", &set_item, nb::arg("key").none(), "value"_a,
           "Writes value (a number, a Tensor, lists or an array), broadcast, into the view self[key].")
      .def("__repr__", &Tensor::str)
      .def("numpy", &to_numpy, "A NumPy array over this CPU tensor's memory (no copy; strides kept).")
      .def(
          "__array__",
          [](const Tensor& t, nb::handle dtype, nb::handle copy) {
            nb::object array = nb::cast(to_numpy(t));
            if (!dtype.is_none()) array = array.attr("astype")(dtype, "copy"_a = false);
            if (!copy.is_none() && nb::cast<bool>(copy)) array = array.attr("copy")();
            return array;
          },
          "dtype"_a = nb::none(), "copy"_a = nb::none())
      .def(
          "__dlpack__",
          [](const Tensor& t, nb::kwargs kwargs) {
            return nb::cast(export_array<nb::array_api>(t)).attr("__dlpack__")(**kwargs);
          },
          "The DLPack capsule of this tensor's memory (no copy); the keywords are the array API's.")
      .def("__dlpack_device__",
           [](const Tensor& t) {
             return nb::make_tuple(t.device().is_cpu() ? nb::device::cpu::value : nb::device::cuda::value,
                                   t.device().index);
           })
      // Operators: tensors broadcast by NumPy's rules; Python numbers act as scalars.
      .def("__add__", [](const Tensor& a, const Tensor& b) { return a + b; }, nb::is_operator(), Release())
      .def("__add__", [](const Tensor& a, double s) { return a + s; }, nb::is_operator(), Release())
      .def("__radd__", [](const Tensor& a, double s) { return s + a; }, nb::is_operator(), Release())
      .def("__sub__", [](const Tensor& a, const Tensor& b) { return a - b; }, nb::is_operator(), Release())
      .def("__sub__", [](const Tensor& a, double s) { return a - s; }, nb::is_operator(), Release())
      .def("__rsub__", [](const Tensor& a, double s) { return s - a; }, nb::is_operator(), Release())
      .def("__mul__", [](const Tensor& a, const Tensor& b) { return a * b; }, nb::is_operator(), Release())
      .def("__mul__", [](const Tensor& a, double s) { return a * s; }, nb::is_operator(), Release())
      .def("__rmul__", [](const Tensor& a, double s) { return s * a; }, nb::is_operator(), Release())
      .def("__truediv__", [](const Tensor& a, const Tensor& b) { return a / b; }, nb::is_operator(), Release())
      .def("__truediv__", [](const Tensor& a, double s) { return a / s; }, nb::is_operator(), Release())
      .def("__rtruediv__", [](const Tensor& a, double s) { return div(scalar_like(s, a), a); }, nb::is_operator(),
           Release())
      .def("__matmul__", [](const Tensor& a, const Tensor& b) { return matmul(a, b); }, nb::is_operator(), Release())
      .def("__pow__", [](const Tensor& a, double exponent) { return pow(a, exponent); }, nb::is_operator(), Release())
      .def("__neg__", [](const Tensor& a) { return -a; }, Release())
      .def("__abs__", [](const Tensor& a) { return abs(a); }, Release())
      .def_prop_ro(
          "T",
          [](const Tensor& t) {
            std::vector<std::int64_t> reversed;
            for (std::int64_t axis = t.dim() - 1; axis >= 0; --axis) reversed.push_back(axis);
            return permute(t, reversed);
          },
          "The axes reversed, as a view (NumPy's .T).");
  // Comparisons, elementwise as NumPy's (== and != too; a tensor still hashes by identity, as a dict key), against
  // a tensor or a Python number.
  using Comparison = Tensor (*)(const Tensor&, const Tensor&);
  const std::pair<const char*, Comparison> comparisons[] = {
      {"__lt__", &less}, {"__le__", &less_equal}, {"__gt__", &greater}, {"__ge__", &greater_equal},
      {"__eq__", &equal}, {"__ne__", &not_equal}};
  for (const auto& [name, compare] : comparisons) {
    tensor.def(name, [compare](const Tensor& a, const Tensor& b) { return compare(a, b); }, nb::is_operator(),
               Release())
        .def(name, [compare](const Tensor& a, double s) { return compare(a, scalar_like(s, a)); }, nb::is_operator(),
             Release());
  }

  m.def("from_dlpack", &from_dlpack, nb::arg("array").noconvert(),
        "A tensor over the memory of a DLPack-capable array (NumPy, or a CUDA array of another framework), without "
        "copying: it keeps the array alive. float32, float64 or int64, with non-negative strides.");
  m.def(
      "from_dlpack",
      [](const nb::ndarray<nb::ro>&) -> Tensor {
        fail("from_dlpack: the array is read-only, and a tensor over it could write to it; copy it with "
             "ellipse.tensor() or make it writeable");
      },
      nb::arg("array").noconvert());

  // Creation; dtype defaults to f32 and device to the CPU, as in the library.
  m.def("empty", &empty, "shape"_a, "dtype"_a = DType::f32, "device"_a = Device::cpu(), Release());
  m.def("zeros", &zeros, "shape"_a, "dtype"_a = DType::f32, "device"_a = Device::cpu(), Release());
  m.def("ones", &ones, "shape"_a, "dtype"_a = DType::f32, "device"_a = Device::cpu(), Release());
  m.def("full", &full, "shape"_a, "value"_a, "dtype"_a = DType::f32, "device"_a = Device::cpu(), Release());
  m.def("zeros_like", &zeros_like, "like"_a, Release());
  m.def("ones_like", &ones_like, "like"_a, Release());
  m.def("full_like", &full_like, "like"_a, "value"_a, Release());
  m.def("scalar", &scalar, "value"_a, "dtype"_a = DType::f32, "device"_a = Device::cpu(), "A 0-dimensional tensor.");
  m.def("arange", &arange, "start"_a, "end"_a, "step"_a = 1.0, "dtype"_a = DType::f32, "device"_a = Device::cpu(),
        "[start, end) in steps of step.");
  m.def(
      "randn",
      [](const Shape& shape, Generator* gen, DType dtype, Device device) {
        return randn(shape, gen ? *gen : default_generator(), dtype, device);
      },
      "shape"_a, "gen"_a = nb::none(), "dtype"_a = DType::f32, "device"_a = Device::cpu(), Release(),
      "Standard normal entries drawn from gen (the default generator when None).");
  m.def(
      "uniform",
      [](const Shape& shape, double low, double high, Generator* gen, DType dtype, Device device) {
        return uniform(shape, low, high, gen ? *gen : default_generator(), dtype, device);
      },
      "shape"_a, "low"_a, "high"_a, "gen"_a = nb::none(), "dtype"_a = DType::f32, "device"_a = Device::cpu(),
      Release());
  m.def(
      "randint",
      [](const Shape& shape, std::int64_t bound, Generator* gen, Device device) {
        return randint(shape, bound, gen ? *gen : default_generator(), device);
      },
      "shape"_a, "bound"_a, "gen"_a = nb::none(), "device"_a = Device::cpu(), Release(),
      "i64 integers uniform in [0, bound).");
}

}  // namespace ellipse::python
