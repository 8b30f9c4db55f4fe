#include "models/gpt.hpp"

#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse {

GPTConfig gpt_preset(std::string_view name, std::int64_t vocab) {
  ELLIPSE_CHECK(vocab > 0, "gpt: vocabulary size must be positive, got {}", vocab);
  GPTConfig config;
  config.vocab = vocab;
  if (name == "gpt-s") {
    config.name = "gpt-s";
  } else if (name == "gpt-m") {
    config.name = "gpt-m";
    config.n_layer = 6;
    config.d_model = 384;
    config.n_head = 6;
    config.seq_len = 256;
    config.batch = 64;
  } else if (name == "gpt-tiny") {  // for smoke tests, kill tests and valgrind: a step takes milliseconds
    config.name = "gpt-tiny";
    config.n_layer = 2;
    config.d_model = 32;
    config.n_head = 2;
    config.seq_len = 32;
    config.batch = 4;
  } else {
    fail("gpt: unknown config '{}'; expected gpt-s, gpt-m or gpt-tiny", name);
  }
  return config;
}

namespace {
nn::BlockConfig block_config(const GPTConfig& config) {
  return {.dim = config.d_model,
          .heads = config.n_head,
          .mlp_ratio = 4,
          .dropout = config.dropout,
          .attention = config.attention,
          .metric = config.metric};
}
}  // namespace

double gpt_step_flops(const GPTConfig& c) {
  const double tokens = static_cast<double>(c.batch * c.seq_len), keys = static_cast<double>(c.seq_len);
  return static_cast<double>(c.n_layer) * nn::block_step_flops(block_config(c), tokens, keys) +
         6 * tokens * static_cast<double>(c.d_model * c.vocab);
}

GPT::GPT(const GPTConfig& config, std::uint64_t seed) : config_(config), gen_(seed) {
  ELLIPSE_CHECK(config.n_layer > 0 && config.seq_len > 0 && config.vocab > 0,
                "gpt: n_layer ({}), seq_len ({}) and vocab ({}) must be positive", config.n_layer, config.seq_len,
                config.vocab);
  const nn::BlockConfig block = block_config(config);
  tok_emb_ = register_module("tok_emb", std::make_shared<nn::Embedding>(config.vocab, config.d_model, gen_,
                                                                        nn::Init::gpt2));
  pos_emb_ = register_parameter("pos_emb", mul(randn({config.seq_len, config.d_model}, gen_), 0.02));
  blocks_ = register_module("blocks", std::make_shared<nn::ModuleList<nn::Block>>());
  for (std::int64_t i = 0; i < config.n_layer; ++i)
    blocks_->push_back(std::make_shared<nn::Block>(block, i, gen_, nn::Init::gpt2));
  ln_f_ = register_module("ln_f", std::make_shared<nn::LayerNorm>(config.d_model));
  head_ = register_module("head", std::make_shared<nn::Linear>(config.d_model, config.vocab, false, gen_,
                                                               nn::Init::gpt2));
}

Tensor GPT::forward(const Tensor& ids) { return run(ids, nullptr); }

Tensor GPT::forward_cached(const Tensor& ids, std::vector<nn::KVCache>& caches) {
  if (caches.empty()) caches.resize(static_cast<std::size_t>(config_.n_layer));
  ELLIPSE_CHECK(static_cast<std::int64_t>(caches.size()) == config_.n_layer,
                "gpt: {} caches given for {} layers", caches.size(), config_.n_layer);
  return run(ids, &caches);
}

bool GPT::decodes_incrementally() const {
  for (std::size_t i = 0; i < blocks_->size(); ++i)
    if (!(*blocks_)[i].attention().decodes_incrementally()) return false;
  return true;
}

Tensor GPT::run(const Tensor& ids, std::vector<nn::KVCache>* caches) {
  ELLIPSE_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::i64,
                "gpt: expected i64 token ids [B, N], got {} {}", ids.defined() ? dtype_name(ids.dtype()) : "",
                ids.defined() ? to_string(ids.shape()) : "undefined");
  const std::int64_t past = caches ? (*caches)[0].length() : 0, n = ids.shape()[1];
  ELLIPSE_CHECK(n >= 1 && past + n <= config_.seq_len, "gpt: {} tokens (after {} cached) exceed the context of {}", n,
                past, config_.seq_len);
  Tensor x = add(tok_emb_->forward(ids), narrow(pos_emb_, 0, past, n));
  Tensor v;
  for (std::size_t i = 0; i < blocks_->size(); ++i) {
    auto result = (*blocks_)[i].forward(x, /*causal=*/true, v, caches ? &(*caches)[i] : nullptr);
    x = result.out;
    v = result.v;
  }
  return hooked(head_->forward(ln_f_->forward(x)));
}

}  // namespace ellipse

