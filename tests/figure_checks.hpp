#pragma once
// Readers for what study/figures writes, for tests: decode_png (8-bit RGB PNGs, checked chunk by chunk and
// inflated with zlib; the test program links ZLIB::ZLIB) and check_well_formed for SVG documents.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "study/figures.hpp"

namespace ellipse::testing {

// The big-endian 32-bit number at `at`.
inline std::uint32_t be32(const std::string& bytes, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes.at(at + i));
  return v;
}

// A minimal PNG reader for what encode_png writes (8-bit RGB, not interlaced): checks the signature, the
// chunk sequence and CRCs, inflates the IDAT data and undoes the per-row filters.
inline figures::Image decode_png(const std::string& png) {
  REQUIRE(png.size() > 8);
  REQUIRE(png.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
  figures::Image image;
  std::string compressed;
  std::vector<std::string> chunk_types;
  for (std::size_t at = 8; at < png.size();) {
    const std::uint32_t length = be32(png, at);
    const std::string type = png.substr(at + 4, 4);
    const std::string data = png.substr(at + 8, length);
    const auto crc = crc32(crc32(0, reinterpret_cast<const Bytef*>(type.data()), 4),
                           reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size()));
    CHECK(crc == be32(png, at + 8 + length));
    chunk_types.push_back(type);
    if (type == "IHDR") {
      image.width = static_cast<int>(be32(data, 0));
      image.height = static_cast<int>(be32(data, 4));
      CHECK(static_cast<int>(data[8]) == 8);   // bit depth
      CHECK(static_cast<int>(data[9]) == 2);   // colour type RGB
      CHECK(static_cast<int>(data[12]) == 0);  // not interlaced
    }
    if (type == "IDAT") compressed += data;
    at += 12 + length;
  }
  REQUIRE(!chunk_types.empty());
  CHECK(chunk_types.front() == "IHDR");
  CHECK(chunk_types.back() == "IEND");

  const std::size_t stride = static_cast<std::size_t>(image.width) * 3;
  std::vector<unsigned char> raw((stride + 1) * static_cast<std::size_t>(image.height));
  uLongf raw_size = raw.size();
  REQUIRE(uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(compressed.data()), compressed.size()) ==
          Z_OK);
  REQUIRE(raw_size == raw.size());
  image.rgb.resize(stride * static_cast<std::size_t>(image.height));
  for (std::size_t y = 0; y < static_cast<std::size_t>(image.height); ++y) {
    const unsigned filter = raw[y * (stride + 1)];
    const unsigned char* in = &raw[y * (stride + 1) + 1];
    std::uint8_t* out = &image.rgb[y * stride];
    const std::uint8_t* up = y > 0 ? out - stride : nullptr;
    for (std::size_t i = 0; i < stride; ++i) {
      const int a = i >= 3 ? out[i - 3] : 0, b = up ? up[i] : 0, c = up && i >= 3 ? up[i - 3] : 0;
      int predicted = 0;
      switch (filter) {
        case 0: predicted = 0; break;
        case 1: predicted = a; break;
        case 2: predicted = b; break;
        case 3: predicted = (a + b) / 2; break;
        case 4: {
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: FAIL("unknown PNG filter ", filter);
      }
      out[i] = static_cast<std::uint8_t>(in[i] + predicted);
    }
  }
  return image;
}

// Checks that `svg` is well-formed XML as far as this writer goes: one root element, every tag closed in
// order, quoted attributes, and every '&' the start of one of the five predefined entities.
inline void check_well_formed(const std::string& svg) {
  std::vector<std::string> open;
  int roots = 0;
  for (std::size_t at = 0; at < svg.size(); ++at) {
    const char c = svg[at];
    if (c == '&') {
      bool known = false;
      for (const char* entity : {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"})
        known = known || svg.compare(at, std::string(entity).size(), entity) == 0;
      CHECK_MESSAGE(known, "stray '&' at ", at);
      continue;
    }
    if (c == '>') FAIL("stray '>' at ", at);
    if (c != '<') continue;
    if (svg.compare(at, 2, "<?") == 0) {
      at = svg.find("?>", at);
      REQUIRE(at != std::string::npos);
      ++at;
      continue;
    }
    const std::size_t end = svg.find('>', at);
    REQUIRE(end != std::string::npos);
    const std::string tag = svg.substr(at + 1, end - at - 1);
    REQUIRE(!tag.empty());
    CHECK(std::count(tag.begin(), tag.end(), '"') % 2 == 0);
    CHECK(tag.find('<') == std::string::npos);
    const std::string name = tag.substr(tag[0] == '/' ? 1 : 0, tag.find_first_of(" /", 1) - (tag[0] == '/' ? 1 : 0));
    if (tag[0] == '/') {
      REQUIRE_MESSAGE(!open.empty(), "closing </", name, "> without an open tag");
      CHECK(open.back() == name);
      open.pop_back();
    } else {
      if (open.empty()) ++roots;
      if (tag.back() != '/') open.push_back(name);
    }
    at = end;
  }
  CHECK(open.empty());
  CHECK(roots == 1);
}

}  // namespace ellipse::testing
