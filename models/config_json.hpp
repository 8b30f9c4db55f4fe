#pragma once
// Reading a model's config.json: typed, range-checked fields whose errors name the file and the key.
// Internal to models/ (not installed).
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace ellipse::detail {

class ConfigJson {
 public:
  ConfigJson(std::string_view text, std::string path)
      : json_(nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false)), path_(std::move(path)) {
    ELLIPSE_CHECK(json_.is_object(), "{}: not a JSON object", path_);
  }
  const std::string& path() const { return path_; }
  bool has(const char* key) const { return json_.contains(key); }

  std::string string(const char* key) const {
    const auto& value = field(key);
    ELLIPSE_CHECK(value.is_string(), "{}: '{}' must be a string", path_, key);
    return value.get<std::string>();
  }
  std::int64_t integer(const char* key, std::int64_t low, std::int64_t high) const {
    const auto& value = field(key);
    ELLIPSE_CHECK(value.is_number_integer(), "{}: '{}' must be an integer", path_, key);
    const auto number = value.get<std::int64_t>();
    ELLIPSE_CHECK(number >= low && number <= high, "{}: '{}' is {}, expected {} to {}", path_, key, number, low, high);
    return number;
  }
  // A number in [low, high).
  double number(const char* key, double low, double high) const {
    const auto& value = field(key);
    ELLIPSE_CHECK(value.is_number() && value.get<double>() >= low && value.get<double>() < high,
                  "{}: '{}' must be a number in [{}, {})", path_, key, low, high);
    return value.get<double>();
  }
  // Runs parse() on a field's text, re-raising its error with the file and key (the parsers of names
  // such as "elliptical" know neither).
  template <typename Parse>
  auto parsed(const char* key, Parse&& parse) const {
    const std::string text = string(key);
    try {
      return parse(text);
    } catch (const Error& e) {
      fail("{}: '{}': {}", path_, key, e.what());
    }
  }

 private:
  const nlohmann::json& field(const char* key) const {
    ELLIPSE_CHECK(json_.contains(key), "{}: key '{}' is missing", path_, key);
    return json_.at(key);
  }
  nlohmann::json json_;
  std::string path_;
};

}  // namespace ellipse::detail
