// study/figures: colour maps, the pixels of rendered heatmaps, bare and framed (title, labels, colour bar), the
// PNG bytes (decoded here with zlib), the SVG line chart's text and structure, and the errors for invalid input.
#include <doctest/doctest.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "study/figures.hpp"
#include "core/io/file.hpp"
#include "figure_checks.hpp"
#include "helpers.hpp"

using namespace ellipse;
using namespace ellipse::figures;
using ellipse::testing::TempDir;
using ellipse::testing::be32;
using ellipse::testing::check_panels_drawn;
using ellipse::testing::check_well_formed;
using ellipse::testing::decode_png;
using ellipse::testing::find_block;
using ellipse::testing::find_colour_bar;
using ellipse::testing::ink_in;

namespace ellipse::figures {
// Lets doctest print colours in failed checks (found by argument-dependent lookup).
std::ostream& operator<<(std::ostream& out, const Rgb& c) {
  return out << "rgb(" << int{c.r} << ", " << int{c.g} << ", " << int{c.b} << ")";
}
}  // namespace ellipse::figures

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (std::size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

double luma(Rgb c) { return 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b; }

}  // namespace

TEST_CASE("colour maps: ends, clamping, non-finite values, rising lightness") {
  CHECK(colormap(0) == Rgb{66, 5, 86});
  CHECK(colormap(1) == Rgb{246, 230, 40});
  CHECK(colormap(-3) == colormap(0));
  CHECK(colormap(7) == colormap(1));
  CHECK(colormap(kNaN) == kNonFiniteColour);
  CHECK(colormap(std::numeric_limits<float>::infinity()) == kNonFiniteColour);
  CHECK(colour_of(Colormap::viridis, 0.3f) == colormap(0.3f));
  CHECK(colour_of(Colormap::grey, 0) == Rgb{0, 0, 0});
  CHECK(colour_of(Colormap::grey, 1) == Rgb{255, 255, 255});
  CHECK(colour_of(Colormap::grey, 0.5f) == Rgb{128, 128, 128});
  CHECK(colour_of(Colormap::grey, kNaN) == kNonFiniteColour);
  // Lightness rises along the map, so larger values always look lighter.
  for (int i = 1; i <= 256; ++i) CHECK(luma(colormap(i / 256.0f)) > luma(colormap((i - 1) / 256.0f)) - 1.0);
  CHECK(luma(colormap(1)) - luma(colormap(0)) > 150);
}

TEST_CASE("render_heatmap: cell squares, auto and fixed ranges, separators, non-finite cells") {
  const Grid grid{2, 3, {0, 1, 2, 3, 4, 5}};
  const Image image = render_heatmap(grid, {.cell_px = 3});
  CHECK(image.width == 9);
  CHECK(image.height == 6);
  CHECK(image.rgb.size() == 9 * 6 * 3);
  CHECK(image.at(0, 0) == colormap(0));    // min -> first colour
  CHECK(image.at(8, 5) == colormap(1));    // max -> last colour
  CHECK(image.at(6, 3) == colormap(1));    // every pixel of the cell
  CHECK(image.at(6, 2) == colormap(0.4f));  // row 0, column 2: value 2 of 0..5
  CHECK(image.at(3, 0) == colormap(0.2f));

  const Image fixed = render_heatmap(grid, {.cell_px = 1, .range = Range{0, 10}});
  CHECK(fixed.at(2, 1) == colormap(0.5f));
  CHECK(render_heatmap(grid, {.cell_px = 1, .range = Range{1, 4}}).at(2, 1) == colormap(1));  // clamped

  const Image separated = render_heatmap(grid, {.cell_px = 2, .separators = true});
  CHECK(separated.width == 3 * 2 + 2);
  CHECK(separated.height == 2 * 2 + 1);
  CHECK(separated.at(2, 0) == kBackground);
  CHECK(separated.at(0, 2) == kBackground);
  CHECK(separated.at(3, 3) == colormap(0.8f));

  const Image grey = render_heatmap(grid, {.map = Colormap::grey, .cell_px = 1});
  CHECK(grey.at(0, 0) == Rgb{0, 0, 0});
  CHECK(grey.at(2, 1) == Rgb{255, 255, 255});

  // Non-finite cells are magenta and do not stretch the automatic range.
  const Image holes = render_heatmap({1, 4, {kNaN, 1, std::numeric_limits<float>::infinity(), 3}}, {.cell_px = 1});
  CHECK(holes.at(0, 0) == kNonFiniteColour);
  CHECK(holes.at(2, 0) == kNonFiniteColour);
  CHECK(holes.at(1, 0) == colormap(0));
  CHECK(holes.at(3, 0) == colormap(1));
  // A constant map has no range to spread over: the middle colour.
  CHECK(render_heatmap({1, 2, {0.25f, 0.25f}}, {.cell_px = 1}).at(1, 0) == colormap(0.5f));
}

