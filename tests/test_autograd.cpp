// The autograd engine: gradient accumulation, seeds, retained and freed graphs, grad mode, detach,
// shared subgraphs, long chains and per-thread grad mode.
#include <doctest/doctest.h>
#include <pthread.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "autograd/node.hpp"
#include "helpers.hpp"

using namespace ellipse;

namespace {
std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }
Tensor vec(std::vector<double> v) {
  const auto n = static_cast<std::int64_t>(v.size());
  return from_vector(v, {n});
}

// Runs f on a new thread with a 512 KiB stack (std::thread cannot choose its stack size).
void run_on_small_stack(std::function<void()> f) {
  pthread_attr_t attr;
  REQUIRE(pthread_attr_init(&attr) == 0);
  REQUIRE(pthread_attr_setstacksize(&attr, 512 * 1024) == 0);
  pthread_t thread;
  auto body = [](void* arg) -> void* {
    (*static_cast<std::function<void()>*>(arg))();
    return nullptr;
  };
  REQUIRE(pthread_create(&thread, &attr, body, &f) == 0);
  REQUIRE(pthread_join(thread, nullptr) == 0);
  pthread_attr_destroy(&attr);
}
}  // namespace

TEST_CASE("leaf gradients accumulate across backward calls") {
  Tensor x = vec({1, 2, 3}).requires_grad_();
  sum(mul(x, x)).backward();
  CHECK(values(x.grad()) == std::vector<double>{2, 4, 6});
  const Tensor first = x.grad();
  sum(mul(x, 3.0)).backward();
  CHECK(values(x.grad()) == std::vector<double>{5, 7, 9});  // added, never assigned
  CHECK(x.grad().impl() == first.impl());                   // in place, in the same tensor
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  sum(x).backward();
  CHECK(values(x.grad()) == std::vector<double>{1, 1, 1});

  // The first gradient is a copy: later updates never write into a tensor the graph handed over.
  Tensor y = vec({1, 2}).requires_grad_();
  const Tensor seed = vec({10, 20});
  y.backward(seed);
  y.backward(seed);
  CHECK(values(seed) == std::vector<double>{10, 20});
  CHECK(values(y.grad()) == std::vector<double>{20, 40});
}

TEST_CASE("backward from a scalar and with a given upstream gradient") {
  Tensor x = from_vector<double>({1, 2, 3, 4}, {2, 2}).requires_grad_();
  const Tensor loss = sum(exp(x));
  CHECK(loss.requires_grad());
  CHECK_FALSE(loss.is_leaf());
  loss.backward();
  for (std::size_t i = 0; i < 4; ++i) CHECK(values(x.grad())[i] == doctest::Approx(std::exp(i + 1.0)));

  // A one-element tensor of any rank counts as a scalar.
  Tensor w = vec({2}).requires_grad_();
  mul(w, w).reshape({1, 1}).backward();
  CHECK(values(w.grad()) == std::vector<double>{4});

  // A non-scalar output needs the gradient of something downstream: y = 3x, dL/dy = g, dL/dx = 3g.
  Tensor z = from_vector<double>({1, 2, 3, 4}, {2, 2}).requires_grad_();
  const Tensor y = mul(z, 3.0);
  y.backward(from_vector<double>({1, -1, 0.5, 2}, {2, 2}));
  CHECK(values(z.grad()) == std::vector<double>{3, -3, 1.5, 6});

  // The upstream gradient may be a non-contiguous view.
  Tensor u = vec({1, 2, 3}).requires_grad_();
  const Tensor g = from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2}).select(1, 1);  // 2, 4, 6
  mul(u, u).backward(g);
  CHECK(values(u.grad()) == std::vector<double>{4, 16, 36});

  // Backward of a leaf itself: its gradient is the seed.
  Tensor leaf = vec({1, 2}).requires_grad_();
  leaf.backward(vec({5, 6}));
  CHECK(values(leaf.grad()) == std::vector<double>{5, 6});
}

