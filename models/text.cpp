#include "models/text.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "core/error.hpp"

namespace ellipse {

namespace {
[[noreturn]] void utf8_error(std::string_view source, std::size_t offset, std::string_view why) {
  fail("{}: invalid UTF-8 at byte offset {} ({})", source, offset, why);
}
}  // namespace

std::u32string decode_utf8(std::string_view bytes, std::string_view source) {
  std::u32string out;
  out.reserve(bytes.size());
  std::size_t i = 0;
  auto bad = [&](std::string_view why) { utf8_error(source, i, why); };
  while (i < bytes.size()) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    if (lead < 0x80) {
      out.push_back(lead);
      ++i;
      continue;
    }
    int extra = 0;
    char32_t code = 0;
    if ((lead & 0xE0) == 0xC0) extra = 1, code = lead & 0x1F;
    else if ((lead & 0xF0) == 0xE0) extra = 2, code = lead & 0x0F;
    else if ((lead & 0xF8) == 0xF0) extra = 3, code = lead & 0x07;
    else bad("not a leading byte");
    if (i + static_cast<std::size_t>(extra) >= bytes.size()) bad("truncated sequence");
    for (int k = 1; k <= extra; ++k) {
      const auto next = static_cast<unsigned char>(bytes[i + static_cast<std::size_t>(k)]);
      if ((next & 0xC0) != 0x80) bad("missing continuation byte");
      code = (code << 6) | (next & 0x3F);
    }
    static constexpr char32_t kMinimum[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMinimum[extra]) bad("overlong encoding");
    if (code >= 0xD800 && code <= 0xDFFF) bad("surrogate code point");
    if (code > 0x10FFFF) bad("code point above U+10FFFF");
    out.push_back(code);
    i += static_cast<std::size_t>(extra) + 1;
  }
  return out;
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  for (char32_t c : text) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

CharTokenizer CharTokenizer::from_text(std::u32string_view text) {
  const std::set<char32_t> unique(text.begin(), text.end());
  return from_vocab(std::u32string(unique.begin(), unique.end()));
}

CharTokenizer CharTokenizer::from_vocab(std::u32string_view vocab) {
  ELLIPSE_CHECK(!vocab.empty(), "tokenizer: the vocabulary is empty");
  CharTokenizer tokenizer;
  tokenizer.vocab_ = vocab;
  for (std::size_t i = 0; i < vocab.size(); ++i) {
    ELLIPSE_CHECK(tokenizer.index_.emplace(vocab[i], static_cast<std::int64_t>(i)).second,
                  "tokenizer: character U+{:04X} appears twice in the vocabulary", static_cast<std::uint32_t>(vocab[i]));
  }
  return tokenizer;
}

std::vector<std::int64_t> CharTokenizer::encode(std::u32string_view text) const {
  std::vector<std::int64_t> ids;
  ids.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto found = index_.find(text[i]);
    ELLIPSE_CHECK(found != index_.end(), "tokenizer: character '{}' (U+{:04X}) at position {} is not in the "
                  "vocabulary", encode_utf8(text.substr(i, 1)), static_cast<std::uint32_t>(text[i]), i);
    ids.push_back(found->second);
  }
  return ids;
}

std::u32string CharTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::u32string text;
  for (auto id : ids) {
    ELLIPSE_CHECK(id >= 0 && id < size(), "tokenizer: id {} is out of range [0, {})", id, size());
    text.push_back(vocab_[static_cast<std::size_t>(id)]);
  }
  return text;
}

TextSplit split_train_val(const std::vector<std::int64_t>& ids) {
  const auto cut = static_cast<std::ptrdiff_t>(ids.size() * 9 / 10);
  return {{ids.begin(), ids.begin() + cut}, {ids.begin() + cut, ids.end()}};
}

std::pair<Tensor, Tensor> sample_windows(const std::vector<std::int64_t>& ids, std::int64_t batch, std::int64_t seq_len,
                                         Generator& gen, Device device) {
  const auto n = static_cast<std::int64_t>(ids.size());
  ELLIPSE_CHECK(n > seq_len, "sample_windows: {} tokens are too few for windows of {} (+1 target)", n, seq_len);
  std::vector<std::int64_t> inputs, targets;
  inputs.reserve(static_cast<std::size_t>(batch * seq_len));
  targets.reserve(static_cast<std::size_t>(batch * seq_len));
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto start = static_cast<std::size_t>(gen.integer(n - seq_len));
    inputs.insert(inputs.end(), ids.begin() + static_cast<std::ptrdiff_t>(start),
                  ids.begin() + static_cast<std::ptrdiff_t>(start) + seq_len);
    targets.insert(targets.end(), ids.begin() + static_cast<std::ptrdiff_t>(start) + 1,
                   ids.begin() + static_cast<std::ptrdiff_t>(start) + seq_len + 1);
  }
  return {from_vector(inputs, {batch, seq_len}, device), from_vector(targets, {batch, seq_len}, device)};
}

std::vector<std::int64_t> corrupt_characters(const std::vector<std::int64_t>& ids, double fraction, std::int64_t vocab,
                                             std::uint64_t seed) {
  ELLIPSE_CHECK(fraction >= 0 && fraction <= 1, "corrupt_characters: fraction {} is not in [0, 1]", fraction);
  ELLIPSE_CHECK(vocab >= 2, "corrupt_characters: a vocabulary of {} character(s) has no other character to put in",
                vocab);
  for (std::size_t i = 0; i < ids.size(); ++i)
    ELLIPSE_CHECK(ids[i] >= 0 && ids[i] < vocab, "corrupt_characters: id {} at position {} is out of range [0, {})",
                  ids[i], i, vocab);
  const auto n = static_cast<std::int64_t>(ids.size());
  const auto count = static_cast<std::int64_t>(std::llround(fraction * static_cast<double>(n)));
  Generator gen(seed);
  // The first `count` entries of a partial Fisher-Yates shuffle are a uniform sample without replacement.
  std::vector<std::int64_t> positions(static_cast<std::size_t>(n));
  std::iota(positions.begin(), positions.end(), std::int64_t{0});
  std::vector<std::int64_t> out = ids;
  for (std::int64_t i = 0; i < count; ++i) {
    std::swap(positions[static_cast<std::size_t>(i)], positions[static_cast<std::size_t>(i + gen.integer(n - i))]);
    auto& id = out[static_cast<std::size_t>(positions[static_cast<std::size_t>(i)])];
    // Uniform over the vocab - 1 other characters: skip over the original.
    const std::int64_t drawn = gen.integer(vocab - 1);
    id = drawn >= id ? drawn + 1 : drawn;
  }
  return out;
}

}  // namespace ellipse