TEST_CASE("render_panel_grid: gaps, per-panel and shared ranges") {
  const Grid low{2, 2, {0, 1, 2, 3}}, high{2, 2, {10, 11, 12, 13}};
  const std::vector<std::vector<Grid>> panels{{low, low, low, low}, {high, high, high, high}};
  const Image own = render_panel_grid(panels, {.cell_px = 2}, 3);
  CHECK(own.width == 4 * 4 + 3 * 3);
  CHECK(own.height == 2 * 4 + 3);
  CHECK(own.at(4, 0) == kBackground);  // the gap after the first panel
  CHECK(own.at(0, 5) == kBackground);  // the gap below it
  CHECK(own.at(0, 7) == colormap(0));  // each panel its own range
  CHECK(own.at(24, 10) == colormap(1));

  const Image shared = render_panel_grid(panels, {.cell_px = 2, .shared_range = true}, 3);
  CHECK(shared.at(0, 0) == colormap(0));
  CHECK(shared.at(3, 3) == colormap(3.0f / 13));
  CHECK(shared.at(0, 7) == colormap(10.0f / 13));
  CHECK(shared.at(24, 10) == colormap(1));
  const Image fixed = render_panel_grid(panels, {.cell_px = 2, .range = Range{0, 26}, .shared_range = false}, 0);
  CHECK(fixed.width == 16);
  CHECK(fixed.at(15, 7) == colormap(0.5f));
}

TEST_CASE("render_side_by_side: grey image, overlays scaled up to its size") {
  const Grid image{4, 4, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}};
  const Grid overlay{2, 2, {0, 1, 2, 3}};
  const Image out = render_side_by_side(image, {overlay, overlay}, {.pixel_px = 2, .gap_px = 1});
  CHECK(out.width == 3 * 8 + 2);
  CHECK(out.height == 8);
  CHECK(out.at(0, 0) == Rgb{0, 0, 0});
  CHECK(out.at(7, 7) == Rgb{255, 255, 255});
  CHECK(out.at(8, 0) == kBackground);
  // The overlay's cell (0, 1) covers image pixels (0..1, 2..3), screen pixels 4..7 of its panel.
  CHECK(out.at(9 + 3, 0) == colormap(0));
  CHECK(out.at(9 + 4, 0) == colormap(1.0f / 3));
  CHECK(out.at(9 + 7, 3) == colormap(1.0f / 3));
  CHECK(out.at(9 + 7, 4) == colormap(1));
  CHECK(out.at(18 + 7, 7) == colormap(1));

  const Image fixed = render_side_by_side(image, {overlay}, {.pixel_px = 1, .gap_px = 0, .image_range = Range{0, 30},
                                                             .overlay_map = Colormap::grey, .overlay_range = Range{0, 6}});
  CHECK(fixed.at(3, 3) == Rgb{128, 128, 128});
  CHECK(fixed.at(4 + 3, 3) == Rgb{128, 128, 128});
  CHECK(render_side_by_side(image, {}, {.pixel_px = 1}).width == 4);
}

