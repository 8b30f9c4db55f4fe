// Tensors: creation, random numbers, copies and dtype conversion, views and their storage, layouts,
// broadcasting, printing, 0-d and zero-size tensors, in-place updates.
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <set>
#include <sstream>

#include "backends/cpu/cpu_backend.hpp"
#include "helpers.hpp"

using namespace ellipse;

namespace {
std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }
}  // namespace

TEST_CASE("creation: zeros, ones, full, scalar, empty") {
  const Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dim() == 2);
  CHECK(z.numel() == 6);
  CHECK(z.dtype() == DType::f32);
  CHECK(z.device() == Device::cpu());
  CHECK(z.is_contiguous());
  CHECK(z.strides() == Strides{3, 1});
  CHECK(z.offset() == 0);
  CHECK_FALSE(z.requires_grad());
  CHECK(z.is_leaf());
  CHECK(values(z) == std::vector<double>(6, 0.0));

  CHECK(values(ones({4}, DType::f64)) == std::vector<double>(4, 1.0));
  CHECK(ones({4}, DType::f64).dtype() == DType::f64);
  const Tensor f = full({2, 2}, -2.5, DType::f64);
  CHECK(values(f) == std::vector<double>(4, -2.5));
  const Tensor i = full({3}, 7, DType::i64);
  CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{7, 7, 7});

  const Tensor s = scalar(3.25, DType::f64);
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.item() == 3.25);

  const Tensor like = full_like(f, 4.0);
  CHECK(like.shape() == f.shape());
  CHECK(like.dtype() == DType::f64);
  CHECK(values(like) == std::vector<double>(4, 4.0));
  CHECK(values(zeros_like(f)) == std::vector<double>(4, 0.0));
  CHECK(values(ones_like(i)) == std::vector<double>(3, 1.0));
  CHECK(ones_like(i).dtype() == DType::i64);

  CHECK(empty({5, 7}, DType::f64).shape() == Shape{5, 7});
}

TEST_CASE("creation: arange") {
  CHECK(values(arange(0, 5)) == std::vector<double>{0, 1, 2, 3, 4});
  CHECK(values(arange(2, 3, 0.25, DType::f64)) == std::vector<double>{2, 2.25, 2.5, 2.75});
  CHECK(values(arange(5, 0, -2, DType::f64)) == std::vector<double>{5, 3, 1});
  CHECK(arange(0, 1, 0.3, DType::f64).numel() == 4);  // 0, 0.3, 0.6, 0.9: the end is exclusive
  CHECK(arange(3, 3).numel() == 0);
  CHECK(arange(3, 1).numel() == 0);  // an empty range, not a negative size
  const Tensor ints = arange(0, 4, 1, DType::i64);
  CHECK(ints.dtype() == DType::i64);
  CHECK(ints.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 3});
}

TEST_CASE("creation: from_vector and tensor") {
  const Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(a.dtype() == DType::f64);
  CHECK(a.shape() == Shape{2, 3});
  CHECK(values(a) == std::vector<double>{1, 2, 3, 4, 5, 6});
  const Tensor b = from_vector<std::int64_t>({4, -5}, {2});
  CHECK(b.dtype() == DType::i64);
  CHECK(b.to_vector<std::int64_t>() == std::vector<std::int64_t>{4, -5});
  const Tensor c = tensor({1.5f, 2.5f});
  CHECK(c.dtype() == DType::f32);
  CHECK(c.shape() == Shape{2});
  CHECK(c.to_vector<float>() == std::vector<float>{1.5f, 2.5f});
  // The tensor owns a copy: changing the source afterwards changes nothing.
  std::vector<float> source{1, 2};
  const Tensor d = from_vector(source, {2});
  source[0] = 9;
  CHECK(d.to_vector<float>() == std::vector<float>{1, 2});
}

