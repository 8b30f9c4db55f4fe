#pragma once
// Shuffled mini-batches over tensors that share their first dimension (inputs and their labels, say).
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <utility>
#include <vector>

#include "../core/random.hpp"
#include "../core/tensor.hpp"

namespace ellipse::nn {

// `for (const std::vector<Tensor>& batch : batches)` visits every row once, in random order: batch[k] holds
// tensors[k]'s rows of this batch ([rows, ...] with its dtype, on its device), and the tensors' rows stay
// paired. Each pass (each call of begin()) draws a fresh order from `gen`, so a seed fixes every epoch's
// order. The last batch is smaller when batch_size does not divide the rows, unless drop_last drops it.
// Batches are copies without autograd history. `gen` must outlive this object.
class ShuffledBatches {
 public:
  ShuffledBatches(std::vector<Tensor> tensors, std::int64_t batch_size, Generator& gen, bool drop_last = false);

  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = std::vector<Tensor>;
    using difference_type = std::ptrdiff_t;
    // Gathers the batch (index_select of the pass's rows, one per tensor, on the tensor's device).
    std::vector<Tensor> operator*() const;
    Iterator& operator++() {
      ++batch_;
      return *this;
    }
    bool operator==(const Iterator& other) const { return batch_ == other.batch_; }

   private:
    friend class ShuffledBatches;
    Iterator(const ShuffledBatches* owner, Tensor order, std::int64_t batch)
        : owner_(owner), order_(std::move(order)), batch_(batch) {}
    const ShuffledBatches* owner_;
    Tensor order_;  // this pass's permutation of the rows, i64 on the CPU
    std::int64_t batch_;
  };

  // Draws a new order: the start of a pass.
  Iterator begin();
  Iterator end() const { return Iterator(this, {}, size()); }
  // Batches per pass.
  std::int64_t size() const;
  std::int64_t rows() const { return tensors_.front().shape()[0]; }

 private:
  std::vector<Tensor> tensors_;
  std::int64_t batch_size_;
  Generator* gen_;
  bool drop_last_;
};

}  // namespace ellipse::nn