TEST_CASE("only leaves keep gradients; inputs that do not require grad get none") {
  Tensor a = vec({1, 2}).requires_grad_();
  const Tensor b = vec({3, 4});  // a constant
  const Tensor h = mul(a, b);
  sum(h).backward();
  CHECK(values(a.grad()) == std::vector<double>{3, 4});
  CHECK_FALSE(b.grad().defined());
  CHECK_FALSE(h.grad().defined());  // intermediate results keep no gradient
  CHECK_FALSE(b.requires_grad());
  CHECK(h.requires_grad());
  CHECK(h.grad_fn() != nullptr);
  CHECK(h.grad_fn()->op == "mul");
}

TEST_CASE("retain_graph allows a second backward; without it the graph is freed") {
  Tensor x = vec({1, 2, 3}).requires_grad_();
  std::weak_ptr<Storage> intermediate;  // h's memory: what mul's rule saved
  Tensor loss;
  {
    const Tensor h = exp(x);
    intermediate = h.storage();
    loss = sum(mul(h, h));
  }
  CHECK_FALSE(intermediate.expired());  // the graph keeps h alive
  loss.backward({}, true);
  CHECK_FALSE(intermediate.expired());  // retained
  const auto once = values(x.grad());
  for (std::size_t i = 0; i < 3; ++i) CHECK(once[i] == doctest::Approx(2 * std::exp(2 * (i + 1.0))));
  loss.backward();  // the second pass (which frees the graph)
  const auto twice = values(x.grad());
  for (std::size_t i = 0; i < 3; ++i) CHECK(twice[i] == doctest::Approx(2 * once[i]));
  CHECK(intermediate.expired());  // freed: h is gone although `loss` is still alive
  CHECK(loss.grad_fn()->inputs.empty());
  CHECK_THROWS_AS(loss.backward(), Error);
  // The values stay readable, and the leaf keeps its gradient.
  CHECK(loss.item() > 0);
  CHECK(values(x.grad()) == twice);
}

