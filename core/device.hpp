#pragma once
#include <string>
#include <string_view>

namespace ellipse {

enum class DeviceType : unsigned char { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  // Parses "cpu", "cuda" or "cuda:N"; throws ellipse::Error otherwise.
  static Device parse(std::string_view text);

  bool is_cpu() const { return type == DeviceType::cpu; }
  std::string str() const;
  friend bool operator==(const Device&, const Device&) = default;
};

}  // namespace ellipse