TEST_CASE("random: the same seed gives the same numbers, another seed others") {
  Generator g1(42), g2(42), g3(43);
  const auto a = randn({1000}, g1, DType::f64).to_vector<double>();
  const auto b = randn({1000}, g2, DType::f64).to_vector<double>();
  const auto c = randn({1000}, g3, DType::f64).to_vector<double>();
  CHECK(a == b);
  CHECK(a != c);
  // The generator advances: the next draw differs from the first.
  CHECK(randn({1000}, g1, DType::f64).to_vector<double>() != a);
  // manual_seed restarts the sequence.
  g1.manual_seed(42);
  CHECK(randn({1000}, g1, DType::f64).to_vector<double>() == a);
  // f32 draws are the f64 draws rounded.
  Generator g4(42);
  const auto f = randn({1000}, g4, DType::f32).to_vector<float>();
  bool rounded = true;
  for (std::size_t i = 0; i < f.size(); ++i) rounded = rounded && f[i] == static_cast<float>(a[i]);
  CHECK(rounded);

  // The default generator is seeded by manual_seed.
  manual_seed(7);
  const auto d1 = randn({10}).to_vector<float>();
  manual_seed(7);
  CHECK(randn({10}).to_vector<float>() == d1);

  // The bit stream is fixed across compilers and platforms (no std:: distributions): pin two values.
  Generator pinned(0);
  const std::uint64_t first = pinned.next_u64();
  Generator pinned_again(0);
  CHECK(pinned_again.next_u64() == first);
  CHECK(first != 0);
}

TEST_CASE("random: moments and ranges") {
  Generator gen(2024);
  const auto n = randn({200000}, gen, DType::f64).to_vector<double>();
  double mean = 0, sq = 0;
  for (double v : n) mean += v;
  mean /= static_cast<double>(n.size());
  for (double v : n) sq += (v - mean) * (v - mean);
  const double sd = std::sqrt(sq / static_cast<double>(n.size()));
  CHECK(std::abs(mean) < 0.01);  // standard error 0.0022
  CHECK(std::abs(sd - 1.0) < 0.01);
  std::int64_t beyond_two = 0;
  for (double v : n) beyond_two += std::abs(v) > 2.0;
  CHECK(static_cast<double>(beyond_two) / static_cast<double>(n.size()) == doctest::Approx(0.0455).epsilon(0.05));

  const auto u = uniform({100000}, -2.0, 3.0, gen, DType::f64).to_vector<double>();
  double lo = INFINITY, hi = -INFINITY, usum = 0;
  for (double v : u) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    usum += v;
  }
  CHECK(lo >= -2.0);
  CHECK(hi < 3.0);
  CHECK(lo < -1.99);
  CHECK(hi > 2.99);
  CHECK(usum / static_cast<double>(u.size()) == doctest::Approx(0.5).epsilon(0.02));

  const auto r = randint({10000}, 7, gen).to_vector<std::int64_t>();
  std::vector<int> counts(7, 0);
  for (auto v : r) {
    REQUIRE(v >= 0);
    REQUIRE(v < 7);
    ++counts[static_cast<std::size_t>(v)];
  }
  for (int count : counts) CHECK(std::abs(count - 10000 / 7) < 150);  // sd ~ 35
}

TEST_CASE("clone: a fresh contiguous copy") {
  Tensor x = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor c = x.clone();
  CHECK(c.storage() != x.storage());
  CHECK(c.to_vector<float>() == x.to_vector<float>());
  x.fill_(0);
  CHECK(c.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});  // the copy is independent
  const Tensor t = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1);
  const Tensor tc = t.clone();
  CHECK_FALSE(t.is_contiguous());
  CHECK(tc.is_contiguous());
  CHECK(tc.shape() == Shape{3, 2});
  CHECK(tc.to_vector<float>() == std::vector<float>{1, 4, 2, 5, 3, 6});
}

TEST_CASE("to(dtype): conversions") {
  const Tensor x = from_vector<double>({1.5, -2.7, 3.0, 1e10}, {4});
  const Tensor f = x.to(DType::f32);
  CHECK(f.dtype() == DType::f32);
  CHECK(f.to_vector<float>() == std::vector<float>{1.5f, -2.7f, 3.0f, 1e10f});
  // Float to integer truncates toward zero, like a C++ cast.
  const Tensor i = from_vector<double>({1.9, -2.7, 3.0}, {3}).to(DType::i64);
  CHECK(i.dtype() == DType::i64);
  CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, -2, 3});
  CHECK(values(i.to(DType::f64)) == std::vector<double>{1, -2, 3});
  // Converting to the same dtype is free: the same tensor.
  CHECK(x.to(DType::f64).impl() == x.impl());
  // Non-contiguous sources convert element by element.
  const Tensor t = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1).to(DType::f32);
  CHECK(t.to_vector<float>() == std::vector<float>{1, 4, 2, 5, 3, 6});
  CHECK(t.is_contiguous());
}

