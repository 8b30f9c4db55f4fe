#include "nn/analysis.hpp"

#include <cmath>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse::nn {
namespace {
// The statistics below run in f64 on the CPU wherever the activations live: f64 kernels are tested on the
// CPU only, and each call copies one small batch.
Tensor f64_on_cpu(const Tensor& x) { return to_dtype(x.detach().to(Device::cpu()), DType::f64); }
}  // namespace

double token_collapse(const Tensor& x) {
  ELLIPSE_CHECK(x.defined() && x.dim() == 3 && x.shape()[0] >= 1 && x.shape()[1] >= 2, "token_collapse: expected "
                "[B, N, d] with B >= 1 and N >= 2, got {}", x.defined() ? to_string(x.shape()) : "undefined");
  NoGradGuard no_grad;
  const Tensor x64 = f64_on_cpu(x);
  const Tensor norms = sqrt(sum(mul(x64, x64), {-1}, true));
  // A zero row stays zero, so its cosine with every other row is 0.
  const Tensor unit = div(x64, add(norms, 1e-300));
  const Tensor gram = matmul(unit, transpose(unit, 1, 2));  // [B, N, N], cosines
  const double n = static_cast<double>(x.shape()[1]);
  const double total = sum(gram).item(), diagonal = sum(mul(unit, unit)).item();
  return (total - diagonal) / (static_cast<double>(x.shape()[0]) * n * (n - 1));
}

double head_redundancy(const Tensor& attention) {
  ELLIPSE_CHECK(attention.defined() && attention.dim() == 4 && attention.shape()[0] >= 1 && attention.shape()[1] >= 2,
                "head_redundancy: expected attention maps [B, H, N, M] with B >= 1 and H >= 2, got {}",
                attention.defined() ? to_string(attention.shape()) : "undefined");
  const std::int64_t b = attention.shape()[0], h = attention.shape()[1];
  const std::int64_t size = attention.shape()[2] * attention.shape()[3];
  const auto maps = contiguous(f64_on_cpu(attention)).to_vector<double>();
  // The differences directly: expanding |p - q|^2 into |p|^2 + |q|^2 - 2pq loses a small distance between
  // nearly equal heads to rounding at the scale of |p|^2 (it costs the same number of operations).
  double total = 0;
  for (std::int64_t i = 0; i < b; ++i)
    for (std::int64_t p = 0; p < h; ++p)
      for (std::int64_t q = p + 1; q < h; ++q) {
        const double* x = maps.data() + (i * h + p) * size;
        const double* y = maps.data() + (i * h + q) * size;
        double squares = 0;
        for (std::int64_t k = 0; k < size; ++k) squares += (x[k] - y[k]) * (x[k] - y[k]);
        total += std::sqrt(squares);
      }
  return total / (static_cast<double>(b) * static_cast<double>(h * (h - 1) / 2));
}

BlockProbe::BlockProbe(std::vector<Block*> blocks) : blocks_(std::move(blocks)) {
  const std::size_t layers = blocks_.size();
  sums_.collapse_attn.assign(layers, 0);
  sums_.collapse_block.assign(layers, 0);
  sums_.head_redundancy.assign(layers, 0);
  sums_.mean_metric.resize(layers);
  for (Block* block : blocks_) block->keep_activations(true);
}

BlockProbe::~BlockProbe() {
  for (Block* block : blocks_) block->keep_activations(false);
}

void BlockProbe::collect() {
  NoGradGuard no_grad;
  std::int64_t batch = 0;
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    const Block& block = *blocks_[l];
    ELLIPSE_CHECK(block.last_output().defined(), "BlockProbe::collect: layer {} has not run a forward pass yet", l);
    batch = block.last_output().shape()[0];
    const auto weight = static_cast<double>(batch);
    sums_.collapse_attn[l] += weight * token_collapse(block.last_attention_output());
    sums_.collapse_block[l] += weight * token_collapse(block.last_output());
    const AttentionLayer& attention = block.attention();
    ELLIPSE_CHECK(attention.last_attention().defined(), "BlockProbe::collect: the attention of layer {} recorded no "
                  "probabilities (a layer of one's own calls record_attention while keeps_attention())", l);
    sums_.head_redundancy[l] += weight * head_redundancy(attention.last_attention());
    if (!attention.last_metric().defined()) continue;
    const Tensor& m = attention.last_metric();  // [B, H, 1 or N, dh]
    const std::int64_t heads = m.shape()[1], dh = m.shape()[3];
    const auto per_head = mean(f64_on_cpu(m), {2}).to_vector<double>();  // [B, H, dh]
    auto& sum = sums_.mean_metric[l];
    if (sum.empty()) sum.assign(static_cast<std::size_t>(heads), std::vector<double>(static_cast<std::size_t>(dh), 0));
    for (std::int64_t i = 0; i < batch; ++i)
      for (std::int64_t head = 0; head < heads; ++head)
        for (std::int64_t c = 0; c < dh; ++c)
          sum[static_cast<std::size_t>(head)][static_cast<std::size_t>(c)] += per_head[(i * heads + head) * dh + c];
  }
  items_ += batch;
}

LayerStudy BlockProbe::result() const {
  ELLIPSE_CHECK(items_ > 0, "BlockProbe::result: no forward pass was collected");
  LayerStudy out = sums_;
  const auto n = static_cast<double>(items_);
  for (auto* values : {&out.collapse_attn, &out.collapse_block, &out.head_redundancy})
    for (auto& v : *values) v /= n;
  for (auto& layer : out.mean_metric)
    for (auto& head : layer)
      for (auto& v : head) v /= n;
  return out;
}

}  // namespace ellipse::nn
