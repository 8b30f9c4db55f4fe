#include "models/vit.hpp"

#include <nlohmann/json.hpp>

#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "models/checkpoint.hpp"
#include "models/config_json.hpp"

namespace ellipse {

ViTConfig vit_preset(std::string_view name) {
  ViTConfig config;
  if (name == "vit-s") return config;
  if (name == "vit-xs") {
    config.name = "vit-xs";
    config.n_layer = 4;
    config.d_model = 32;
    return config;
  }
  fail("vit: unknown config '{}'; expected vit-s or vit-xs", name);
}

namespace {
void validate(const ViTConfig& c) {
  ELLIPSE_CHECK(c.image > 0 && c.patch > 0 && c.image % c.patch == 0, "vit: image side {} must be a positive "
                "multiple of the patch side {}", c.image, c.patch);
  ELLIPSE_CHECK(c.n_layer > 0 && c.classes > 1 && c.d_model > 0 && c.n_head > 0 && c.d_model % c.n_head == 0,
                "vit: n_layer ({}) and d_model ({}) must be positive, d_model a multiple of n_head ({}), and classes "
                "({}) at least 2", c.n_layer, c.d_model, c.n_head, c.classes);
}

nn::BlockConfig block_config(const ViTConfig& config) {
  return {.dim = config.d_model,
          .heads = config.n_head,
          .mlp_ratio = 4,
          .dropout = config.dropout,
          .attention = config.attention,
          .metric = config.metric};
}
}  // namespace

double vit_step_flops(const ViTConfig& c) {
  const double batch = static_cast<double>(c.batch), n = static_cast<double>(c.tokens());
  const double d = static_cast<double>(c.d_model);
  const double patches = batch * static_cast<double>(c.patches_per_side() * c.patches_per_side());
  return static_cast<double>(c.n_layer) * nn::block_step_flops(block_config(c), batch * n, n) +
         4 * patches * static_cast<double>(c.patch * c.patch) * d + 6 * batch * d * static_cast<double>(c.classes);
}

ViT::ViT(const ViTConfig& config, std::uint64_t seed) : config_(config), gen_(seed) {
  validate(config);
  const nn::BlockConfig block = block_config(config);
  const std::int64_t d = config.d_model;
  patch_emb_ = register_module("patch_emb", std::make_shared<nn::Linear>(config.patch * config.patch, d, true, gen_,
                                                                         nn::Init::gpt2));
  cls_token_ = register_parameter("cls_token", mul(randn({d}, gen_), 0.02));
  pos_emb_ = register_parameter("pos_emb", mul(randn({config.tokens(), d}, gen_), 0.02));
  blocks_ = register_module("blocks", std::make_shared<nn::ModuleList<nn::Block>>());
  for (std::int64_t i = 0; i < config.n_layer; ++i)
    blocks_->push_back(std::make_shared<nn::Block>(block, i, gen_, nn::Init::gpt2));
  ln_f_ = register_module("ln_f", std::make_shared<nn::LayerNorm>(d));
  head_ = register_module("head", std::make_shared<nn::Linear>(d, config.classes, false, gen_, nn::Init::gpt2));
}

Tensor patchify(const Tensor& images, std::int64_t patch) {
  ELLIPSE_CHECK(images.defined() && images.dim() == 3 && images.shape()[1] == images.shape()[2] && patch > 0 &&
                    images.shape()[1] % patch == 0,
                "patchify: expected square images [B, S, S] with S a multiple of {}, got {}", patch,
                images.defined() ? to_string(images.shape()) : "undefined");
  const std::int64_t b = images.shape()[0], side = images.shape()[1] / patch;
  // [B, side, patch, side, patch] -> [B, side, side, patch, patch]: patch rows, then patch columns.
  const Tensor grid = permute(reshape(images, {b, side, patch, side, patch}), {0, 1, 3, 2, 4});
  return reshape(grid, {b, side * side, patch * patch});
}

Tensor ViT::forward(const Tensor& images) {
  ELLIPSE_CHECK(images.defined() && images.dim() == 3 && images.shape()[1] == config_.image &&
                    images.shape()[2] == config_.image && is_floating(images.dtype()),
                "vit: expected floating-point images [B, {}, {}], got {} {}", config_.image, config_.image,
                images.defined() ? dtype_name(images.dtype()) : "",
                images.defined() ? to_string(images.shape()) : "undefined");
  const std::int64_t b = images.shape()[0], d = config_.d_model;
  const Tensor patches = patch_emb_->forward(patchify(images, config_.patch));  // [B, P, d]
  const Tensor cls = expand(reshape(cls_token_, {1, 1, d}), {b, 1, d});
  Tensor x = add(concat({cls, patches}, 1), pos_emb_);
  Tensor v;
  for (std::size_t i = 0; i < blocks_->size(); ++i) {
    auto result = (*blocks_)[i].forward(x, /*causal=*/false, v);
    x = result.out;
    v = result.v;
  }
  return hooked(head_->forward(ln_f_->forward(select(x, 1, 0))));  // the class token only
}

std::string vit_config_json(const ViTConfig& config) {
  nlohmann::ordered_json json;
  json["model"] = "vit";
  json["config"] = config.name;
  json["image"] = config.image;
  json["patch"] = config.patch;
  json["n_layer"] = config.n_layer;
  json["d_model"] = config.d_model;
  json["n_head"] = config.n_head;
  json["classes"] = config.classes;
  json["attn"] = config.attention;
  json["m_mode"] = nn::metric_mode_name(config.metric);
  json["dropout"] = config.dropout;
  return json.dump(2) + "\n";
}

ViTConfig parse_vit_config_json(std::string_view text, const std::string& path) {
  const detail::ConfigJson json(text, path);
  ELLIPSE_CHECK(json.string("model") == "vit", "{}: 'model' is '{}', expected 'vit'", path, json.string("model"));
  ViTConfig config;
  config.name = json.string("config");
  config.image = json.integer("image", 1, 4096);
  config.patch = json.integer("patch", 1, 4096);
  config.n_layer = json.integer("n_layer", 1, 256);
  config.d_model = json.integer("d_model", 1, 65536);
  config.n_head = json.integer("n_head", 1, 4096);
  config.classes = json.integer("classes", 2, 1 << 20);
  config.attention = json.parsed("attn", nn::parse_attention_kind);
  config.metric = json.parsed("m_mode", nn::parse_metric_mode);
  if (json.has("dropout")) config.dropout = json.number("dropout", 0, 1);
  try {
    validate(config);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  return config;
}

void save_vit(const std::string& dir, const ViT& model) {
  save_model_dir(dir, model, vit_config_json(model.config()), "save_vit");
}

std::unique_ptr<ViT> load_vit(const std::string& dir, Device device) {
  const std::string config_path = dir + "/config.json";
  auto model = std::make_unique<ViT>(parse_vit_config_json(io::read_file(config_path, 1 << 20), config_path));
  load_parameters(dir + "/model.safetensors", *model);
  model->to(device);
  model->eval();
  return model;
}

}  // namespace ellipse