TEST_CASE("views share storage: writes through a view reach the base") {
  Tensor base = zeros({3, 4});
  base.select(0, 1).fill_(1);                      // row 1
  base.slice(1, 0, 4, 2).add_(ones({3, 2}), 2.0);  // columns 0 and 2
  base.transpose(0, 1).select(0, 3).fill_(7);      // column 3
  CHECK(base.to_vector<float>() == std::vector<float>{2, 0, 2, 7, 3, 1, 3, 7, 2, 0, 2, 7});
  Tensor flat = base.view({12});
  flat.narrow(0, 0, 2).fill_(-1);
  CHECK(base.to_vector<float>()[0] == -1);
  CHECK(base.to_vector<float>()[1] == -1);
  base.unsqueeze(0).squeeze(0).permute({1, 0}).expand({4, 3}).select(1, 2).mul_(0);  // row 2 of base
  const auto v = base.to_vector<float>();
  CHECK(std::vector<float>(v.begin() + 8, v.end()) == std::vector<float>(4, 0));

  // Every view op returns a tensor on the same storage, with its own geometry.
  for (const Tensor& view :
       {base.view({4, 3}), base.reshape({2, 6}), base.permute({1, 0}), base.transpose(0, 1), base.narrow(1, 1, 2),
        base.slice(0, 0, 3, 2), base.select(1, 0), base.expand({2, 3, 4}), base.unsqueeze(1),
        base.view({3, 4, 1}).squeeze(2), base.contiguous(), base.detach(), split(base, {1, 2}, 0)[1]}) {
    CHECK(view.storage() == base.storage());
  }
  CHECK(base.narrow(0, 1, 2).offset() == 4);
  CHECK(base.select(1, 3).offset() == 3);
  CHECK(base.select(1, 3).strides() == Strides{4});
  CHECK(base.expand({2, 3, 4}).strides() == Strides{0, 4, 1});
  CHECK(base.slice(1, 1, 4, 2).strides() == Strides{4, 2});
}

TEST_CASE("is_contiguous") {
  const Tensor x = zeros({2, 3, 4});
  CHECK(x.is_contiguous());
  CHECK_FALSE(x.transpose(0, 2).is_contiguous());
  CHECK(x.transpose(0, 2).transpose(0, 2).is_contiguous());
  CHECK_FALSE(x.slice(2, 0, 4, 2).is_contiguous());
  CHECK(x.narrow(0, 1, 1).is_contiguous());  // a block of whole rows
  CHECK_FALSE(x.narrow(2, 0, 3).is_contiguous());
  CHECK_FALSE(x.expand({5, 2, 3, 4}).is_contiguous());
  CHECK(x.select(0, 1).is_contiguous());
  CHECK_FALSE(x.select(2, 1).is_contiguous());
  CHECK(x.unsqueeze(1).is_contiguous());
  // The stride of a size-1 axis does not matter.
  CHECK(zeros({3, 1}).transpose(0, 1).is_contiguous());
  CHECK(zeros({}).is_contiguous());
  CHECK(x.contiguous().impl() == x.impl());  // contiguous() of a contiguous tensor is the tensor
  const Tensor t = x.transpose(0, 1);
  const Tensor tc = t.contiguous();
  CHECK(tc.is_contiguous());
  CHECK(tc.storage() != x.storage());
  CHECK(tc.to_vector<float>() == t.to_vector<float>());
}

