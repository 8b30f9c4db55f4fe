#include "nn/attention.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <mutex>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

std::string_view metric_mode_name(MetricMode mode) {
  switch (mode) {
    case MetricMode::sequence: return "sequence";
    case MetricMode::causal: return "causal";
    case MetricMode::random: return "random";
  }
  return "?";
}

MetricMode parse_metric_mode(std::string_view text) {
  if (text == "sequence") return MetricMode::sequence;
  if (text == "causal") return MetricMode::causal;
  if (text == "random") return MetricMode::random;
  fail("attention: '{}' is not a metric mode; expected sequence, causal or random", text);
}

void AttentionLayer::keep_attention(bool on) {
  keep_attention_ = on;
  if (!on) last_attention_ = {};
}

namespace {

struct AttentionRegistry {
  std::mutex mutex;
  std::map<std::string, AttentionFactory, std::less<>> factories;
};

AttentionRegistry& attention_registry() {
  static AttentionRegistry registry{
      .mutex = {},
      .factories = {
          {"standard",
           [](const AttentionSlot& s) { return std::make_shared<Attention>(s.dim, s.heads, *s.gen, s.init); }},
          {"elliptical",
           [](const AttentionSlot& s) -> std::shared_ptr<AttentionLayer> {
             // Layer 0 has no previous layer's values to estimate m from.
             if (s.layer == 0) return std::make_shared<Attention>(s.dim, s.heads, *s.gen, s.init);
             return std::make_shared<EllipticalAttention>(s.dim, s.heads, s.metric, *s.gen, s.init);
           }},
      }};
  return registry;
}

std::string kinds_text() { return fmt::format("{}", fmt::join(attention_kinds(), ", ")); }

// The factory of `name`; throws listing the kinds when there is none.
AttentionFactory attention_factory(std::string_view name) {
  AttentionFactory factory;
  {
    AttentionRegistry& registry = attention_registry();
    const std::lock_guard lock(registry.mutex);
    const auto it = registry.factories.find(name);
    if (it != registry.factories.end()) factory = it->second;
  }
  ELLIPSE_CHECK(static_cast<bool>(factory), "attention: '{}' is not an attention kind; expected one of {} (research "
                "code adds kinds with nn::register_attention)", name, kinds_text());
  return factory;
}

}  // namespace

void register_attention(const std::string& name, AttentionFactory factory) {
  ELLIPSE_CHECK(!name.empty() && std::none_of(name.begin(), name.end(), [](unsigned char c) { return std::isspace(c); }),
                "register_attention: '{}' is not a usable kind name (non-empty, no whitespace)", name);
  ELLIPSE_CHECK(static_cast<bool>(factory), "register_attention: the factory for '{}' is empty", name);
  AttentionRegistry& registry = attention_registry();
  const std::lock_guard lock(registry.mutex);
  ELLIPSE_CHECK(registry.factories.emplace(name, std::move(factory)).second,
                "register_attention: '{}' is already an attention kind", name);
}

std::vector<std::string> attention_kinds() {
  AttentionRegistry& registry = attention_registry();
  const std::lock_guard lock(registry.mutex);
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry.factories) names.push_back(name);
  return names;
}

std::string parse_attention_kind(std::string_view name) {
  attention_factory(name);
  return std::string(name);
}

std::shared_ptr<AttentionLayer> make_attention(std::string_view name, const AttentionSlot& slot) {
  const AttentionFactory factory = attention_factory(name);
  ELLIPSE_CHECK(slot.gen != nullptr, "make_attention: the slot for '{}' has no generator", name);
  std::shared_ptr<AttentionLayer> layer = factory(slot);
  ELLIPSE_CHECK(layer != nullptr, "attention: the factory of '{}' returned no layer for layer {}", name, slot.layer);
  return layer;
}

Attention::Attention(std::int64_t dim, std::int64_t heads, Generator& gen, Init init)
    : heads_(heads), head_dim_(heads > 0 ? dim / heads : 0) {
  ELLIPSE_CHECK(heads > 0 && dim > 0 && dim % heads == 0, "Attention: dim {} must be a positive multiple of heads {}",
                dim, heads);
  qkv_ = register_module("qkv", std::make_shared<Linear>(dim, 3 * dim, true, gen, init));
  proj_ = register_module("proj", std::make_shared<Linear>(dim, dim, true, gen, init));
}

