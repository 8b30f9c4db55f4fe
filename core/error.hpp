#pragma once
// The one exception type of the library. Messages name the op or file, the shapes, and what was expected.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace ellipse {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace ellipse

// ELLIPSE_CHECK(cond, "op: expected ..., got {}", x): throws ellipse::Error when cond is false.
#define ELLIPSE_CHECK(cond, ...)        \
  do {                                  \
    if (!(cond)) ::ellipse::fail(__VA_ARGS__); \
  } while (0)