TEST_CASE("dense_axis_order: the memory order of permuted views, nothing for gaps, overlaps or broadcasts") {
  using Order = std::vector<std::int64_t>;
  const Tensor x = zeros({2, 3, 4});
  CHECK(dense_axis_order(x.shape(), x.strides()) == Order{0, 1, 2});
  const Tensor p = x.permute({2, 0, 1});  // shape [4, 2, 3]; memory still [2, 3, 4]
  CHECK(dense_axis_order(p.shape(), p.strides()) == Order{1, 2, 0});
  const Tensor t = x.transpose(0, 2);
  CHECK(dense_axis_order(t.shape(), t.strides()) == Order{2, 1, 0});
  // A size-1 axis may carry any stride; it counts as innermost.
  const Tensor u = zeros({3, 1, 4}).transpose(1, 2);  // shape [3, 4, 1]
  CHECK(dense_axis_order(u.shape(), u.strides()) == Order{0, 1, 2});
  CHECK_FALSE(dense_axis_order(x.narrow(2, 0, 3).shape(), x.narrow(2, 0, 3).strides()));  // gaps
  CHECK_FALSE(dense_axis_order(x.slice(1, 0, 3, 2).shape(), x.slice(1, 0, 3, 2).strides()));
  const Tensor e = zeros({3, 1}).expand({3, 5});  // overlaps
  CHECK_FALSE(dense_axis_order(e.shape(), e.strides()));
  CHECK(dense_axis_order({}, {}) == Order{});
}

TEST_CASE("view versus reshape: view never copies, reshape copies only when it must") {
  const Tensor x = arange(0, 12, 1, DType::f32).reshape({3, 4});
  const Tensor r = x.reshape({6, 2});
  CHECK(r.storage() == x.storage());  // contiguous: a view
  const Tensor t = x.transpose(0, 1);
  const Tensor rt = t.reshape({12});
  CHECK(rt.storage() != x.storage());  // a transpose cannot be flattened in place: a copy
  CHECK(rt.to_vector<float>() == std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK_THROWS_AS(t.view({12}), Error);
  // Splitting or merging axes that are dense with each other needs no copy, even in a strided tensor.
  const Tensor tv = t.view({2, 2, 3});
  CHECK(tv.storage() == x.storage());
  CHECK(tv.to_vector<float>() == rt.to_vector<float>());
  const Tensor n = x.narrow(1, 0, 3);  // [3, 3], strides [4, 1]: rows with gaps
  CHECK(n.reshape({9}).storage() != x.storage());
  CHECK(n.view({3, 3, 1}).storage() == x.storage());
  // A step-2 slice of whole rows is one evenly strided run: it flattens without a copy.
  const Tensor s = x.slice(1, 0, 4, 2);  // [3, 2], strides [4, 2]
  CHECK(s.view({6}).strides() == Strides{2});
  CHECK(s.view({6}).to_vector<float>() == std::vector<float>{0, 2, 4, 6, 8, 10});
  CHECK(x.reshape({-1}).shape() == Shape{12});
  CHECK(x.reshape({2, -1, 2}).shape() == Shape{2, 3, 2});
}

TEST_CASE("view and reshape agree with a row-major reference on random layouts") {
  // Random strided layouts (permutations, step slices, size-1 axes) reshaped into random factorisations:
  // whenever view succeeds it must read the same values as reshape, which must match the row-major order.
  Generator gen(5);
  const std::vector<Shape> targets = {{24},         {2, 12}, {12, 2}, {4, 6},    {2, 3, 4}, {4, 3, 2},
                                      {2, 2, 2, 3}, {1, 24}, {24, 1}, {3, 1, 8}, {6, 4},    {2, 12, 1}};
  int viewed = 0, copied = 0;
  for (int trial = 0; trial < 300; ++trial) {
    // A [2, 3, 4] tensor carved out of a larger buffer in a random way.
    Tensor base = arange(0, 2 * 3 * 4 * 8, 1, DType::f64).reshape({4, 6, 8});
    Tensor x = base;
    if (gen.uniform() < 0.5)
      x = x.slice(0, 0, 4, 2);
    else
      x = x.narrow(0, 1, 2);
    if (gen.uniform() < 0.5)
      x = x.slice(1, 0, 6, 2);
    else
      x = x.narrow(1, 3, 3);
    if (gen.uniform() < 0.5)
      x = x.slice(2, 0, 8, 2);
    else
      x = x.narrow(2, 0, 4);
    std::vector<std::int64_t> order{0, 1, 2};
    for (int i = 2; i > 0; --i)
      std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(gen.integer(i + 1))]);
    x = x.permute(order);
    if (gen.uniform() < 0.3) x = x.unsqueeze(gen.integer(4));
    const auto expected = x.contiguous().to_vector<double>();
    const Shape& target = targets[static_cast<std::size_t>(gen.integer(static_cast<std::int64_t>(targets.size())))];
    INFO("shape ", to_string(x.shape()), " strides ", to_string(x.strides()), " to ", to_string(target));
    const Tensor r = x.reshape(target);
    CHECK(r.shape() == target);
    CHECK(r.to_vector<double>() == expected);
    const std::string error = ellipse::testing::error_message([&] {
      const Tensor v = x.view(target);
      CHECK(v.storage() == base.storage());
      CHECK(v.to_vector<double>() == expected);
    });
    (error.empty() ? viewed : copied)++;
    if (x.is_contiguous()) CHECK(error.empty());
  }
  // Both outcomes must have been exercised.
  CHECK(viewed > 20);
  CHECK(copied > 20);
}

