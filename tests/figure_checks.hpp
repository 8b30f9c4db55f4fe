#pragma once
// Readers for what study/figures writes, for tests: decode_png (8-bit RGB PNGs, checked chunk by chunk and
// inflated with zlib; the test program links ZLIB::ZLIB), finders for the parts of a framed heatmap figure
// (a heatmap's pixels, the colour bar, text) and check_well_formed for SVG documents.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>
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

// Where find_block looks: top-left corners in [x0, x1) x [y0, y1).
struct Area {
  int x0 = 0, y0 = 0;
  int x1 = std::numeric_limits<int>::max(), y1 = std::numeric_limits<int>::max();
};

// The top-left corner of the first place (in row-major order) in `area` where `part` lies in `whole` pixel for
// pixel.
inline std::optional<std::pair<int, int>> find_block(const figures::Image& whole, const figures::Image& part,
                                                     const Area& area = {}) {
  const auto row = [](const figures::Image& image, int x, int y) {
    return image.rgb.data() + (static_cast<std::size_t>(y) * static_cast<std::size_t>(image.width) +
                               static_cast<std::size_t>(x)) * 3;
  };
  const auto bytes = static_cast<std::size_t>(part.width) * 3;
  for (int y = std::max(area.y0, 0); y < area.y1 && y + part.height <= whole.height; ++y)
    for (int x = std::max(area.x0, 0); x < area.x1 && x + part.width <= whole.width; ++x) {
      bool same = true;
      for (int py = 0; same && py < part.height; ++py)
        same = std::memcmp(row(whole, x, y + py), row(part, 0, py), bytes) == 0;
      if (same) return std::pair{x, y};
    }
  return std::nullopt;
}

// Text is drawn in dark grey; the colour maps' colours other than grey's are never grey.
inline bool is_ink(figures::Rgb c) { return c.r == c.g && c.g == c.b && c.r < 100; }

inline int ink_in(const figures::Image& image, int x0, int y0, int x1, int y1) {
  int n = 0;
  for (int y = std::max(y0, 0); y < std::min(y1, image.height); ++y)
    for (int x = std::max(x0, 0); x < std::min(x1, image.width); ++x) n += is_ink(image.at(x, y));
  return n;
}

// A framed figure's colour bar (of a colour map that is not grey): the rightmost column holding colours that are
// neither white nor grey, from the first such pixel down to the last.
struct ColourBar {
  int x = 0, top = 0, height = 0;
};
inline ColourBar find_colour_bar(const figures::Image& image) {
  const auto coloured = [](figures::Rgb c) { return !(c.r == c.g && c.g == c.b); };
  for (int x = image.width - 1; x >= 0; --x) {
    int top = -1, bottom = -1;
    for (int y = 0; y < image.height; ++y)
      if (coloured(image.at(x, y))) {
        if (top < 0) top = y;
        bottom = y;
      }
    if (top >= 0) return {x, top, bottom - top + 1};
  }
  FAIL("no colour bar");
  return {};
}

// Checks that each panels[r][c] is drawn in `figure` exactly as render_heatmap draws it with `style`: panel [0][0]
// anywhere, the rest of row 0 to its right in line with it, the rest of column 0 below it, and every other panel
// where its row and column meet. (Panels may look alike, so each is looked for only where it belongs.)
inline void check_panels_drawn(const figures::Image& figure, const std::vector<std::vector<figures::Grid>>& panels,
                               const figures::HeatmapStyle& style) {
  std::vector<int> xs, ys;  // of the panel columns and rows
  for (std::size_t r = 0; r < panels.size(); ++r)
    for (std::size_t c = 0; c < panels[r].size(); ++c) {
      CAPTURE(r);
      CAPTURE(c);
      Area area;
      if (r > 0 && c > 0) area = {xs[c], ys[r], xs[c] + 1, ys[r] + 1};
      if (r == 0 && c > 0) area = {xs[c - 1] + 1, ys[0], std::numeric_limits<int>::max(), ys[0] + 1};
      if (r > 0 && c == 0) area = {xs[0], ys[r - 1] + 1, xs[0] + 1, std::numeric_limits<int>::max()};
      const auto found = find_block(figure, figures::render_heatmap(panels[r][c], style), area);
      REQUIRE(found);
      if (r == 0) xs.push_back(found->first);
      if (c == 0) ys.push_back(found->second);
    }
}

// The [h, w] maps of a [rows, cols, h, w] tensor as panels[r][c].
inline std::vector<std::vector<figures::Grid>> panels_of(const Tensor& maps) {
  std::vector<std::vector<figures::Grid>> panels(static_cast<std::size_t>(maps.size(0)));
  for (std::int64_t r = 0; r < maps.size(0); ++r)
    for (std::int64_t c = 0; c < maps.size(1); ++c)
      panels[static_cast<std::size_t>(r)].push_back(figures::to_grid(maps.select(0, r).select(0, c)));
  return panels;
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