TEST_CASE("automatic ranges from zero: the dark end is weight 0") {
  const Grid grid{1, 2, {2, 4}};
  const Image image = render_heatmap(grid, {.cell_px = 1, .from_zero = true});
  CHECK(image.at(0, 0) == colormap(0.5f));
  CHECK(image.at(1, 0) == colormap(1));
  CHECK(render_heatmap({1, 2, {-2, -1}}, {.cell_px = 1, .from_zero = true}).at(1, 0) == colormap(0.5f));
  const Grid low{1, 2, {1, 2}}, high{1, 2, {5, 10}};
  const Image own = render_panel_grid({{low, high}}, {.cell_px = 1, .from_zero = true}, 1);
  CHECK(own.at(0, 0) == colormap(0.5f));
  CHECK(own.at(3, 0) == colormap(0.5f));
  const Image shared = render_panel_grid({{low, high}}, {.cell_px = 1, .shared_range = true, .from_zero = true}, 1);
  CHECK(shared.at(0, 0) == colormap(0.1f));
  const Image side = render_side_by_side({2, 2, {0, 1, 2, 3}}, {{1, 2, {3, 6}}},
                                         {.pixel_px = 1, .gap_px = 0, .overlay_from_zero = true});
  CHECK(side.at(2, 0) == colormap(0.5f));
  CHECK(side.at(3, 1) == colormap(1));
}