TEST_CASE("no_grad records nothing") {
  Tensor x = vec({1, 2}).requires_grad_();
  CHECK(grad_enabled());
  {
    NoGradGuard no_grad;
    CHECK_FALSE(grad_enabled());
    const Tensor y = exp(mul(x, 2.0)) + sum(x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK(y.is_leaf());
    CHECK_FALSE(x.transpose(0, 0).requires_grad());  // views too
    CHECK_FALSE(matmul(x, x).requires_grad());
    {
      NoGradGuard nested;
      CHECK_FALSE(grad_enabled());
    }
    CHECK_FALSE(grad_enabled());  // the inner guard restores the outer state, not "enabled"
  }
  CHECK(grad_enabled());
  CHECK(exp(x).requires_grad());
  // set_grad_enabled under a guard is undone by the guard.
  {
    NoGradGuard no_grad;
    set_grad_enabled(true);
    CHECK(exp(x).requires_grad());
  }
  CHECK(grad_enabled());
}

TEST_CASE("detach shares storage and stops gradients") {
  Tensor x = vec({1, 2, 3}).requires_grad_();
  const Tensor h = exp(x);
  const Tensor d = h.detach();
  CHECK(d.storage() == h.storage());
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
  CHECK(d.shape() == h.shape());
  // d acts as a constant: the gradient of sum(d * x) is d, with nothing flowing through exp.
  sum(mul(d, x)).backward();
  const auto grad = values(x.grad());
  for (std::size_t i = 0; i < 3; ++i) CHECK(grad[i] == doctest::Approx(std::exp(i + 1.0)));
  // A detached view keeps the view's geometry.
  const Tensor t = from_vector<double>({1, 2, 3, 4}, {2, 2}).requires_grad_().transpose(0, 1).detach();
  CHECK_FALSE(t.is_contiguous());
  CHECK(t.strides() == Strides{1, 2});
  // A detached leaf can be made a new leaf.
  Tensor leaf = h.detach().requires_grad_();
  sum(mul(leaf, 2.0)).backward();
  CHECK(values(leaf.grad()) == std::vector<double>{2, 2, 2});
}

TEST_CASE("a tensor used twice gets the summed gradient") {
  // x feeds exp, whose result feeds two branches that meet again: a diamond.
  Tensor x = vec({0.5, -1, 2}).requires_grad_();
  const Tensor z = exp(x);
  const Tensor y = sum(add(mul(z, 2.0), mul(z, z)));
  y.backward();
  const auto grad = values(x.grad());
  const std::vector<double> xs{0.5, -1, 2};
  for (std::size_t i = 0; i < 3; ++i) {
    const double e = std::exp(xs[i]);
    CHECK(grad[i] == doctest::Approx((2 + 2 * e) * e));  // d/dx (2e^x + e^2x)
  }
  // The same leaf as both operands.
  Tensor a = vec({3}).requires_grad_();
  sum(mul(a, a)).backward();
  CHECK(values(a.grad()) == std::vector<double>{6});
  // A leaf used through two views.
  Tensor b = from_vector<double>({1, 2, 3, 4}, {2, 2}).requires_grad_();
  sum(add(b, b.transpose(0, 1)) * from_vector<double>({1, 10, 100, 1000}, {2, 2})).backward();
  CHECK(values(b.grad()) == std::vector<double>{2, 110, 110, 2000});
}

// Slices of a non-leaf add their gradients into one buffer of the base's gradient (Node::accumulate); the
// result must equal the zero-filled gradients summed, which anomaly mode (that path's fallback) computes.
TEST_CASE("slices of one tensor share its gradient buffer and give the summed gradients exactly") {
  auto gradients = [](bool anomaly) {
    DetectAnomalyGuard mode(anomaly);
    Generator gen(3);
    Tensor x = randn({4, 6}, gen, DType::f64).requires_grad_();
    Tensor w = randn({4, 6}, gen, DType::f64);
    const Tensor h = mul(x, 1.5);  // not a leaf: its gradient is pending in the engine
    // Disjoint parts (as q, k and v), overlapping parts, a strided part, a slice of a slice, and h used
    // whole through an expanded (stride-0) gradient that arrives first and must not be added into in place.
    const Tensor loss = sum(mul(h.slice(1, 0, 2), 2.0)) + sum(mul(h.slice(1, 2, 4), 3.0)) +
                        sum(mul(h.slice(1, 1, 5), w.slice(1, 1, 5))) + sum(h.slice(0, 0, 4, 3)) +
                        sum(exp(h.slice(1, 3, 6).slice(0, 1, 3))) + mul(sum(h), 2.0);
    loss.backward();
    return x.grad().to_vector<double>();
  };
  const std::vector<double> fast = gradients(false), reference = gradients(true);
  CHECK(fast == reference);  // bit for bit: the parts meet in the same order
  // And by hand for one element: x[0][0] is in 2 * sum(h) (2), slice 0:2 (2), row 0 of the stride-3 slice (1).
  CHECK(fast[0] == doctest::Approx(1.5 * (2 + 2 + 1)));
  // retain_graph: a second backward accumulates the same gradient again.
  Tensor y = from_vector<double>({1, 2, 3}, {3}).requires_grad_();
  const Tensor hy = mul(y, 1.0);
  const Tensor total = sum(mul(hy.slice(0, 0, 2), 10.0)) + sum(hy.slice(0, 1, 3));
  total.backward({}, true);
  total.backward();
  CHECK(values(y.grad()) == std::vector<double>{20, 22, 2});
}

TEST_CASE("a long chain does not overflow the stack") {
  // On a thread with a 512 KiB stack, anything that recurses once per op (a recursive backward, or a
  // graph freed by nested destructors) overflows long before 40000 ops.
  constexpr int kSteps = 20000;  // 2 ops per step
  std::string failure = "did not run";
  std::vector<double> value, grad, grad_after;
  run_on_small_stack([&] {
    try {
      Tensor x = vec({1, 2}).requires_grad_();
      Tensor y = x;
      for (int i = 0; i < kSteps; ++i) y = add(mul(y, 1.0), 0.001);
      value = values(y);
      sum(y).backward();
      grad = values(x.grad());
      // Dropping a long graph after retain_graph, or without any backward, frees it without recursion.
      {
        Tensor z = x;
        for (int i = 0; i < 2 * kSteps; ++i) z = add(z, 1.0);
        sum(z).backward({}, true);
      }
      {
        Tensor z = x;
        for (int i = 0; i < 2 * kSteps; ++i) z = mul(z, 1.0);
      }
      grad_after = values(x.grad());
      failure.clear();
    } catch (const std::exception& e) {
      failure = e.what();
    }
  });
  CHECK(failure == "");
  REQUIRE(value.size() == 2);
  CHECK(value[0] == doctest::Approx(1 + 0.001 * kSteps));
  CHECK(grad == std::vector<double>{1, 1});
  CHECK(grad_after == std::vector<double>{2, 2});
}

TEST_CASE("grad mode is per thread") {
  std::atomic<int> stage{0};
  bool other_enabled = false, other_records = false;
  NoGradGuard no_grad;  // off on this thread only
  std::thread other([&] {
    other_enabled = grad_enabled();
    Tensor x = vec({1}).requires_grad_();
    other_records = exp(x).requires_grad();
    {
      NoGradGuard inner;  // disabling here must not enable or disable anything on the main thread
      stage = 1;
      while (stage != 2) std::this_thread::yield();
    }
  });
  while (stage != 1) std::this_thread::yield();
  CHECK_FALSE(grad_enabled());
  stage = 2;
  other.join();
  CHECK(other_enabled);
  CHECK(other_records);
  CHECK_FALSE(grad_enabled());
  Tensor x = vec({1}).requires_grad_();
  CHECK_FALSE(exp(x).requires_grad());
}

TEST_CASE("gradients reach leaves through views, dtype conversions and non-contiguous leaves") {
  // A non-contiguous leaf: its gradient has its shape (and is contiguous).
  Tensor t = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1).detach().requires_grad_();
  sum(mul(t, from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2}))).backward();
  CHECK(t.grad().shape() == Shape{3, 2});
  CHECK(values(t.grad()) == std::vector<double>{1, 2, 3, 4, 5, 6});

  // f32 leaf, loss computed in f64.
  Tensor f = from_vector<float>({1, 2}, {2}).requires_grad_();
  sum(mul(f.to(DType::f64), 3.0)).backward();
  CHECK(f.grad().dtype() == DType::f32);
  CHECK(f.grad().to_vector<float>() == std::vector<float>{3, 3});

  // Views of a leaf scatter back into its shape.
  Tensor v = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}).requires_grad_();
  sum(v.select(0, 1)).backward();
  sum(v.slice(1, 0, 3, 2)).backward();
  CHECK(values(v.grad()) == std::vector<double>{1, 0, 1, 2, 1, 2});
}

