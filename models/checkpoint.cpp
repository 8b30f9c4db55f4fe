#include "models/checkpoint.hpp"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <set>

#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/safetensors.hpp"

namespace ellipse {

namespace {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The tensors of `source` whose names start with `prefix`, named without it, as a state dict for
// Module::load_state_dict; each floating one that names a parameter is converted to that parameter's dtype (a
// file's F32 or F16 loads into any floating model).
nn::StateDict parameter_dict(const std::map<std::string, Tensor>& source, const std::string& prefix,
                             const nn::Module& module) {
  std::map<std::string, DType> dtypes;
  for (const auto& [name, param] : module.named_parameters()) dtypes.emplace(name, param.dtype());
  nn::StateDict dict;
  for (const auto& [key, tensor] : source) {
    if (!key.starts_with(prefix)) continue;
    const std::string name = key.substr(prefix.size());
    const auto dtype = dtypes.find(name);
    const bool convert = dtype != dtypes.end() && is_floating(tensor.dtype()) && is_floating(dtype->second);
    dict.emplace_back(name, convert ? tensor.to(dtype->second) : tensor);
  }
  return dict;
}

// Module::load_state_dict (all or nothing, strict) with `path` at the start of its errors.
void load_into(const std::string& path, nn::Module& module, const nn::StateDict& dict) {
  try {
    module.load_state_dict(dict);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

// Each module parameter's index in the optimizer, in named_parameters() order: the optimizer may hold them in
// another order (its groups').
std::vector<std::size_t> optimizer_order(const std::string& op, const nn::Module& module,
                                         const nn::Optimizer& optimizer) {
  const auto held = optimizer.parameters();
  const auto params = module.named_parameters();
  ELLIPSE_CHECK(held.size() == params.size(), "{}: the optimizer holds {} parameters, the model {}", op, held.size(),
                params.size());
  std::vector<std::size_t> order;
  for (const auto& [name, param] : params) {
    const auto& impl = param.impl();  // (clang 14 cannot capture a structured binding)
    const auto found = std::find_if(held.begin(), held.end(), [&](const Tensor& p) { return p.impl() == impl; });
    ELLIPSE_CHECK(found != held.end(), "{}: the optimizer does not hold parameter '{}'", op, name);
    order.push_back(static_cast<std::size_t>(found - held.begin()));
  }
  return order;
}

std::map<std::string, Tensor> by_name(const io::SafetensorsFile& file) {
  return {file.tensors.begin(), file.tensors.end()};
}

// Throws naming the first tensor of `source` that is not prefix + the name of a parameter of `module`.
void reject_unknown(const std::string& path, const std::map<std::string, Tensor>& source,
                    const std::vector<std::string>& prefixes, const nn::Module& module) {
  std::set<std::string> known;
  for (const auto& [name, param] : module.named_parameters())
    for (const auto& prefix : prefixes) known.insert(prefix + name);
  for (const auto& [name, tensor] : source)
    ELLIPSE_CHECK(known.count(name) == 1, "{}: tensor '{}' is not a parameter of the model", path, name);
}

std::string join_words(const std::vector<std::uint64_t>& words) { return fmt::format("{}", fmt::join(words, ",")); }

std::vector<std::uint64_t> split_words(const std::string& path, const std::string& key, const std::string& text) {
  std::vector<std::uint64_t> words;
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    std::uint64_t w = 0;
    const auto [next, error] = std::from_chars(p, end, w);
    ELLIPSE_CHECK(error == std::errc() && (next == end || *next == ','), "{}: field '{}' is not a list of integers",
                  path, key);
    words.push_back(w);
    p = next == end ? end : next + 1;
  }
  return words;
}

constexpr std::string_view kGeneratorPrefix = "generator.";
constexpr std::string_view kOptimizerKey = "optimizer";  // the optimizer's name(), in a training state

// The metadata keys a training state writes itself, which its fields may not use.
bool is_state_key(std::string_view key) {
  return key == "step" || key == "optimizer_steps" || key == kOptimizerKey || key.starts_with(kGeneratorPrefix);
}

}  // namespace

void save_parameters(const std::string& path, const nn::Module& module,
                     const std::map<std::string, std::string>& metadata) {
  NamedTensors tensors;
  for (const auto& [name, param] : module.named_parameters()) tensors.emplace_back(name, param.detach().to(DType::f32));
  io::save_safetensors(path, tensors, metadata);
}

void save_model_dir(const std::string& dir, const nn::Module& module, std::string_view config_json,
                    std::string_view op) {
  ELLIPSE_CHECK(!dir.empty(), "{}: the directory is empty", op);
  ELLIPSE_CHECK(!std::filesystem::exists(dir + "/train_state.safetensors"), "{}: {} holds a training run (its "
                "train_state.safetensors), which these parameters would no longer match; save elsewhere", op, dir);
  std::filesystem::create_directories(dir);
  save_parameters(dir + "/model.safetensors", module);
  io::write_file_atomic(dir + "/config.json", config_json);
}

std::map<std::string, std::string> load_parameters(const std::string& path, nn::Module& module) {
  const auto file = io::load_safetensors(path);
  load_into(path, module, parameter_dict(by_name(file), "", module));
  return file.metadata;
}

void save_train_state(const std::string& path, const nn::Module& module, const nn::Optimizer& optimizer,
                      const TrainState& state) {
  NamedTensors tensors;
  const auto params = module.named_parameters();
  const auto order = optimizer_order("save_train_state", module, optimizer);
  const auto& buffer_names = optimizer.buffer_names();
  const auto buffers = optimizer.state();
  for (std::size_t i = 0; i < params.size(); ++i) {
    tensors.emplace_back("param." + params[i].first, params[i].second.detach());
    for (std::size_t b = 0; b < buffer_names.size(); ++b)
      tensors.emplace_back(buffer_names[b] + "." + params[i].first, buffers[buffer_names.size() * order[i] + b]);
  }
  for (const auto& [key, value] : state.fields)
    ELLIPSE_CHECK(!is_state_key(key), "save_train_state: field '{}' uses a name the state keeps for itself (step, "
                  "optimizer, optimizer_steps, generator.*)", key);
  std::map<std::string, std::string> metadata = state.fields;
  metadata["step"] = std::to_string(state.step);
  metadata[std::string(kOptimizerKey)] = optimizer.name();
  metadata["optimizer_steps"] = std::to_string(optimizer.steps());
  for (const auto& [name, words] : state.generators) metadata[std::string(kGeneratorPrefix) + name] = join_words(words);
  io::save_safetensors(path, tensors, metadata);
}

TrainState load_train_state(const std::string& path, nn::Module& module, nn::Optimizer& optimizer) {
  const auto file = io::load_safetensors(path);
  const auto source = by_name(file);
  const auto params = module.named_parameters();
  const auto order = optimizer_order("load_train_state", module, optimizer);
  // States written before the optimizer's kind was recorded are AdamW's; their tensor names tell.
  if (const auto kind = file.metadata.find(std::string(kOptimizerKey)); kind != file.metadata.end())
    ELLIPSE_CHECK(kind->second == optimizer.name(), "{}: holds an {} optimizer's state, not one of {}", path,
                  kind->second, optimizer.name());
  const auto& buffer_names = optimizer.buffer_names();
  std::vector<std::string> prefixes{"param."};
  for (const auto& buffer : buffer_names) prefixes.push_back(buffer + ".");
  reject_unknown(path, source, prefixes, module);
  auto integer_field = [&](const std::string& key) {
    const auto found = file.metadata.find(key);
    ELLIPSE_CHECK(found != file.metadata.end(), "{}: metadata field '{}' is missing", path, key);
    const auto words = split_words(path, key, found->second);
    ELLIPSE_CHECK(words.size() == 1 && words[0] < (std::uint64_t{1} << 62), "{}: field '{}' is not a step count", path,
                  key);
    return static_cast<std::int64_t>(words[0]);
  };
  TrainState state;
  state.step = integer_field("step");
  const std::int64_t optimizer_steps = integer_field("optimizer_steps");
  // In the optimizer's order: each parameter's buffers in turn (AdamW: [m0, v0, m1, v1, ...]).
  std::vector<Tensor> buffers(buffer_names.size() * params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& [name, param] = params[i];
    for (std::size_t b = 0; b < buffer_names.size(); ++b) {
      const std::string key = buffer_names[b] + "." + name;
      const auto found = source.find(key);
      ELLIPSE_CHECK(found != source.end(), "{}: tensor '{}' is missing", path, key);
      ELLIPSE_CHECK(found->second.shape() == param.shape() && found->second.dtype() == param.dtype(),
                    "{}: tensor '{}' is {} {}, expected {} {}", path, key, dtype_name(found->second.dtype()),
                    to_string(found->second.shape()), dtype_name(param.dtype()), to_string(param.shape()));
      buffers[buffer_names.size() * order[i] + b] = found->second.to(param.device());
    }
  }
  for (const auto& [key, value] : file.metadata) {
    if (key.starts_with(kGeneratorPrefix)) {
      state.generators[key.substr(kGeneratorPrefix.size())] = split_words(path, key, value);
    } else if (!is_state_key(key)) {
      state.fields[key] = value;
    }
  }
  load_into(path, module, parameter_dict(source, "param.", module));
  optimizer.load_state(buffers, optimizer_steps);
  return state;
}

}  // namespace ellipse
