#pragma once
// Helpers shared by the test programs: the list of devices to test on, and error-message checks.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

#include "backends/backend.hpp"
#include "ellipse.hpp"

namespace ellipse::testing {

// A device the op tests run on. A device whose backend is missing stays in the list with the reason, so
// that the tests report it as skipped instead of passing silently.
struct TestDevice {
  Device device;
  std::string skip_reason;  // empty when the backend is available
  bool has_f64 = false;     // the f64 cases run on the CPU only: CUDA's f64 kernels await a check on a GPU
};

inline std::vector<TestDevice> test_devices() {
  std::vector<TestDevice> devices{{Device::cpu(), "", true}};
  // The CUDA backend joins when backend_for(cuda) succeeds (a CUDA build on a machine with a GPU); otherwise
  // its error message is the reason it is skipped.
  try {
    backend_for(Device::cuda());
    devices.push_back({Device::cuda(), "", false});
  } catch (const Error& e) {
    devices.push_back({Device::cuda(), e.what(), false});
  }
  return devices;
}

// Reports every device without a backend via MESSAGE; returns the available ones.
inline std::vector<TestDevice> available_devices() {
  std::vector<TestDevice> available;
  for (auto& d : test_devices()) {
    if (d.skip_reason.empty())
      available.push_back(d);
    else
      MESSAGE("SKIPPED device ", d.device.str(), ": ", d.skip_reason);
  }
  return available;
}

// The message of the ellipse::Error that f throws, or "" when it throws none (other exceptions propagate).
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() / ("ellipse_test_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  // The names of the entries directly inside, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace ellipse::testing

// Checks that `expr` throws ellipse::Error and that its message contains every one of the given strings
// (the op's name, the shapes, ...).
#define CHECK_ERROR(expr, ...)                                                                   \
  do {                                                                                           \
    const std::string message_ = ::ellipse::testing::error_message([&] { (void)(expr); });       \
    INFO("expression: " #expr);                                                                  \
    INFO("message: ", message_);                                                                 \
    CHECK_MESSAGE(!message_.empty(), "expected an ellipse::Error");                              \
    for (const std::string& part_ : std::vector<std::string>{__VA_ARGS__})                       \
      CHECK_MESSAGE(message_.find(part_) != std::string::npos, "message lacks \"", part_, "\""); \
  } while (0)