TEST_CASE("framed heatmap: text in its bands, the heatmap's pixels intact, a colour bar from min to max") {
  const Grid grid{3, 4, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  const Image bare = render_heatmap(grid, {.cell_px = 5});
  const Labels labels{.title = "Title of the figure", .x_label = "columns", .y_label = "rows", .row_labels = {},
                      .column_labels = {}, .colour_label = "value"};
  const Image framed = render_heatmap(grid, {.cell_px = 5, .labels = labels});
  const auto at = find_block(framed, bare);
  REQUIRE(at);
  const auto [x0, y0] = *at;
  // The title above the heatmap, the x label below it, the y label left of it; the heatmap itself holds no text.
  CHECK(ink_in(framed, 0, 0, framed.width, y0) > 50);
  CHECK(ink_in(framed, 0, y0 + bare.height, framed.width, framed.height) > 30);
  CHECK(ink_in(framed, 0, y0, x0, y0 + bare.height) > 20);
  CHECK(ink_in(framed, x0, y0, x0 + bare.width, y0 + bare.height) == 0);
  // No text: no title band, and the heatmap starts higher.
  const auto untitled = find_block(render_heatmap(grid, {.cell_px = 5, .labels = {.colour_label = "value"}}), bare);
  REQUIRE(untitled);
  CHECK(untitled->second < y0);

  // The colour bar, right of the heatmap: the map from its bottom (0) to its top (1), lightness rising upwards.
  const auto bar = find_colour_bar(framed);
  CHECK(bar.x > x0 + bare.width);
  CHECK(bar.top == y0);
  REQUIRE(bar.height >= 80);
  for (int i = 0; i < bar.height; ++i) {
    CAPTURE(i);
    CHECK(framed.at(bar.x, bar.top + i) ==
          colormap(static_cast<float>(bar.height - 1 - i) / static_cast<float>(bar.height - 1)));
    if (i > 0) CHECK(luma(framed.at(bar.x, bar.top + i)) <= luma(framed.at(bar.x, bar.top + i - 1)));
  }
  // Its values beside it: text right of the bar, at its top and bottom.
  CHECK(ink_in(framed, bar.x + 1, bar.top - 10, framed.width, bar.top + 10) > 10);
  CHECK(ink_in(framed, bar.x + 1, bar.top + bar.height - 10, framed.width, bar.top + bar.height + 10) > 5);
  // A grey map's bar is grey, from black at the bottom to white at the top.
  const Image grey = render_heatmap(grid, {.map = Colormap::grey, .cell_px = 5, .labels = labels});
  const auto grey_at = find_block(grey, render_heatmap(grid, {.map = Colormap::grey, .cell_px = 5}));
  REQUIRE(grey_at);
  const int grey_bar_x = grey_at->first + bare.width + 20;
  CHECK(grey.at(grey_bar_x, grey_at->second) == Rgb{255, 255, 255});
  CHECK(grey.at(grey_bar_x, grey_at->second + bar.height - 1) == Rgb{0, 0, 0});
}

TEST_CASE("framed panel grid: panels in place, labels beside them, each panel's own scale printed above it") {
  const Grid a{2, 3, {0, 1, 2, 3, 4, 5}}, b{2, 3, {5, 0, 1, 2, 3, 4}}, c{2, 3, {4, 5, 0, 1, 2, 3}},
      d{2, 3, {3, 4, 5, 0, 1, 2}};
  const std::vector<std::vector<Grid>> panels{{a, b}, {c, d}};
  const Labels labels{.title = "Panels", .x_label = {}, .y_label = {}, .row_labels = {"layer 0", "layer 1"},
                      .column_labels = {"head 0", "a rather long head label"}, .colour_label = {}};
  for (const bool shared : {false, true}) {
    CAPTURE(shared);
    const HeatmapStyle style{.cell_px = 4, .shared_range = shared, .labels = labels};
    const Image framed = render_panel_grid(panels, style, 2);
    // Each panel as drawn alone on its range (here every panel spans 0..5, so shared or not they look the same).
    check_panels_drawn(framed, panels, {.cell_px = 4});
    const auto p00 = *find_block(framed, render_heatmap(a, {.cell_px = 4}));
    const auto p01 = *find_block(framed, render_heatmap(b, {.cell_px = 4}));
    const auto p10 = *find_block(framed, render_heatmap(c, {.cell_px = 4}));
    // The gap widens to fit the long column label (24 characters, far wider than the 12-px panel).
    CHECK(p01.first - p00.first > 200);
    // Row labels left of each row, column labels above the first.
    CHECK(ink_in(framed, 0, p00.second, p00.first, p00.second + 8) > 10);
    CHECK(ink_in(framed, 0, p10.second, p10.first, p10.second + 8) > 10);
    CHECK(ink_in(framed, p01.first - 60, p00.second - 60, p01.first + 60, p00.second) > 10);
    // Panels on their own scales print it ("max 5") between the rows; on a shared scale the gap stays blank.
    const int between = ink_in(framed, p00.first, p00.second + 8, p01.first + 12, p10.second);
    if (shared)
      CHECK(between == 0);
    else
      CHECK(between > 10);
  }
  CHECK_ERROR(render_panel_grid(panels, {.labels = {.row_labels = {"one"}}}, 1), "render_panel_grid",
              "1 row labels for 2 panel rows");
  CHECK_ERROR(render_panel_grid(panels, {.labels = {.column_labels = {"x", "y", "z"}}}, 1), "render_panel_grid",
              "3 column labels for 2 panel columns");
}

TEST_CASE("framed side by side: the image and the overlays in place, the overlays' colour bar") {
  const Grid image{4, 4, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}};
  const Grid overlay{2, 2, {0, 1, 2, 3}}, other{2, 2, {3, 0, 1, 2}};
  const Image framed = render_side_by_side(
      image, {overlay, other},
      {.pixel_px = 3, .gap_px = 2, .overlay_from_zero = true,
       .labels = {.title = "Image and overlays", .column_labels = {"image", "head 0", "head 1"},
                  .colour_label = "weight"}});
  const auto at_image = find_block(framed, render_heatmap(image, {.map = Colormap::grey, .cell_px = 3}));
  const auto at_overlay = find_block(framed, render_heatmap(overlay, {.cell_px = 6, .from_zero = true}));
  const auto at_other = find_block(framed, render_heatmap(other, {.cell_px = 6, .from_zero = true}));
  REQUIRE(at_image);
  REQUIRE(at_overlay);
  REQUIRE(at_other);
  CHECK(at_image->second == at_overlay->second);
  CHECK(at_image->first < at_overlay->first);
  CHECK(at_overlay->first < at_other->first);
  const auto bar = find_colour_bar(framed);
  CHECK(framed.at(bar.x, bar.top) == colormap(1));
  CHECK(framed.at(bar.x, bar.top + bar.height - 1) == colormap(0));
}