TEST_CASE("broadcasting rules") {
  CHECK(broadcast_shapes({3, 1, 4}, {5, 4}, "t") == Shape{3, 5, 4});
  CHECK(broadcast_shapes({}, {2, 3}, "t") == Shape{2, 3});
  CHECK(broadcast_shapes({2, 3}, {}, "t") == Shape{2, 3});
  CHECK(broadcast_shapes({1}, {0}, "t") == Shape{0});
  CHECK(broadcast_shapes({2, 1}, {1, 3}, "t") == Shape{2, 3});
  CHECK(broadcast_shapes({1, 1, 1}, {4}, "t") == Shape{1, 1, 4});
  CHECK_THROWS_AS(broadcast_shapes({2}, {3}, "t"), Error);
  CHECK_THROWS_AS(broadcast_shapes({2, 0}, {2, 3}, "t"), Error);
  CHECK_ERROR(broadcast_shapes({4, 2}, {3, 2}, "my_op"), "my_op", "[4, 2]", "[3, 2]", "dimension 0");

  const Tensor a = from_vector<float>({1, 2, 3}, {3, 1});
  const Tensor b = from_vector<float>({10, 20}, {2});
  const Tensor c = a + b;
  CHECK(c.shape() == Shape{3, 2});
  CHECK(c.to_vector<float>() == std::vector<float>{11, 21, 12, 22, 13, 23});
  CHECK((scalar(1.0) + zeros({2, 2})).shape() == Shape{2, 2});
  CHECK((zeros({0, 3}) * ones({3})).shape() == Shape{0, 3});
  // Expanded views are read through stride 0 without copying.
  const Tensor e = b.expand({4, 2});
  CHECK(e.storage() == b.storage());
  CHECK(e.to_vector<float>() == std::vector<float>{10, 20, 10, 20, 10, 20, 10, 20});
}

TEST_CASE("printing: shape, dtype, device, values and truncation") {
  const Tensor small = from_vector<float>({1, 2.5, -3, 4, 5, 6}, {2, 3});
  const std::string s = small.str();
  CHECK(s.find("shape=[2, 3]") != std::string::npos);
  CHECK(s.find("dtype=f32") != std::string::npos);
  CHECK(s.find("device=cpu") != std::string::npos);
  CHECK(s.find("2.5") != std::string::npos);
  CHECK(s.find("-3") != std::string::npos);
  CHECK(s.find("...") == std::string::npos);
  CHECK(s.find("requires_grad") == std::string::npos);
  std::ostringstream stream;
  stream << small;
  CHECK(stream.str() == s);

  // Big tensors show their edges only.
  const Tensor big = arange(0, 1000, 1, DType::f64).reshape({10, 100});
  const std::string b = big.str();
  CHECK(b.find("dtype=f64") != std::string::npos);
  CHECK(b.find("...") != std::string::npos);
  CHECK(b.find("999") != std::string::npos);  // the last element
  CHECK(b.find("500") == std::string::npos);  // a middle one
  CHECK(b.size() < 400);

  const Tensor ints = arange(0, 3, 1, DType::i64);
  CHECK(ints.str().find("[0, 1, 2]") != std::string::npos);
  CHECK(ints.str().find("dtype=i64") != std::string::npos);
  Tensor leaf = zeros({2}).requires_grad_();
  CHECK(leaf.str().find("requires_grad") != std::string::npos);
  CHECK(scalar(1.5).str().find("shape=[]") != std::string::npos);
  CHECK(scalar(1.5).str().find("1.5") != std::string::npos);
  CHECK(zeros({0, 3}).str().find("shape=[0, 3]") != std::string::npos);
  CHECK(Tensor().str() == "Tensor(undefined)");
}

