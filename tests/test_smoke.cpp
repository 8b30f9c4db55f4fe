#include <doctest/doctest.h>

#include "ellipse.hpp"

using namespace ellipse;

TEST_CASE("smoke") {
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}).requires_grad_();
  Tensor b = from_vector<double>({1, 0, 1}, {3});
  Tensor y = sum(mul(add(a, b), a));
  y.backward();
  CHECK(y.item() == doctest::Approx(2 + 4 + 12 + 20 + 25 + 42));
  MESSAGE(a.grad());
}