TEST_CASE("figure text: long titles wrap, huge ones are refused, other characters drawn as '?'") {
  const Grid grid{2, 2, {0, 1, 2, 3}};
  const auto titled = [&](const std::string& title) {
    return render_heatmap(grid, {.cell_px = 4, .labels = {.title = title}});
  };
  const Image one_line = titled("short");
  std::string words;
  for (int i = 0; i < 300; ++i) words += "word ";
  for (const std::string& title : {words, std::string(3000, 'W')}) {  // many words; one word wider than a line
    const Image wrapped = titled(title);
    CHECK(wrapped.width == one_line.width);
    CHECK(wrapped.height > one_line.height + 20 * 10);
    CHECK(find_block(wrapped, render_heatmap(grid, {.cell_px = 4})));
  }
  CHECK(titled("two\nlines").height > one_line.height);
  CHECK_ERROR(titled(std::string(100000, 'W')), "render_heatmap", "limit");
  // Long labels beside the panels widen the figure rather than running off it.
  const Image wide = render_heatmap(grid, {.cell_px = 4, .labels = {.row_labels = {std::string(200, 'r')}}});
  CHECK(wide.width > 200 * 6);
  CHECK(ink_in(wide, 0, 0, wide.width, wide.height) > 200 * 10);

  // One '?' for each character outside printable ASCII (not one per UTF-8 byte), and for control characters.
  CHECK(titled("caf\xC3\xA9 \xE2\x86\x92 m").rgb == titled("caf? ? m").rgb);
  CHECK(titled("tab\there").rgb == titled("tab?here").rgb);
  CHECK(titled("caf\xC3\xA9").rgb != titled("cafe").rgb);
  const auto row_label = [&](const std::string& label) {
    return render_heatmap(grid, {.cell_px = 4, .labels = {.row_labels = {label}}}).rgb;
  };
  CHECK(row_label("a\nb") == row_label("a?b"));  // labels are one line
}

TEST_CASE("PNG files: signature, IHDR size, and the pixels back") {
  TempDir dir;
  const Grid grid{3, 5, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, kNaN}};
  const Image expected = render_heatmap(grid, {.cell_px = 4, .separators = true});
  write_heatmap_png(dir / "heatmap.png", grid, {.cell_px = 4, .separators = true});
  const std::string bytes = io::read_file(dir / "heatmap.png", 1 << 20);
  CHECK(bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
  CHECK(bytes.substr(12, 4) == "IHDR");
  CHECK(be32(bytes, 16) == 5 * 4 + 4);
  CHECK(be32(bytes, 20) == 3 * 4 + 2);
  const Image decoded = decode_png(bytes);
  CHECK(decoded.width == expected.width);
  CHECK(decoded.height == expected.height);
  CHECK(decoded.rgb == expected.rgb);
  CHECK(encode_png(expected) == bytes);

  const std::vector<std::vector<Grid>> panels(2, std::vector<Grid>(4, grid));
  write_panel_grid_png(dir / "panels.png", panels, {.cell_px = 2}, 5);
  CHECK(decode_png(io::read_file(dir / "panels.png", 1 << 20)).rgb == render_panel_grid(panels, {.cell_px = 2}, 5).rgb);

  const Grid image{4, 4, std::vector<float>(16, 0.5f)};
  write_side_by_side_png(dir / "side.png", image, {Grid{2, 2, {0, 1, 2, 3}}});
  const Image side = decode_png(io::read_file(dir / "side.png", 1 << 20));
  CHECK(side.width == 4 * 4 * 2 + 4);
  CHECK(side.height == 16);

  write_png(dir / "image.png", expected);
  CHECK(io::read_file(dir / "image.png", 1 << 20) == bytes);
}

