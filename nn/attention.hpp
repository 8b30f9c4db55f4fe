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
#include <string>
#include <string_view>

#include "../core/random.hpp"
#include "layers.hpp"

namespace ellipse::nn {

enum class AttentionKind { standard, elliptical };
enum class MetricMode {
  sequence,  // the paper's estimator: the mean over all N tokens (lets future tokens reach the past)
  causal,    // prefix means: row i uses tokens 0..i only; one m per query row
  random,    // ablation: m ~ U[0, 1) per batch, head and coordinate, max-normalised, fresh each call
};

std::string_view attention_kind_name(AttentionKind kind);
std::string_view metric_mode_name(MetricMode mode);
AttentionKind parse_attention_kind(std::string_view text);  // "standard" | "elliptical"
MetricMode parse_metric_mode(std::string_view text);        // "sequence" | "causal" | "random"

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

class Attention : public Module {
 public:
  Attention(std::int64_t dim, std::int64_t heads, Generator& gen = default_generator(), Init init = Init::pytorch);

  // x [B, N, d]. v_prev is the previous layer's value heads (ignored by standard attention). With a
  // cache, x holds only the new tokens and the cache is extended with their keys and values.
  AttentionOutput forward(const Tensor& x, bool causal, const Tensor& v_prev = {}, KVCache* cache = nullptr);

  std::int64_t heads() const { return heads_; }
  std::int64_t head_dim() const { return head_dim_; }

  // Study hooks: when enabled, forward keeps the attention probabilities [B, H, N, N_keys] of its last call;
  // switching them off drops what was kept.
  void keep_attention(bool on) {
    keep_attention_ = on;
    if (!on) last_attention_ = {};
  }
  const Tensor& last_attention() const { return last_attention_; }

 protected:
  // The query scale for this call: undefined for standard attention, else m broadcastable to q. Runs
  // before the cache takes the new tokens, so cache->length() counts the earlier ones only.
  virtual Tensor query_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache);

 private:
  std::shared_ptr<Linear> qkv_, proj_;
  std::int64_t heads_, head_dim_;
  bool keep_attention_ = false;
  Tensor last_attention_;
};

class EllipticalAttention : public Attention {
 public:
  EllipticalAttention(std::int64_t dim, std::int64_t heads, MetricMode mode, Generator& gen = default_generator(),
                      Init init = Init::pytorch);
  MetricMode mode() const { return mode_; }
  // The metric m of the last forward call: [B, H, 1, dh] (sequence, random) or [B, H, N, dh] (causal).
  const Tensor& last_metric() const { return last_metric_; }

 protected:
  Tensor query_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache) override;
  // The metric from this layer's and the previous layer's value heads [B, H, N, dh] (detached, called under
  // NoGradGuard); override to try another estimator.
  virtual Tensor estimate_metric(const Tensor& v, const Tensor& v_prev, KVCache* cache);

 private:
  MetricMode mode_;
  Generator* gen_;
  Tensor last_metric_;
};

// Scales each row of s [..., dh] by its largest entry (floored at 1e-12), so the largest entry is 1.
Tensor normalize_metric(const Tensor& s);

}  // namespace ellipse::nn
