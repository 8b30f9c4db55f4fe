#pragma once
// Multi-head self-attention, standard and elliptical (Nielsen et al., NeurIPS 2024, arXiv 2406.13770).
//
// Layout fixed for checkpoints: qkv = Linear(d, 3d) whose output is [q | k | v], each split into H
// consecutive heads of dh = d / H features (PyTorch's qkv(x).view(B, N, 3, H, dh)); head outputs are
// concatenated in head order before proj = Linear(d, d).
//
// Elliptical attention scales the queries by a per-coordinate metric m estimated from this layer's
// value heads v and the previous layer's v_prev, both [B, H, N, dh]:
//   s[b,h,d] = mean_n |v - v_prev|,  m = s / max(max_d s, 1e-12),  q~ = q * m
// and m is a constant for autograd (stop-gradient). See docs/elliptical-attention.md.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../core/random.hpp"
#include "layers.hpp"

namespace ellipse::nn {

enum class MetricMode {
  sequence,  // the paper's estimator: the mean over all N tokens (lets future tokens reach the past)
  causal,    // prefix means: row i uses tokens 0..i only; one m per query row
  random,    // ablation: m ~ U[0, 1) per batch, head and coordinate, max-normalised, fresh each call
};

std::string_view metric_mode_name(MetricMode mode);
MetricMode parse_metric_mode(std::string_view text);  // "sequence" | "causal" | "random"

// Keys and values of the tokens seen so far, for incremental decoding; one per attention layer.
struct KVCache {
  Tensor k, v;            // [B, H, t, dh]
  Tensor abs_diff_sum;    // elliptical only: sum over cached tokens of |v - v_prev|, [B, H, 1, dh]
  std::int64_t length() const { return k.defined() ? k.shape()[2] : 0; }
};

struct AttentionOutput {
  Tensor out;  // [B, N, d]
  Tensor v;    // this layer's value heads [B, H, N, dh], handed to the next layer
};

// What a transformer block asks of its attention sublayer. Attention and EllipticalAttention are two; a layer of
// one's own derives from it, is registered under a name (register_attention below), and then goes into
// nn::Block, the GPT and the ViT, their trainers, checkpoints and the study probes like the built-in kinds.
class AttentionLayer : public Module {
 public:
  // x [B, N, d] -> out [B, N, d], with `causal` masking the future. v_prev is the previous layer's value heads
  // [B, H, N, dh] (undefined at layer 0); the returned v goes to the next layer as its v_prev (undefined when
  // the layer has none to hand on). With a cache, x holds only the new tokens and the layer extends the cache
  // with their keys and values; a layer that cannot decode incrementally throws when given one, and says so in
  // decodes_incrementally. The forward hooks see `out`, and a replacement they return is what the block adds to
  // its residual stream.
  virtual AttentionOutput forward(const Tensor& x, bool causal, const Tensor& v_prev = {},
                                  KVCache* cache = nullptr) = 0;
  // Whether forward takes a KVCache. When a model's layer does not, sampling recomputes its whole window for
  // each new token instead.
  virtual bool decodes_incrementally() const { return true; }

  // Probes. While kept, a layer records its attention probabilities [B, H, N, N_keys] of each call (the study's
  // head redundancy reads them) and, if it scales its queries, the metric m (see EllipticalAttention::last_metric).
  // Switching keeping off drops what was recorded, so a stale map never passes for a fresh one.
  void keep_attention(bool on);
  bool keeps_attention() const { return keep_attention_; }
  const Tensor& last_attention() const { return last_attention_; }
  const Tensor& last_metric() const { return last_metric_; }

 protected:
  // A layer's forward calls these with what it computed; record_attention only while keeps_attention().
  void record_attention(const Tensor& probabilities) { last_attention_ = probabilities.detach(); }
  void record_metric(const Tensor& metric) { last_metric_ = metric.defined() ? metric.detach() : Tensor{}; }

 private:
  bool keep_attention_ = false;
  Tensor last_attention_, last_metric_;
};

// Where an attention sublayer sits, for the factory that builds it.
struct AttentionSlot {
  std::int64_t dim = 0, heads = 0;
  std::int64_t layer = 0;                   // the block's depth, 0 first
  MetricMode metric = MetricMode::sequence; // the model's metric option, for kinds that estimate one
  Generator* gen = nullptr;                 // the model's initialisation stream (never null when a model calls)
  Init init = Init::pytorch;
};
using AttentionFactory = std::function<std::shared_ptr<AttentionLayer>(const AttentionSlot& slot)>;

// The attention kinds by name: "standard" (Attention) and "elliptical" (EllipticalAttention from layer 1 on,
// standard at layer 0) always, and whatever research code registers. A model config names its kind, checkpoints
// record the name, and loading a checkpoint of a registered kind works in any program that registered it.
// Registering a name that exists is an error; names are non-empty and free of whitespace.
void register_attention(const std::string& name, AttentionFactory factory);
std::vector<std::string> attention_kinds();  // sorted
// `name` itself when registered; otherwise throws listing the kinds (what config parsers call).
std::string parse_attention_kind(std::string_view name);
// A new layer of kind `name` for `slot`; throws listing the kinds when `name` is not one, or when the factory
// returns null.
std::shared_ptr<AttentionLayer> make_attention(std::string_view name, const AttentionSlot& slot);

// Standard multi-head attention (and the base of elliptical attention).
class Attention : public AttentionLayer {
 public:
  Attention(std::int64_t dim, std::int64_t heads, Generator& gen = default_generator(), Init init = Init::pytorch);

  // See AttentionLayer::forward; standard attention ignores v_prev.
  AttentionOutput forward(const Tensor& x, bool causal, const Tensor& v_prev = {}, KVCache* cache = nullptr) override;

  std::int64_t heads() const { return heads_; }
  std::int64_t head_dim() const { return head_dim_; }

 protected:
  // The query scale for this call: undefined for standard attention, else m broadcastable to q. Runs
  // before the cache takes the new tokens, so cache->length() counts the earlier ones only.
  virtual Tensor query_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache);

 private:
  std::shared_ptr<Linear> qkv_, proj_;
  std::int64_t heads_, head_dim_;
};

class EllipticalAttention : public Attention {
 public:
  EllipticalAttention(std::int64_t dim, std::int64_t heads, MetricMode mode, Generator& gen = default_generator(),
                      Init init = Init::pytorch);
  MetricMode mode() const { return mode_; }
  // last_metric() is the metric m of the last forward call, [B, H, 1, dh] (sequence, random) or [B, H, N, dh]
  // (causal), kept whether or not the layer keeps its attention.

 protected:
  Tensor query_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache) override;
  // The metric from this layer's and the previous layer's value heads [B, H, N, dh] (detached, called under
  // NoGradGuard); override to try another estimator.
  virtual Tensor estimate_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache);

 private:
  MetricMode mode_;
  Generator* gen_;
};

// Scales each row of s [..., dh] by its largest entry (floored at 1e-12), so the largest entry is 1.
Tensor normalize_metric(const Tensor& s);

}  // namespace ellipse::nn