TEST_CASE("where and masked_fill route gradients by the condition") {
  Tensor a = vec({1, 2, 3}).requires_grad_();
  Tensor b = vec({10, 20, 30}).requires_grad_();
  sum(where(vec({1, 0, 1}), a, b)).backward();
  CHECK(values(a.grad()) == std::vector<double>{1, 0, 1});
  CHECK(values(b.grad()) == std::vector<double>{0, 1, 0});
  Tensor s = from_vector<double>({1, 2, 3, 4}, {2, 2}).requires_grad_();
  sum(masked_fill(s, causal_mask(2), -1e9)).backward();
  CHECK(values(s.grad()) == std::vector<double>{1, 0, 1, 1});
}

TEST_CASE("the graph keeps only what backward rules read, and backward frees it rule by rule") {
  Tensor x = vec({1, 2, 3}).requires_grad_();
  // add and mul-by-a-scalar read none of their inputs: h's memory goes with the forward's last handle on it.
  std::weak_ptr<Storage> unread;
  Tensor loss;
  {
    const Tensor h = mul(x, 2.0);
    unread = h.storage();
    loss = sum(add(h, x));
  }
  CHECK(unread.expired());
  loss.backward({}, true);
  CHECK(values(x.grad()) == std::vector<double>{3, 3, 3});

  // exp's rule reads its output e; once that rule has run, e is freed, before the rules below it run.
  std::weak_ptr<Storage> saved;
  bool freed_before_next_rule = false;
  {
    const Tensor probe = record("probe", x.detach().clone(), {x}, [&](const Tensor& g, const std::vector<bool>&) {
      freed_before_next_rule = saved.expired();
      return std::vector{g};
    });
    const Tensor e = exp(probe);
    saved = e.storage();
    loss = sum(e);
  }
  CHECK_FALSE(saved.expired());  // exp's rule will need it
  loss.backward();
  CHECK(freed_before_next_rule);
}

