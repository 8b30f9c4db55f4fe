#pragma once
// What every fuzz target shares. A target feeds libFuzzer's bytes to one loader: an ellipse::Error is the
// expected answer to bad input; anything else (a crash, a sanitizer report, another exception, a hang, an
// allocation beyond -rss_limit_mb) is a bug that libFuzzer reports, with the input that caused it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "core/error.hpp"
#include "core/io/npy.hpp"
#include "models/fashion_mnist.hpp"
#include "models/text.hpp"

namespace ellipse::fuzz {

template <class Load>
int feed(const std::uint8_t* data, std::size_t size, Load&& load) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    load(bytes);
  } catch (const Error&) {
  }
  return 0;
}

// The text loader, and the properties of what it accepts: re-encoding gives the bytes back, and the tokenizer
// built from the text maps it to ids and back unchanged.
inline void check_text(std::string_view bytes) {
  const std::u32string text = decode_utf8(bytes, "fuzz");
  if (encode_utf8(text) != bytes) std::abort();
  if (text.empty()) return;
  const CharTokenizer tokenizer = CharTokenizer::from_text(text);
  if (tokenizer.decode(tokenizer.encode(text)) != text) std::abort();
}

// The IDX loader (Fashion-MNIST): the bytes are gunzipped with a small limit (or taken as they are when they
// are not gzip), then parsed as images and as labels, and what is accepted must be consistent.
inline void check_idx(std::string_view bytes) {
  std::string raw;
  try {
    raw = gunzip(bytes, "fuzz", std::uint64_t{1} << 22);
  } catch (const Error&) {
    raw = std::string(bytes);
  }
  try {
    const IdxImages images = parse_idx_images(raw, "fuzz");
    if (images.count <= 0 || images.pixels.size() != static_cast<std::size_t>(images.count * images.rows * images.cols))
      std::abort();
  } catch (const Error&) {
  }
  try {
    for (const std::int64_t label : parse_idx_labels(raw, "fuzz", kFashionMnistClasses))
      if (label < 0 || label >= kFashionMnistClasses) std::abort();
  } catch (const Error&) {
  }
}

// The .npy reader, and a property of what it accepts: the writer's bytes for that tensor read back to the same
// shape, dtype and bits.
inline void check_npy(std::string_view bytes) {
  const Tensor t = io::from_npy(bytes, "fuzz");
  const Tensor back = io::from_npy(io::to_npy(t), "fuzz");
  const std::size_t size = static_cast<std::size_t>(t.numel()) * itemsize(t.dtype());
  if (back.shape() != t.shape() || back.dtype() != t.dtype() ||
      (size > 0 && std::memcmp(back.contiguous().raw_data(), t.contiguous().raw_data(), size) != 0))
    std::abort();
}

}  // namespace ellipse::fuzz