Tensor Attention::query_metric(const Tensor&, const Tensor&, KVCache*) { return {}; }

AttentionOutput Attention::forward(const Tensor& x, bool causal, const Tensor& v_prev, KVCache* cache) {
  const std::int64_t dim = heads_ * head_dim_;
  ELLIPSE_CHECK(x.defined() && x.dim() == 3 && x.shape()[2] == dim, "Attention: expected input [B, N, {}], got {}",
                dim, x.defined() ? to_string(x.shape()) : "undefined");
  const std::int64_t batch = x.shape()[0], n = x.shape()[1];
  // [B, N, 3d] -> [3, B, H, N, dh]: q, k and v are strided views of the one qkv output.
  const Tensor heads = permute(view(qkv_->forward(x), {batch, n, 3, heads_, head_dim_}), {2, 0, 3, 1, 4});
  const Tensor q = select(heads, 0, 0), k_new = select(heads, 0, 1), v = select(heads, 0, 2);

  const Tensor metric = query_metric(v, v_prev, cache);  // before the cache grows: it reads the past length
  Tensor k = k_new, values = v;
  if (cache) {
    k = cache->k.defined() ? concat({cache->k, k_new}, 2) : contiguous(k_new);
    values = cache->v.defined() ? concat({cache->v, v}, 2) : contiguous(v);
    cache->k = k.detach();
    cache->v = values.detach();
  }
  // With a causal mask, query i (absolute position past + i, past = cached tokens) sees keys 0 .. past + i.
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  Tensor heads_out;  // [B, H, N, dh]
  // The fused op where the backend says it is faster (it never stores the [N, N_keys] probabilities); a layer
  // that keeps its probabilities for probes takes the explicit path. Without a cache, q, k and v go in as the
  // one qkv tensor, whose gradient then needs no gathering.
  if (!keeps_attention() && fused_attention_preferred(x.device(), x.dtype(), head_dim_, causal)) {
    heads_out = cache ? scaled_dot_product_attention(q, k, values, metric, scale, causal)
                      : scaled_dot_product_attention_qkv(heads, metric, scale, causal);
  } else {
    const Tensor q_scaled = metric.defined() ? mul(q, metric) : q;
    const Tensor probs = scaled_softmax(matmul(q_scaled, transpose(k, -1, -2)), scale, causal);
    if (keeps_attention()) record_attention(probs);
    heads_out = matmul(probs, values);
  }
  const Tensor out = reshape(permute(heads_out, {0, 2, 1, 3}), {batch, n, dim});
  return {hooked(proj_->forward(out)), v};
}

EllipticalAttention::EllipticalAttention(std::int64_t dim, std::int64_t heads, MetricMode mode, Generator& gen,
                                         Init init)
    : Attention(dim, heads, gen, init), mode_(mode), gen_(&gen) {}

Tensor normalize_metric(const Tensor& s) { return div(s, clamp(max(s, {-1}, true), 1e-12, INFINITY)); }

Tensor EllipticalAttention::query_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache) {
  if (!v_prev.defined()) {  // layer 0 is always standard
    record_metric({});
    return {};
  }
  ELLIPSE_CHECK(v_prev.shape() == v.shape(), "EllipticalAttention: previous layer's values {} differ from this "
                "layer's {}", to_string(v_prev.shape()), to_string(v.shape()));
  NoGradGuard stop_gradient;  // m is a constant: no gradient reaches v or v_prev through it
  Tensor metric = estimate_metric(v.detach(), v_prev.detach(), cache);
  record_metric(metric);
  return metric;
}

Tensor EllipticalAttention::estimate_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache) {
  if (mode_ == MetricMode::random) {
    const Shape& shape = v.shape();  // [B, H, N, dh]
    return normalize_metric(uniform({shape[0], shape[1], 1, shape[3]}, 0.0, 1.0, *gen_, v.dtype(), v.device()));
  }
  // sequence: the mean over every token (while decoding, the cached ones too); causal: the prefix means.
  const bool causal = mode_ == MetricMode::causal;
  EllipticalMetric m = cache ? elliptical_metric(v, v_prev, causal, cache->abs_diff_sum, cache->length())
                             : elliptical_metric(v, v_prev, causal);
  if (cache) cache->abs_diff_sum = std::move(m.sum);
  return m.metric;
}

}  // namespace ellipse::nn