#include <nlohmann/json.hpp>

#include "core/io/file.hpp"
#include "models/checkpoint.hpp"
#include "models/config_json.hpp"

namespace ellipse {

std::string gpt_config_json(const GPTConfig& config, std::u32string_view vocab) {
  nlohmann::ordered_json json;
  json["model"] = "gpt";
  json["config"] = config.name;
  json["n_layer"] = config.n_layer;
  json["d_model"] = config.d_model;
  json["n_head"] = config.n_head;
  json["seq_len"] = config.seq_len;
  json["vocab_size"] = config.vocab;
  json["vocab"] = encode_utf8(vocab);
  json["attn"] = config.attention;
  json["m_mode"] = nn::metric_mode_name(config.metric);
  json["dropout"] = config.dropout;
  return json.dump(2) + "\n";
}

GPTCheckpointConfig parse_gpt_config_json(std::string_view text, const std::string& path) {
  const detail::ConfigJson json(text, path);
  ELLIPSE_CHECK(json.string("model") == "gpt", "{}: 'model' is '{}', expected 'gpt'", path, json.string("model"));
  GPTConfig config;
  config.name = json.string("config");
  config.n_layer = json.integer("n_layer", 1, 256);
  config.d_model = json.integer("d_model", 1, 65536);
  config.n_head = json.integer("n_head", 1, 4096);
  ELLIPSE_CHECK(config.d_model % config.n_head == 0, "{}: d_model {} is not a multiple of n_head {}", path,
                config.d_model, config.n_head);
  config.seq_len = json.integer("seq_len", 1, 1 << 20);
  CharTokenizer tokenizer = json.parsed(
      "vocab", [](const std::string& vocab) { return CharTokenizer::from_vocab(decode_utf8(vocab, "the vocabulary")); });
  config.vocab = tokenizer.size();
  if (json.has("vocab_size")) {
    ELLIPSE_CHECK(json.integer("vocab_size", 1, 1 << 24) == config.vocab, "{}: 'vocab_size' disagrees with the {} "
                  "characters of 'vocab'", path, config.vocab);
  }
  config.attention = json.parsed("attn", nn::parse_attention_kind);
  config.metric = json.parsed("m_mode", nn::parse_metric_mode);
  // Each key is within its bounds, but together they could still ask for terabytes: bound the parameters
  // (embeddings, head, and per block 12 d^2 + 13 d) before anything is allocated.
  constexpr long double kMaxParameters = 4e9;
  const auto d = static_cast<long double>(config.d_model);
  const long double parameters = d * (2.0L * static_cast<long double>(config.vocab) +
                                      static_cast<long double>(config.seq_len) + 2.0L) +
                                 static_cast<long double>(config.n_layer) * (12.0L * d * d + 13.0L * d);
  ELLIPSE_CHECK(parameters <= kMaxParameters, "{}: the model would have {:.3g} parameters, more than the limit of {:.3g}",
                path, static_cast<double>(parameters), static_cast<double>(kMaxParameters));
  if (json.has("dropout")) config.dropout = json.number("dropout", 0, 1);
  return {config, std::move(tokenizer)};
}

void save_gpt(const std::string& dir, const GPT& model, const CharTokenizer& tokenizer) {
  ELLIPSE_CHECK(tokenizer.size() == model.config().vocab, "save_gpt: the tokenizer has {} characters, the model's "
                "vocabulary {}", tokenizer.size(), model.config().vocab);
  save_model_dir(dir, model, gpt_config_json(model.config(), tokenizer.vocab()), "save_gpt");
}

LoadedGPT load_gpt(const std::string& dir, Device device) {
  const std::string config_path = dir + "/config.json";
  auto [config, tokenizer] = parse_gpt_config_json(io::read_file(config_path, 64 << 20), config_path);
  auto model = std::make_unique<GPT>(config);
  load_parameters(dir + "/model.safetensors", *model);
  model->to(device);
  model->eval();
  return {std::move(model), std::move(tokenizer)};
}

}  // namespace ellipse