TEST_CASE("0-dimensional tensors") {
  const Tensor s = scalar(2.0, DType::f64);
  CHECK(s.shape().empty());
  CHECK(s.strides().empty());
  CHECK(s.is_contiguous());
  CHECK(s.item() == 2.0);
  CHECK((s * 3.0).item() == 6.0);
  CHECK(exp(s).dim() == 0);
  const Tensor v = s + from_vector<double>({1, 2}, {2});
  CHECK(v.shape() == Shape{2});
  CHECK(values(v) == std::vector<double>{3, 4});
  CHECK(sum(s).dim() == 0);
  CHECK(sum(s).item() == 2.0);
  CHECK(sum(s, {0}).item() == 2.0);  // axis 0 (or -1) of a 0-d tensor is accepted, as in PyTorch
  CHECK(mean(s, {-1}, true).dim() == 0);
  CHECK(max(s).item() == 2.0);
  CHECK(softmax(s, 0).item() == 1.0);
  CHECK(cumsum(s, 0).item() == 2.0);
  // A reduction's result is never a view of its input.
  CHECK(sum(s).storage() != s.storage());
  CHECK(s.reshape({1, 1}).shape() == Shape{1, 1});
  CHECK(s.unsqueeze(0).shape() == Shape{1});
  CHECK(from_vector<double>({5}, {1}).squeeze(0).dim() == 0);
  CHECK(s.expand({2, 3}).to_vector<double>() == std::vector<double>(6, 2.0));
  CHECK(matmul(from_vector<double>({1, 2}, {2}), from_vector<double>({3, 4}, {2})).item() == 11.0);

  // Gradients through 0-d tensors.
  Tensor x = scalar(3.0, DType::f64).requires_grad_();
  const Tensor y = mul(x, x) + sum(x, {0});
  y.backward();
  CHECK(x.grad().dim() == 0);
  CHECK(x.grad().item() == 7.0);
}

TEST_CASE("zero-size tensors") {
  const Tensor z = zeros({0, 3});
  CHECK(z.numel() == 0);
  CHECK(z.shape() == Shape{0, 3});
  CHECK(z.to_vector<float>().empty());
  CHECK((z + 1.0).shape() == Shape{0, 3});
  CHECK(exp(z).numel() == 0);
  const Tensor s = sum(z, {0});
  CHECK(s.shape() == Shape{3});
  CHECK(s.to_vector<float>() == std::vector<float>(3, 0));
  CHECK(sum(z).item() == 0.0);
  CHECK(z.reshape({3, 0}).shape() == Shape{3, 0});
  CHECK(z.reshape({-1}).shape() == Shape{0});
  CHECK(z.transpose(0, 1).shape() == Shape{3, 0});
  CHECK(z.transpose(0, 1).contiguous().shape() == Shape{3, 0});
  CHECK(concat({z, ones({2, 3})}, 0).shape() == Shape{2, 3});
  CHECK(matmul(zeros({2, 0}), zeros({0, 3})).to_vector<float>() == std::vector<float>(6, 0));  // empty sums are 0
  CHECK(matmul(zeros({0, 4}), zeros({4, 3})).shape() == Shape{0, 3});
  CHECK(softmax(zeros({0, 5}), -1).shape() == Shape{0, 5});
  CHECK(zeros({4, 0}).slice(0, 1, 3).shape() == Shape{2, 0});
  CHECK(arange(0, 0).shape() == Shape{0});
  CHECK(z.clone().numel() == 0);

  // Gradients of zero-size inputs are zero-size.
  Tensor x = zeros({0, 3}, DType::f64).requires_grad_();
  Tensor w = ones({3, 2}, DType::f64).requires_grad_();
  const Tensor loss = sum(matmul(x, w)) + sum(x);
  loss.backward();
  CHECK(x.grad().shape() == Shape{0, 3});
  CHECK(w.grad().to_vector<double>() == std::vector<double>(6, 0));
}

