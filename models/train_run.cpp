#include "models/train_run.hpp"

#include <bit>
#include <charconv>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "core/io/file.hpp"

namespace ellipse {

void start_run(const RunFiles& files, std::string_view config_json, std::string_view command) {
  std::filesystem::create_directories(files.dir);
  ELLIPSE_CHECK(!std::filesystem::exists(files.state), "{}: {} already holds a run; pass --resume to continue it or "
                "choose another --out", command, files.dir);
  io::write_file_atomic(files.config, config_json);
}

std::string metrics_up_to(const std::string& path, std::int64_t step) {
  if (!std::filesystem::exists(path)) return "";
  std::istringstream in(io::read_file(path, std::uint64_t{1} << 30));
  std::string kept, line;
  while (std::getline(in, line)) {
    const auto json = nlohmann::json::parse(line, nullptr, false);
    if (json.is_object() && json.contains("step") && json["step"].is_number_integer() &&
        json["step"].get<std::int64_t>() <= step)
      kept += line + "\n";
  }
  return kept;
}

std::uint64_t state_number(const TrainState& state, const std::string& key, const std::string& path) {
  const auto found = state.fields.find(key);
  ELLIPSE_CHECK(found != state.fields.end(), "{}: field '{}' is missing", path, key);
  const std::string& text = found->second;
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  ELLIPSE_CHECK(!text.empty() && error == std::errc() && end == text.data() + text.size(),
                "{}: field '{}' is '{}', not an unsigned integer", path, key, text);
  return value;
}

double RunningMean::take() {
  const double mean = count_ > 0 ? sum_ / static_cast<double>(count_) : 0.0;
  sum_ = 0;
  count_ = 0;
  return mean;
}

void RunningMean::save(TrainState& state, const std::string& key) const {
  state.fields[key + "_sum_bits"] = std::to_string(std::bit_cast<std::uint64_t>(sum_));
  state.fields[key + "_count"] = std::to_string(count_);
}

void RunningMean::load(const TrainState& state, const std::string& key, const std::string& path) {
  sum_ = std::bit_cast<double>(state_number(state, key + "_sum_bits", path));
  count_ = static_cast<std::int64_t>(state_number(state, key + "_count", path));
}

}  // namespace ellipse