TEST_CASE("Tensor inputs: any strides and dtypes, thin wrappers over the Grid versions") {
  TempDir dir;
  const Tensor t = arange(0, 6).reshape({2, 3});
  const Grid transposed = to_grid(t.transpose(0, 1));
  CHECK(transposed.rows == 3);
  CHECK(transposed.cols == 2);
  CHECK(transposed.values == std::vector<float>{0, 3, 1, 4, 2, 5});
  CHECK(to_grid(t.to(DType::f64)).values == std::vector<float>{0, 1, 2, 3, 4, 5});
  CHECK(to_grid(t.to(DType::i64)).values == std::vector<float>{0, 1, 2, 3, 4, 5});
  CHECK_ERROR(to_grid(arange(0, 6)), "to_grid", "2-D", "[6]");
  CHECK_ERROR(to_grid(Tensor()), "to_grid", "undefined");

  write_heatmap_png(dir / "t.png", t.transpose(0, 1), {.cell_px = 2});
  CHECK(decode_png(io::read_file(dir / "t.png", 1 << 20)).rgb == render_heatmap(transposed, {.cell_px = 2}).rgb);

  // [rows, cols, h, w] -> panels[r][c], e.g. layer x head attention maps.
  const Tensor maps = arange(0, 2 * 3 * 2 * 2).reshape({2, 3, 2, 2});
  write_panel_grid_png(dir / "maps.png", maps, {.cell_px = 1, .shared_range = true}, 1);
  const Image panels = decode_png(io::read_file(dir / "maps.png", 1 << 20));
  CHECK(panels.width == 3 * 2 + 2);
  CHECK(panels.height == 2 * 2 + 1);
  CHECK(panels.at(0, 0) == colormap(0));
  CHECK(panels.at(3, 0) == colormap(4.0f / 23));  // panel [0][1] starts with value 4
  CHECK(panels.at(7, 4) == colormap(1));
  CHECK_ERROR(write_panel_grid_png(dir / "bad.png", arange(0, 4).reshape({2, 2})), "write_panel_grid_png",
              "bad.png", "4-D");

  write_side_by_side_png(dir / "side.png", arange(0, 16).reshape({4, 4}), {arange(0, 4).reshape({2, 2})},
                         {.pixel_px = 1, .gap_px = 0});
  const Image side = decode_png(io::read_file(dir / "side.png", 1 << 20));
  CHECK(side.width == 8);
  CHECK(side.at(7, 3) == colormap(1));
  CHECK_ERROR(write_side_by_side_png(dir / "side.png", arange(0, 16).reshape({4, 4}), {arange(0, 4)}),
              "write_side_by_side_png", "side.png", "2-D");
}

TEST_CASE("nice_ticks") {
  CHECK(nice_ticks(0, 1, 5) == std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1});
  CHECK(nice_ticks(0.03, 0.97, 5).size() == 6);
  CHECK(nice_ticks(0, 0.3, 3).size() == 4);  // 0.3 / 0.1 rounds below 3: no extra tick
  CHECK(nice_ticks(-7, 42, 5) == std::vector<double>{-10, 0, 10, 20, 30, 40, 50});
  CHECK(nice_ticks(0, 12, 5) == std::vector<double>{0, 2.5, 5, 7.5, 10, 12.5});
  CHECK(nice_ticks(100, 101, 4) == std::vector<double>{100, 100.25, 100.5, 100.75, 101});
  CHECK_ERROR(nice_ticks(1, 1, 5), "nice_ticks", "lo < hi");
  CHECK_ERROR(nice_ticks(0, 1, 0), "nice_ticks", "target");
}