TEST_CASE("size, dim and item") {
  const Tensor x = zeros({2, 3, 4});
  CHECK(x.size(0) == 2);
  CHECK(x.size(-1) == 4);
  CHECK(x.size(-3) == 2);
  CHECK(from_vector<std::int64_t>({42}, {1, 1}).item() == 42.0);
}

TEST_CASE("in-place updates") {
  Tensor x = zeros({2, 3}, DType::f64);
  x.fill_(2);
  CHECK(values(x) == std::vector<double>(6, 2));
  x.mul_(1.5);
  CHECK(values(x) == std::vector<double>(6, 3));
  x.add_(from_vector<double>({1, 2, 3}, {3}));  // broadcast
  CHECK(values(x) == std::vector<double>{4, 5, 6, 4, 5, 6});
  x.add_(ones({2, 3}, DType::f64), -2.0);  // alpha
  CHECK(values(x) == std::vector<double>{2, 3, 4, 2, 3, 4});
  x.copy_(from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}));  // converts dtype
  CHECK(values(x) == std::vector<double>{1, 2, 3, 4, 5, 6});
  x.copy_(from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2}).transpose(0, 1));  // strided source
  CHECK(values(x) == std::vector<double>{1, 3, 5, 2, 4, 6});
  // In-place updates chain and return the tensor itself.
  CHECK(&x.fill_(0) == &x);
  // A strided destination is updated in place, leaving the rest of the storage alone.
  Tensor y = zeros({2, 4}, DType::f64);
  y.slice(1, 1, 4, 2).fill_(5);
  CHECK(values(y) == std::vector<double>{0, 5, 0, 5, 0, 5, 0, 5});
}

TEST_CASE("devices") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda") == Device::cuda(0));
  CHECK(Device::parse("cuda:3") == Device::cuda(3));
  CHECK(Device::cpu().str() == "cpu");
  CHECK(Device::cuda(1).str() == "cuda:1");
  CHECK(Device::cpu().is_cpu());
  CHECK_FALSE(Device::cuda().is_cpu());
  // Moving to the device a tensor is on is free.
  const Tensor x = zeros({2});
  CHECK(x.to(Device::cpu()).impl() == x.impl());
  for (const auto& d : ellipse::testing::available_devices()) {
    INFO("device ", d.device.str());
    const Tensor on = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1).to(d.device);
    CHECK(on.device() == d.device);
    CHECK(on.to(Device::cpu()).to_vector<float>() == std::vector<float>{1, 4, 2, 5, 3, 6});
  }
}

TEST_CASE("cpu allocator: a freed block serves the next tensor of its size; empty_cache returns the blocks") {
  CpuBackend& cpu = cpu_backend();
  cpu.empty_cache();
  CHECK(cpu.cached_bytes() == 0);
  const void* block = nullptr;
  {
    const Tensor t = empty({1000, 257});  // 1,028,000 bytes, 1,028,032 rounded to 64
    block = t.raw_data();
    CHECK(cpu.cached_bytes() == 0);
  }
  CHECK(cpu.cached_bytes() == 1028032);
  Tensor again = empty({257, 1000}, DType::f32);  // other shape, same bytes: the same block
  CHECK(again.raw_data() == block);
  CHECK(cpu.cached_bytes() == 0);
  Tensor other = empty({1000, 257}, DType::f64);  // other bytes: a fresh block
  CHECK(other.raw_data() != block);
  again = Tensor();
  other = Tensor();
  CHECK(cpu.cached_bytes() == 1028032 + 2056000);
  cpu.empty_cache();
  CHECK(cpu.cached_bytes() == 0);
}
