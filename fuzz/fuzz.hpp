#pragma once
// What every fuzz target shares. A target feeds libFuzzer's bytes to one loader: an ellipse::Error is the
// expected answer to bad input; anything else (a crash, a sanitizer report, another exception, a hang, an
// allocation beyond -rss_limit_mb) is a bug that libFuzzer reports, with the input that caused it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.hpp"
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

}  // namespace ellipse::fuzz
