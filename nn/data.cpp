#include "nn/data.hpp"

#include <algorithm>
#include <utility>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

ShuffledBatches::ShuffledBatches(std::vector<Tensor> tensors, std::int64_t batch_size, Generator& gen, bool drop_last)
    : tensors_(std::move(tensors)), batch_size_(batch_size), gen_(&gen), drop_last_(drop_last) {
  ELLIPSE_CHECK(!tensors_.empty(), "ShuffledBatches: needs at least one tensor");
  ELLIPSE_CHECK(batch_size > 0, "ShuffledBatches: batch_size must be positive, got {}", batch_size);
  for (std::size_t k = 0; k < tensors_.size(); ++k) {
    const Tensor& t = tensors_[k];
    ELLIPSE_CHECK(t.defined() && t.dim() >= 1, "ShuffledBatches: tensor {} needs a first (row) dimension, got {}", k,
                  t.defined() ? "shape " + to_string(t.shape()) : std::string("an undefined tensor"));
    ELLIPSE_CHECK(t.shape()[0] == rows(), "ShuffledBatches: tensor {} has {} rows (shape {}) but tensor 0 has {} "
                  "(shape {}); the first dimensions must match", k, t.shape()[0], to_string(t.shape()), rows(),
                  to_string(tensors_.front().shape()));
  }
}

std::int64_t ShuffledBatches::size() const {
  return drop_last_ ? rows() / batch_size_ : (rows() + batch_size_ - 1) / batch_size_;
}

ShuffledBatches::Iterator ShuffledBatches::begin() { return Iterator(this, randperm(rows(), *gen_), 0); }

std::vector<Tensor> ShuffledBatches::Iterator::operator*() const {
  const std::int64_t batch_size = owner_->batch_size_;
  const std::int64_t first = batch_ * batch_size, count = std::min(batch_size, owner_->rows() - first);
  NoGradGuard no_grad;
  const Tensor rows = narrow(order_, 0, first, count);
  std::vector<Tensor> batch;
  for (const Tensor& t : owner_->tensors_) batch.push_back(index_select(t.detach(), 0, rows.to(t.device())));
  return batch;
}

}  // namespace ellipse::nn