TEST_CASE("a leaf's first gradient is a copy when its memory is shared, and never aliases the caller's") {
  Tensor x = vec({1, 2, 3}).requires_grad_();
  Tensor seed = vec({1, 1, 1});
  add(x, 1.0).backward(seed);  // add's rule hands the seed itself on
  seed.add_(vec({5, 5, 5}));
  CHECK(values(x.grad()) == std::vector<double>{1, 1, 1});
  CHECK(x.grad().storage() != seed.storage());
  // A rule's fresh result is kept as the gradient, and later ones accumulate into it.
  x.zero_grad();
  sum(mul(x, 2.0)).backward();
  sum(mul(x, 3.0)).backward();
  CHECK(values(x.grad()) == std::vector<double>{5, 5, 5});
}

TEST_CASE("record makes nodes only when an input requires grad") {
  const Tensor c = vec({1, 2});
  CHECK(exp(c).grad_fn() == nullptr);
  Tensor x = vec({1, 2}).requires_grad_();
  const Tensor y = add(c, x);
  REQUIRE(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->op == "add");
  CHECK(y.grad_fn()->inputs.size() == 2);
  // Integer results carry no gradient even from a floating input that requires grad.
  CHECK_FALSE(x.to(DType::i64).requires_grad());
  CHECK_FALSE(equal(x, x).requires_grad());
}

TEST_CASE("gradcheck reports the worst element with its absolute and its relative error") {
  // 3x with a backward rule that gives 2.5: every element's gradient is off by a sixth of its value.
  const auto wrong_triple = [](const std::vector<Tensor>& in) {
    return record("wrong_triple", mul(in[0].detach(), 3.0), {in[0]},
                  [](const Tensor& g, const std::vector<bool>&) { return std::vector{mul(g, 2.5)}; });
  };
  const Tensor x = from_vector(std::vector<double>{1.0, -2.0}, {2}).requires_grad_();
  const GradcheckResult result = gradcheck(wrong_triple, {x});
  INFO(result.worst);
  CHECK(result.max_error == doctest::Approx(1.0 / 6.0).epsilon(1e-6));
  CHECK(result.worst.find("input 0 element ") == 0);
  CHECK(result.worst.find("relative error 0.167)") != std::string::npos);
  // The absolute error is half the projection direction's entry there, which lies in [0.5, 1.5].
  const auto at = result.worst.find("absolute error ");
  REQUIRE(at != std::string::npos);
  const double absolute = std::stod(result.worst.substr(at + 15));
  CHECK(absolute >= 0.25);
  CHECK(absolute <= 0.75);
}
