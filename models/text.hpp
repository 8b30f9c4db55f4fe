#pragma once
// Character-level text data: strict UTF-8 decoding, a tokenizer over Unicode code points, and the
// train/val split and batch sampling used by the GPT.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../core/random.hpp"
#include "../core/tensor.hpp"

namespace ellipse {

// Decodes UTF-8, rejecting overlong forms, surrogates, code points above U+10FFFF and truncated
// sequences; the error names `source` and the byte offset.
std::u32string decode_utf8(std::string_view bytes, std::string_view source);
std::string encode_utf8(std::u32string_view text);

class CharTokenizer {
 public:
  // The vocabulary: the sorted unique code points of `text`.
  static CharTokenizer from_text(std::u32string_view text);
  // The vocabulary given in id order (as stored in config.json).
  static CharTokenizer from_vocab(std::u32string_view vocab);

  std::int64_t size() const { return static_cast<std::int64_t>(vocab_.size()); }
  const std::u32string& vocab() const { return vocab_; }
  // Throws naming the character and its position when it is not in the vocabulary.
  std::vector<std::int64_t> encode(std::u32string_view text) const;
  std::u32string decode(const std::vector<std::int64_t>& ids) const;

 private:
  std::u32string vocab_;
  std::unordered_map<char32_t, std::int64_t> index_;
};

// A text split into the first 90% (train) and the last 10% (val) of its tokens.
struct TextSplit {
  std::vector<std::int64_t> train, val;
};
TextSplit split_train_val(const std::vector<std::int64_t>& ids);

// `batch` windows at offsets drawn from gen: inputs [batch, T] = ids[o, o+T), targets = ids[o+1, o+T+1), both
// on `device`.
std::pair<Tensor, Tensor> sample_windows(const std::vector<std::int64_t>& ids, std::int64_t batch, std::int64_t seq_len,
                                         Generator& gen, Device device = Device::cpu());

// Character noise for robustness tests (`ellipse study gpt`): a copy of `ids` in which exactly
// round(fraction * ids.size()) positions, chosen uniformly without replacement, are each replaced by a character
// drawn uniformly from the other vocab - 1 characters of the vocabulary (so every chosen position changes).
// Deterministic: the same arguments give the same result. Needs ids in [0, vocab), vocab >= 2 and fraction in
// [0, 1].
std::vector<std::int64_t> corrupt_characters(const std::vector<std::int64_t>& ids, double fraction, std::int64_t vocab,
                                             std::uint64_t seed);

}  // namespace ellipse
