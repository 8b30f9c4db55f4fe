#include "core/device.hpp"

#include <charconv>

#include "core/error.hpp"

namespace ellipse {

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.starts_with("cuda:")) {
    const std::string_view digits = text.substr(5);
    int index = -1;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (error == std::errc() && end == digits.data() + digits.size() && index >= 0) return cuda(index);
  }
  fail("device: '{}' is not a device; expected cpu, cuda or cuda:N", text);
}

std::string Device::str() const { return type == DeviceType::cpu ? "cpu" : fmt::format("cuda:{}", index); }

}  // namespace ellipse