TEST_CASE("line chart SVG: standalone, well-formed, labelled, escaped") {
  LineChart chart;
  chart.title = "Accuracy vs noise <sigma> & \"eps\"";
  chart.x_label = "noise sigma";
  chart.y_label = "accuracy";
  chart.series = {{"standard", {0, 0.1, 0.2, 0.3}, {0.91, 0.85, 0.7, 0.52}, {0.01, 0.02, 0.02, 0.03}},
                  {"elliptical's", {0, 0.1, 0.2, 0.3}, {0.92, 0.88, 0.76, std::nan("")}, {}}};
  const std::string svg = render_line_chart_svg(chart);
  check_well_formed(svg);
  CHECK(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"400\" viewBox=\"0 0 640 400\"") !=
        std::string::npos);
  CHECK(svg.find("Accuracy vs noise &lt;sigma&gt; &amp; &quot;eps&quot;") != std::string::npos);
  CHECK(svg.find(">standard</text>") != std::string::npos);
  CHECK(svg.find(">elliptical&apos;s</text>") != std::string::npos);
  CHECK(svg.find(">noise sigma</text>") != std::string::npos);
  CHECK(svg.find(">accuracy</text>") != std::string::npos);
  CHECK(svg.find(">0.0</text>") != std::string::npos);  // x ticks: 0, 0.05, ... or 0, 0.1, ...
  CHECK(svg.find(">0.3") != std::string::npos);
  CHECK(count(svg, "<circle") == 4 + 0 + 1);  // series 0's markers and its legend entry
  CHECK(count(svg, "<rect x=") >= 2 + 3 + 1);  // series 1's squares (3 finite points), legend sample
  CHECK(count(svg, "stroke-width=\"1.2\"") == 1);  // one group of error bars
  // The NaN ends series 1's line after three points; series 0's line has four.
  std::vector<std::string> lines;  // the series' lines, one <path> element each
  for (std::size_t at = svg.find("stroke-linejoin"); at != std::string::npos; at = svg.find("stroke-linejoin", at + 1))
    lines.push_back(svg.substr(svg.rfind('<', at), at - svg.rfind('<', at)));
  REQUIRE(lines.size() == 2);
  CHECK(count(lines[0], "M") == 1);
  CHECK(count(lines[0], "L") == 3);
  CHECK(count(lines[1], "M") == 1);
  CHECK(count(lines[1], "L") == 2);

  TempDir dir;
  write_line_chart_svg(dir / "chart.svg", chart);
  CHECK(io::read_file(dir / "chart.svg", 1 << 20) == svg);

  LineChart categorical{.title = "collapse vs layer", .x_label = "layer", .y_label = "mean cosine",
                        .categories = {"L0", "L1", "L2", "L3"},
                        .series = {{"", {}, {0.1, 0.3, 0.6, 0.9}, {}}}, .y_range = Range{0, 1}};
  const std::string cat = render_line_chart_svg(categorical);
  check_well_formed(cat);
  for (const char* label : {">L0</text>", ">L3</text>", ">0.0</text>", ">1.0</text>"})
    CHECK_MESSAGE(cat.find(label) != std::string::npos, label);
  CHECK(cat.find("stroke=\"#bbb\"") == std::string::npos);  // no legend for unnamed series
}

