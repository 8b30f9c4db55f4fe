#pragma once
// Measures of what the attention layers of a trained model do, for the study tools:
//   representation collapse: the mean cosine similarity over all token pairs (i < j), 1 when every
//     token points the same way (the over-smoothing that elliptical attention is meant to reduce);
//   head redundancy: the mean L2 distance between the flattened attention maps of different heads
//     (small when the heads attend alike);
//   the metric m of elliptical layers, averaged over inputs.
#include <vector>

#include "block.hpp"

namespace ellipse::nn {

// x [B, N, d]: the mean over the batch of the mean cosine similarity of the N(N-1)/2 token pairs.
// Zero vectors count as orthogonal to everything. Needs N >= 2.
double token_collapse(const Tensor& x);
// attention [B, H, N, M]: the mean over the batch and the H(H-1)/2 head pairs of the L2 distance between
// two heads' [N, M] maps. Needs H >= 2.
double head_redundancy(const Tensor& attention);

// Per-layer averages over every forward pass seen by a BlockProbe, weighted by batch size.
struct LayerStudy {
  std::vector<double> collapse_attn;   // of each attention sublayer's output (before the residual add)
  std::vector<double> collapse_block;  // of each block's output
  std::vector<double> head_redundancy;
  // m per layer, head and coordinate, averaged over inputs (and over query rows for the causal
  // estimator); empty for standard layers.
  std::vector<std::vector<std::vector<double>>> mean_metric;
};

// Switches the blocks' study hooks on while alive (and off, dropping what they kept, when destroyed); call
// collect() after each forward pass. Probes over the same blocks must not overlap in time: the first one
// destroyed switches the hooks off for both.
class BlockProbe {
 public:
  explicit BlockProbe(std::vector<Block*> blocks);
  ~BlockProbe();
  BlockProbe(const BlockProbe&) = delete;
  BlockProbe& operator=(const BlockProbe&) = delete;

  void collect();
  LayerStudy result() const;

 private:
  std::vector<Block*> blocks_;
  LayerStudy sums_;
  std::int64_t items_ = 0;
};

}  // namespace ellipse::nn