TEST_CASE("figures: invalid input throws ellipse::Error naming the function, the file and the problem") {
  TempDir dir;
  const std::string path = dir / "out.png";
  const Grid good{2, 2, {0, 1, 2, 3}};
  CHECK_ERROR(write_heatmap_png(path, Grid{0, 3, {}}), "write_heatmap_png", "out.png", "empty", "0 x 3");
  CHECK_ERROR(write_heatmap_png(path, Grid{2, 3, {1, 2}}), "write_heatmap_png", "out.png", "2 x 3", "2 values");
  CHECK_ERROR(write_heatmap_png(path, good, {.cell_px = 0}), "write_heatmap_png", "cell_px", "got 0");
  CHECK_ERROR(write_heatmap_png(path, good, {.range = Range{1, 1}}), "write_heatmap_png", "lo < hi");
  CHECK_ERROR(write_heatmap_png(path, good, {.range = Range{0, std::nan("")}}), "write_heatmap_png", "finite");
  CHECK_ERROR(write_heatmap_png(path, Grid{1, 100000, std::vector<float>(100000)}), "write_heatmap_png", "limit");
  CHECK_ERROR(write_heatmap_png("", good), "write_heatmap_png", "path is empty");
  CHECK_ERROR(write_heatmap_png(dir / "missing/out.png", good), "write_heatmap_png", "missing/out.png");
  CHECK_ERROR(render_heatmap(Grid{2, -1, {}}, {}), "render_heatmap", "empty");

  CHECK_ERROR(write_panel_grid_png(path, std::vector<std::vector<Grid>>{}), "write_panel_grid_png", "out.png", "no panels");
  CHECK_ERROR(write_panel_grid_png(path, {{good, good}, {good}}), "write_panel_grid_png", "row 1 holds 1");
  CHECK_ERROR(write_panel_grid_png(path, {{good, Grid{1, 2, {0, 1}}}}), "write_panel_grid_png", "panel [0][1]",
              "1 x 2");
  CHECK_ERROR(write_panel_grid_png(path, {{good, Grid{2, 2, {0}}}}), "write_panel_grid_png", "panel [0][1]",
              "1 values");
  CHECK_ERROR(write_panel_grid_png(path, {{good}}, {}, -1), "write_panel_grid_png", "gap_px", "-1");

  CHECK_ERROR(write_side_by_side_png(path, Grid{28, 28, std::vector<float>(784)}, {Grid{5, 5, std::vector<float>(25)}}),
              "write_side_by_side_png", "out.png", "overlay 0 is 5 x 5", "28 x 28");
  CHECK_ERROR(write_side_by_side_png(path, good, {good}, {.pixel_px = -2}), "write_side_by_side_png", "pixel_px");
  CHECK_ERROR(write_side_by_side_png(path, Grid{}, {}), "write_side_by_side_png", "the image is empty");
  CHECK_ERROR(write_side_by_side_png(path, good, {good}, {.overlay_range = Range{2, 1}}), "overlay_range");

  CHECK_ERROR(encode_png(Image{2, 2, {}}), "encode_png", "2 x 2", "0 bytes");
  CHECK_ERROR(Image{}.at(0, 0), "Image::at", "outside");

  const std::string svg = dir / "chart.svg";
  const Series line{"a", {0, 1}, {1, 2}, {}};
  CHECK_ERROR(write_line_chart_svg(svg, LineChart{}), "write_line_chart_svg", "chart.svg", "no series");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {{"a", {0, 1, 2}, {1, 2}, {}}}}), "write_line_chart_svg",
              "series 0 ('a')", "3 xs and 2 ys");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {line, {"b", {0, 1}, {1, 2}, {0.1}}}}), "series 1 ('b')",
              "1 spreads for 2 ys");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {{"a", {0, 1}, {1, 2}, {0.1, -0.1}}}}), "negative");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {{"a", {0, INFINITY}, {1, 2}, {}}}}), "non-finite x");
  CHECK_ERROR(write_line_chart_svg(svg, {.categories = {"x", "y", "z"}, .series = {{"a", {}, {1, 2}, {}}}}),
              "2 ys for 3 categories");
  CHECK_ERROR(write_line_chart_svg(svg, {.categories = {"x", "y"}, .series = {line}}), "categorical");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {line}, .y_range = Range{1, 0}}), "y_range");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {line}, .width = 100}), "100 x 400");
  CHECK_ERROR(write_line_chart_svg(svg, {.series = {{std::string(100, 'n'), {0, 1}, {1, 2}, {}}}}), "legend needs",
              "names shorter");
  LineChart crowded{.series = std::vector<Series>(10, {std::string(40, 'n'), {0, 1}, {1, 2}, {}}), .height = 200};
  CHECK_ERROR(write_line_chart_svg(svg, crowded), "640 x 200", "make it larger");
  CHECK_ERROR(write_line_chart_svg(dir / "missing/chart.svg", {.series = {line}}), "write_line_chart_svg",
              "missing/chart.svg");
}
