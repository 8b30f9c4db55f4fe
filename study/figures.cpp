#include "study/figures.hpp"

// Only PNG-to-memory is needed; static linkage keeps these symbols from clashing with Debian's libstb.a
// should anything link it.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
#include <stb/stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string_view>

#include "core/error.hpp"
#include "core/io/file.hpp"

namespace ellipse::figures {
namespace {

// Who is asking, for error messages: the public function and, for the write_* functions, the output file.
struct Where {
  std::string_view function;
  const std::string* path = nullptr;
};

template <class... Args>
[[noreturn]] void fail_at(const Where& where, fmt::format_string<Args...> format, Args&&... args) {
  const std::string problem = fmt::format(format, std::forward<Args>(args)...);
  if (where.path != nullptr) fail("{}: '{}': {}", where.function, *where.path, problem);
  fail("{}: {}", where.function, problem);
}

void check_path(const Where& where) {
  if (where.path->empty()) fail("{}: the path is empty", where.function);
}

// Encodes and replaces the file; write_file_atomic's message already names the file.
void write_bytes(const Where& where, std::string_view bytes) {
  try {
    io::write_file_atomic(*where.path, bytes);
  } catch (const Error& e) {
    fail("{}: {}", where.function, e.what());
  }
}

void check_grid(const Where& where, const Grid& grid, std::string_view what) {
  if (grid.rows <= 0 || grid.cols <= 0) fail_at(where, "{} is empty ({} x {})", what, grid.rows, grid.cols);
  if (grid.rows > std::numeric_limits<std::int64_t>::max() / grid.cols ||
      static_cast<std::int64_t>(grid.values.size()) != grid.rows * grid.cols)
    fail_at(where, "{} is {} x {} but holds {} values", what, grid.rows, grid.cols, grid.values.size());
}

void check_range(const Where& where, const std::optional<Range>& range, std::string_view what) {
  if (range && !(std::isfinite(range->lo) && std::isfinite(range->hi) && range->lo < range->hi))
    fail_at(where, "{} must be finite with lo < hi, got [{}, {}]", what, range->lo, range->hi);
}

// The interval mapped onto a colour map. Not wider than a point (lo >= hi) when every finite value is equal
// or none is finite; such a span maps every value to the middle of the map.
struct Span {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void include(const Grid& grid) {
    for (float v : grid.values)
      if (std::isfinite(v)) {
        lo = std::min<double>(lo, v);
        hi = std::max<double>(hi, v);
      }
  }
};

Span fixed_span(const Range& range) { return {range.lo, range.hi}; }

Span span_of(const Grid& grid) {
  Span span;
  span.include(grid);
  return span;
}

Rgb colour_in(Colormap map, const Span& span, float v) {
  if (!std::isfinite(v)) return kNonFiniteColour;
  const double t = span.hi > span.lo ? (v - span.lo) / (span.hi - span.lo) : 0.5;
  return colour_of(map, static_cast<float>(t));
}

// Bounds every image to sizes stb and memory handle comfortably (192 MiB of pixels at most).
constexpr std::int64_t kMaxSide = 1 << 15;
constexpr std::int64_t kMaxPixels = std::int64_t{1} << 26;

Image blank_image(const Where& where, std::int64_t width, std::int64_t height) {
  if (width > kMaxSide || height > kMaxSide || width * height > kMaxPixels)
    fail_at(where, "the image would be {} x {} pixels, more than the limit of {} per side and {} in all", width,
            height, kMaxSide, kMaxPixels);
  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  static_assert(kBackground == Rgb{255, 255, 255}, "blank images are filled byte by byte");
  image.rgb.assign(static_cast<std::size_t>(width * height * 3), 255);
  return image;
}

void set_pixel(Image& image, std::int64_t x, std::int64_t y, Rgb c) {
  const auto i = static_cast<std::size_t>((y * image.width + x) * 3);
  image.rgb[i] = c.r;
  image.rgb[i + 1] = c.g;
  image.rgb[i + 2] = c.b;
}

// The pixel extent of `cells` cells; sizes are validated to be small, so this cannot overflow.
std::int64_t extent(std::int64_t cells, int cell_px, bool separators) {
  return cells * cell_px + (separators ? cells - 1 : 0);
}

// Draws `grid` with its top-left corner at (x0, y0); each cell a cell_px square.
void draw_grid(Image& image, std::int64_t x0, std::int64_t y0, const Grid& grid, Colormap map, const Span& span,
               int cell_px, bool separators) {
  const std::int64_t pitch = cell_px + (separators ? 1 : 0);
  for (std::int64_t r = 0; r < grid.rows; ++r)
    for (std::int64_t c = 0; c < grid.cols; ++c) {
      const Rgb colour = colour_in(map, span, grid.at(r, c));
      for (int dy = 0; dy < cell_px; ++dy)
        for (int dx = 0; dx < cell_px; ++dx) set_pixel(image, x0 + c * pitch + dx, y0 + r * pitch + dy, colour);
    }
}

// Grids far larger than any image are rejected before their pixel sizes are multiplied out.
void check_cells_fit(const Where& where, const Grid& grid, int cell_px) {
  if (grid.rows > kMaxSide || grid.cols > kMaxSide || grid.rows * cell_px > kMaxSide || grid.cols * cell_px > kMaxSide)
    fail_at(where, "a {} x {} grid at {} px a cell is larger than the limit of {} pixels per side", grid.rows,
            grid.cols, cell_px, kMaxSide);
}

void check_style(const Where& where, const HeatmapStyle& style) {
  if (style.cell_px <= 0 || style.cell_px > kMaxSide)
    fail_at(where, "cell_px must be in [1, {}], got {}", kMaxSide, style.cell_px);
  check_range(where, style.range, "the style's range");
}

Image heatmap(const Where& where, const Grid& grid, const HeatmapStyle& style) {
  check_style(where, style);
  check_grid(where, grid, "the grid");
  check_cells_fit(where, grid, style.cell_px);
  Image image = blank_image(where, extent(grid.cols, style.cell_px, style.separators),
                            extent(grid.rows, style.cell_px, style.separators));
  draw_grid(image, 0, 0, grid, style.map, style.range ? fixed_span(*style.range) : span_of(grid), style.cell_px,
            style.separators);
  return image;
}

Image panel_grid(const Where& where, const std::vector<std::vector<Grid>>& panels, const HeatmapStyle& style,
                 int gap_px) {
  check_style(where, style);
  if (gap_px < 0 || gap_px > kMaxSide) fail_at(where, "gap_px must be in [0, {}], got {}", kMaxSide, gap_px);
  if (panels.empty() || panels[0].empty()) fail_at(where, "there are no panels");
  const Grid& first = panels[0][0];
  for (std::size_t r = 0; r < panels.size(); ++r) {
    if (panels[r].size() != panels[0].size())
      fail_at(where, "panel row {} holds {} panels, row 0 holds {}", r, panels[r].size(), panels[0].size());
    for (std::size_t c = 0; c < panels[r].size(); ++c) {
      const Grid& panel = panels[r][c];
      check_grid(where, panel, fmt::format("panel [{}][{}]", r, c));
      if (panel.rows != first.rows || panel.cols != first.cols)
        fail_at(where, "panel [{}][{}] is {} x {}, panel [0][0] is {} x {}", r, c, panel.rows, panel.cols,
                first.rows, first.cols);
    }
  }
  check_cells_fit(where, first, style.cell_px);
  const std::int64_t n_rows = static_cast<std::int64_t>(panels.size());
  const std::int64_t n_cols = static_cast<std::int64_t>(panels[0].size());
  const std::int64_t panel_w = extent(first.cols, style.cell_px, style.separators);
  const std::int64_t panel_h = extent(first.rows, style.cell_px, style.separators);
  if (n_rows > kMaxSide || n_cols > kMaxSide)
    fail_at(where, "{} x {} panels are more than the limit of {} per side", n_rows, n_cols, kMaxSide);
  Image image = blank_image(where, n_cols * panel_w + (n_cols - 1) * gap_px, n_rows * panel_h + (n_rows - 1) * gap_px);

  Span shared;
  if (style.range)
    shared = fixed_span(*style.range);
  else if (style.shared_range)
    for (const auto& row : panels)
      for (const Grid& panel : row) shared.include(panel);
  const bool per_panel = !style.range && !style.shared_range;
  for (std::int64_t r = 0; r < n_rows; ++r)
    for (std::int64_t c = 0; c < n_cols; ++c) {
      const Grid& panel = panels[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)];
      draw_grid(image, c * (panel_w + gap_px), r * (panel_h + gap_px), panel, style.map,
                per_panel ? span_of(panel) : shared, style.cell_px, style.separators);
    }
  return image;
}

// `grid` scaled up by whole factors to rows x cols (nearest neighbour).
Grid upscaled(const Grid& grid, std::int64_t rows, std::int64_t cols) {
  const std::int64_t fy = rows / grid.rows, fx = cols / grid.cols;
  Grid out{rows, cols, std::vector<float>(static_cast<std::size_t>(rows * cols))};
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out.values[static_cast<std::size_t>(r * cols + c)] = grid.at(r / fy, c / fx);
  return out;
}

Image side_by_side(const Where& where, const Grid& image, const std::vector<Grid>& overlays,
                   const SideBySideStyle& style) {
  if (style.pixel_px <= 0 || style.pixel_px > kMaxSide)
    fail_at(where, "pixel_px must be in [1, {}], got {}", kMaxSide, style.pixel_px);
  if (style.gap_px < 0 || style.gap_px > kMaxSide)
    fail_at(where, "gap_px must be in [0, {}], got {}", kMaxSide, style.gap_px);
  check_range(where, style.image_range, "image_range");
  check_range(where, style.overlay_range, "overlay_range");
  check_grid(where, image, "the image");
  check_cells_fit(where, image, style.pixel_px);
  for (std::size_t i = 0; i < overlays.size(); ++i) {
    const Grid& overlay = overlays[i];
    check_grid(where, overlay, fmt::format("overlay {}", i));
    if (image.rows % overlay.rows != 0 || image.cols % overlay.cols != 0)
      fail_at(where, "overlay {} is {} x {}, which does not divide the {} x {} image into whole cells", i,
              overlay.rows, overlay.cols, image.rows, image.cols);
  }
  const std::int64_t panel_w = image.cols * style.pixel_px, panel_h = image.rows * style.pixel_px;
  const auto n_panels = static_cast<std::int64_t>(overlays.size()) + 1;
  if (n_panels > kMaxSide) fail_at(where, "{} overlays are more than the limit of {}", overlays.size(), kMaxSide);
  Image out = blank_image(where, n_panels * panel_w + (n_panels - 1) * style.gap_px, panel_h);
  draw_grid(out, 0, 0, image, Colormap::grey, style.image_range ? fixed_span(*style.image_range) : span_of(image),
            style.pixel_px, false);
  for (std::size_t i = 0; i < overlays.size(); ++i) {
    const Span span = style.overlay_range ? fixed_span(*style.overlay_range) : span_of(overlays[i]);
    draw_grid(out, static_cast<std::int64_t>(i + 1) * (panel_w + style.gap_px), 0,
              upscaled(overlays[i], image.rows, image.cols), style.overlay_map, span, style.pixel_px, false);
  }
  return out;
}

Grid grid_of(const Where& where, const Tensor& t) {
  if (!t.defined()) fail_at(where, "the tensor is undefined");
  if (t.dim() != 2) fail_at(where, "expected a 2-D tensor, got shape {}", to_string(t.shape()));
  return {t.size(0), t.size(1), t.to_vector<float>()};
}

std::string png_bytes(const Where& where, const Image& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height) * 3)
    fail_at(where, "the image is {} x {} but holds {} bytes", image.width, image.height, image.rgb.size());
  std::string bytes;
  const auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
  };
  if (stbi_write_png_to_func(append, &bytes, image.width, image.height, 3, image.rgb.data(), image.width * 3) == 0)
    fail_at(where, "stb_image_write could not encode the {} x {} image", image.width, image.height);
  return bytes;
}

}  // namespace

Grid to_grid(const Tensor& t) { return grid_of({"to_grid"}, t); }

Rgb colormap(float t) {
  // Hand-picked anchors at equal steps of t; their luma rises by roughly equal amounts, so equal steps in
  // value read as equal steps in lightness, also in greyscale print.
  static constexpr std::array<Rgb, 7> kAnchors{{{66, 5, 86},
                                                {68, 54, 128},
                                                {54, 98, 141},
                                                {36, 138, 141},
                                                {43, 177, 123},
                                                {126, 207, 80},
                                                {246, 230, 40}}};
  if (!std::isfinite(t)) return kNonFiniteColour;
  const float x = std::clamp(t, 0.0f, 1.0f) * static_cast<float>(kAnchors.size() - 1);
  const auto i = std::min(static_cast<std::size_t>(x), kAnchors.size() - 2);
  const float f = x - static_cast<float>(i);
  const auto mix = [f](std::uint8_t a, std::uint8_t b) {
    return static_cast<std::uint8_t>(std::lround(static_cast<float>(a) + f * static_cast<float>(b - a)));
  };
  const Rgb &a = kAnchors[i], &b = kAnchors[i + 1];
  return {mix(a.r, b.r), mix(a.g, b.g), mix(a.b, b.b)};
}

Rgb colour_of(Colormap map, float t) {
  if (!std::isfinite(t)) return kNonFiniteColour;
  if (map == Colormap::viridis) return colormap(t);
  const auto level = static_cast<std::uint8_t>(std::lround(std::clamp(t, 0.0f, 1.0f) * 255.0f));
  return {level, level, level};
}

Rgb Image::at(int x, int y) const {
  ELLIPSE_CHECK(x >= 0 && x < width && y >= 0 && y < height, "Image::at: ({}, {}) is outside the {} x {} image", x,
                y, width, height);
  const auto i = (static_cast<std::size_t>(y) * static_cast<std::size_t>(width) + static_cast<std::size_t>(x)) * 3;
  return {rgb[i], rgb[i + 1], rgb[i + 2]};
}

Image render_heatmap(const Grid& grid, const HeatmapStyle& style) {
  return heatmap({"render_heatmap"}, grid, style);
}

Image render_panel_grid(const std::vector<std::vector<Grid>>& panels, const HeatmapStyle& style, int gap_px) {
  return panel_grid({"render_panel_grid"}, panels, style, gap_px);
}

Image render_side_by_side(const Grid& image, const std::vector<Grid>& overlays, const SideBySideStyle& style) {
  return side_by_side({"render_side_by_side"}, image, overlays, style);
}

std::string encode_png(const Image& image) { return png_bytes({"encode_png"}, image); }

void write_png(const std::string& path, const Image& image) {
  const Where where{"write_png", &path};
  check_path(where);
  write_bytes(where, png_bytes(where, image));
}

void write_heatmap_png(const std::string& path, const Grid& grid, const HeatmapStyle& style) {
  const Where where{"write_heatmap_png", &path};
  check_path(where);
  write_bytes(where, png_bytes(where, heatmap(where, grid, style)));
}

void write_heatmap_png(const std::string& path, const Tensor& t, const HeatmapStyle& style) {
  const Where where{"write_heatmap_png", &path};
  check_path(where);
  write_bytes(where, png_bytes(where, heatmap(where, grid_of(where, t), style)));
}

void write_panel_grid_png(const std::string& path, const std::vector<std::vector<Grid>>& panels,
                          const HeatmapStyle& style, int gap_px) {
  const Where where{"write_panel_grid_png", &path};
  check_path(where);
  write_bytes(where, png_bytes(where, panel_grid(where, panels, style, gap_px)));
}

void write_panel_grid_png(const std::string& path, const Tensor& maps, const HeatmapStyle& style, int gap_px) {
  const Where where{"write_panel_grid_png", &path};
  check_path(where);
  if (!maps.defined()) fail_at(where, "the tensor is undefined");
  if (maps.dim() != 4) fail_at(where, "expected a 4-D tensor [rows, cols, h, w], got shape {}", to_string(maps.shape()));
  const std::vector<float> values = maps.to_vector<float>();
  const std::int64_t rows = maps.size(2), cols = maps.size(3);
  std::vector<std::vector<Grid>> panels(static_cast<std::size_t>(maps.size(0)));
  auto next = values.begin();
  for (auto& row : panels)
    for (std::int64_t c = 0; c < maps.size(1); ++c, next += rows * cols)
      row.push_back({rows, cols, std::vector<float>(next, next + rows * cols)});
  write_bytes(where, png_bytes(where, panel_grid(where, panels, style, gap_px)));
}

void write_side_by_side_png(const std::string& path, const Grid& image, const std::vector<Grid>& overlays,
                            const SideBySideStyle& style) {
  const Where where{"write_side_by_side_png", &path};
  check_path(where);
  write_bytes(where, png_bytes(where, side_by_side(where, image, overlays, style)));
}

void write_side_by_side_png(const std::string& path, const Tensor& image, const std::vector<Tensor>& overlays,
                            const SideBySideStyle& style) {
  const Where where{"write_side_by_side_png", &path};
  check_path(where);
  std::vector<Grid> grids;
  for (const Tensor& overlay : overlays) grids.push_back(grid_of(where, overlay));
  write_bytes(where, png_bytes(where, side_by_side(where, grid_of(where, image), grids, style)));
}

// ---- line charts ----

namespace {

// Chosen to stay apart from each other, also for the common forms of colour blindness.
constexpr std::array<std::string_view, 8> kPalette{"#2f6db5", "#e07b21", "#2e9e5a", "#c9342f",
                                                   "#7b52ae", "#8c6239", "#d45fa8", "#6e6e6e"};
enum class Marker { circle, square, triangle, diamond };
constexpr std::array<Marker, 4> kMarkers{Marker::circle, Marker::square, Marker::triangle, Marker::diamond};

// SVG text has no font metrics to ask; an average glyph of the 12-px sans-serif font is about this wide.
constexpr double kFontPx = 12, kCharPx = 7;

double text_width(std::string_view text, double char_px = kCharPx) {
  // UTF-8 continuation bytes do not start a glyph.
  return char_px * static_cast<double>(std::count_if(text.begin(), text.end(), [](char c) {
           return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
         }));
}

// Text for an XML attribute or element; control characters, which XML 1.0 forbids, are dropped.
std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n' || c == '\r') out += c;
    }
  }
  return out;
}

// Decimals enough to tell ticks `step` apart, e.g. 1 for 0.5, 2 for 0.25.
int decimals_for(double step) {
  int d = 0;
  for (double scaled = step; d < 12 && std::abs(scaled - std::round(scaled)) > 1e-6 * scaled; scaled *= 10) ++d;
  return d;
}

std::string tick_label(double value, int decimals) {
  std::string text = fmt::format("{:.{}f}", value, decimals);
  if (text.find_first_not_of("-0.") == std::string::npos && text[0] == '-') text.erase(0, 1);  // no "-0"
  return text;
}

// One axis: data interval [lo, hi] and the tick positions with their labels.
struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

// Nice bounds around [lo, hi] (a degenerate interval is widened first), or exactly `fixed`.
Axis numeric_axis(double lo, double hi, const std::optional<Range>& fixed) {
  Axis axis;
  if (fixed) {
    lo = fixed->lo;
    hi = fixed->hi;
  } else if (!(lo < hi)) {
    const double pad = lo != 0 ? std::abs(lo) * 0.1 : 1.0;
    lo -= pad;
    hi += pad;
  }
  const std::vector<double> ticks = nice_ticks(lo, hi, 5);
  const double step = ticks[1] - ticks[0];
  if (fixed) {
    axis.lo = lo;
    axis.hi = hi;
    for (double t : ticks)
      if (t >= lo - 1e-9 * step && t <= hi + 1e-9 * step) axis.ticks.push_back(t);
  } else {
    axis.lo = ticks.front();
    axis.hi = ticks.back();
    axis.ticks = ticks;
  }
  const bool wide = std::max(std::abs(axis.lo), std::abs(axis.hi)) >= 1e6 || step < 1e-4;
  for (double t : axis.ticks)
    axis.labels.push_back(wide ? fmt::format("{:g}", t) : tick_label(t, decimals_for(step)));
  return axis;
}

void check_chart(const Where& where, const LineChart& chart) {
  if (chart.width < 200 || chart.height < 150 || chart.width > 20000 || chart.height > 20000)
    fail_at(where, "the chart must be 200 x 150 to 20000 x 20000 pixels, got {} x {}", chart.width, chart.height);
  check_range(where, chart.y_range, "y_range");
  if (chart.series.empty()) fail_at(where, "the chart has no series");
  const bool categorical = !chart.categories.empty();
  for (std::size_t i = 0; i < chart.series.size(); ++i) {
    const Series& s = chart.series[i];
    if (s.ys.empty()) fail_at(where, "series {} ('{}') has no points", i, s.name);
    if (categorical && !s.xs.empty())
      fail_at(where, "series {} ('{}') has xs, but the chart is categorical (x comes from its categories)", i, s.name);
    if (categorical && s.ys.size() != chart.categories.size())
      fail_at(where, "series {} ('{}') has {} ys for {} categories", i, s.name, s.ys.size(), chart.categories.size());
    if (!categorical && s.xs.size() != s.ys.size())
      fail_at(where, "series {} ('{}') has {} xs and {} ys", i, s.name, s.xs.size(), s.ys.size());
    for (double x : s.xs)
      if (!std::isfinite(x)) fail_at(where, "series {} ('{}') has a non-finite x ({})", i, s.name, x);
    if (!s.spread.empty() && s.spread.size() != s.ys.size())
      fail_at(where, "series {} ('{}') has {} spreads for {} ys", i, s.name, s.spread.size(), s.ys.size());
    for (double e : s.spread)
      if (!(std::isfinite(e) && e >= 0))
        fail_at(where, "series {} ('{}') has a spread that is negative or not finite ({})", i, s.name, e);
  }
}

// The shape of a series' marker centred on (x, y).
std::string marker_svg(Marker marker, double x, double y, std::string_view colour) {
  constexpr double r = 3.5;
  switch (marker) {
    case Marker::circle:
      return fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{}\" fill=\"{}\"/>", x, y, r, colour);
    case Marker::square:
      return fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>", x - r, y - r,
                         2 * r, 2 * r, colour);
    case Marker::triangle:
      return fmt::format("<path d=\"M{:.1f},{:.1f} L{:.1f},{:.1f} L{:.1f},{:.1f} Z\" fill=\"{}\"/>", x, y - 1.2 * r,
                         x + 1.1 * r, y + 0.8 * r, x - 1.1 * r, y + 0.8 * r, colour);
    case Marker::diamond:
      return fmt::format("<path d=\"M{:.1f},{:.1f} L{:.1f},{:.1f} L{:.1f},{:.1f} L{:.1f},{:.1f} Z\" fill=\"{}\"/>", x,
                         y - 1.3 * r, x + 1.3 * r, y, x, y + 1.3 * r, x - 1.3 * r, y, colour);
  }
  return {};
}

std::string chart_svg(const Where& where, const LineChart& chart) {
  check_chart(where, chart);
  const bool categorical = !chart.categories.empty();

  // Axes.
  double y_lo = std::numeric_limits<double>::infinity(), y_hi = -y_lo;
  double x_lo = y_lo, x_hi = y_hi;
  for (const Series& s : chart.series)
    for (std::size_t i = 0; i < s.ys.size(); ++i) {
      if (!std::isfinite(s.ys[i])) continue;
      const double e = s.spread.empty() ? 0 : s.spread[i];
      y_lo = std::min(y_lo, s.ys[i] - e);
      y_hi = std::max(y_hi, s.ys[i] + e);
      if (!categorical) {
        x_lo = std::min(x_lo, s.xs[i]);
        x_hi = std::max(x_hi, s.xs[i]);
      }
    }
  if (!(y_lo <= y_hi)) {  // no finite y at all
    y_lo = 0;
    y_hi = 1;
  }
  if (!(x_lo <= x_hi)) {
    x_lo = 0;
    x_hi = 1;
  }
  const Axis y_axis = numeric_axis(y_lo, y_hi, chart.y_range);
  Axis x_axis;
  if (categorical) {
    x_axis.lo = -0.5;
    x_axis.hi = static_cast<double>(chart.categories.size()) - 0.5;
    for (std::size_t i = 0; i < chart.categories.size(); ++i) {
      x_axis.ticks.push_back(static_cast<double>(i));
      x_axis.labels.push_back(chart.categories[i]);
    }
  } else {
    x_axis = numeric_axis(x_lo, x_hi, std::nullopt);
  }

  // Layout: margins sized from the (estimated) widths of the labels; the legend right of the plot, or below it
  // when it would take more than a third of the width.
  std::vector<std::pair<std::string_view, std::size_t>> legend;  // name, series index
  double legend_w = 0;
  for (std::size_t i = 0; i < chart.series.size(); ++i)
    if (!chart.series[i].name.empty()) {
      legend.emplace_back(chart.series[i].name, i);
      legend_w = std::max(legend_w, text_width(chart.series[i].name));
    }
  if (!legend.empty()) legend_w += 10 + 24 + 6 + 10;  // padding, line sample, space, padding
  const double legend_row_h = 18, legend_h = legend_row_h * static_cast<double>(legend.size()) + 8;
  const bool legend_below = legend_w > chart.width / 3.0;
  if (legend_w > chart.width - 16)
    fail_at(where, "the legend needs {:.0f} pixels of the chart's width of {}; make it wider or the names shorter",
            legend_w, chart.width);
  double y_label_w = 0;
  for (const std::string& label : y_axis.labels) y_label_w = std::max(y_label_w, text_width(label));
  const double first_x_half = text_width(x_axis.labels.front()) / 2, last_x_half = text_width(x_axis.labels.back()) / 2;
  const double top = chart.title.empty() ? 14 : 40;
  const double left = std::max(12 + (chart.y_label.empty() ? 0 : 20) + y_label_w + 9, first_x_half + 8);
  const double right = std::max(legend.empty() || legend_below ? 16.0 : legend_w + 24, last_x_half + 8);
  const double axis_h = 9 + kFontPx + 10 + (chart.x_label.empty() ? 0 : 22);  // tick labels and x label
  const double bottom = axis_h + (legend_below ? legend_h + 8 : 0);
  const double plot_w = chart.width - left - right, plot_h = chart.height - top - bottom;
  if (plot_w < 80 || plot_h < 60)
    fail_at(where, "a {} x {} chart leaves {:.0f} x {:.0f} pixels for the plot after its labels and legend; make it "
            "larger or the labels shorter", chart.width, chart.height, plot_w, plot_h);
  const auto px = [&](double x) { return left + (x - x_axis.lo) / (x_axis.hi - x_axis.lo) * plot_w; };
  const auto py = [&](double y) { return top + (y_axis.hi - y) / (y_axis.hi - y_axis.lo) * plot_h; };

  std::string svg = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"{2}\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      chart.width, chart.height, kFontPx);
  // Markers on the plot's edge stay whole; points beyond a fixed y range are cut off.
  svg += fmt::format("<defs><clipPath id=\"plot\"><rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\"/>"
                     "</clipPath></defs>\n",
                     left - 6, top - 6, plot_w + 12, plot_h + 12);

  // Grid lines, frame, ticks and tick labels.
  svg += "<g stroke=\"#e3e3e3\" stroke-width=\"1\">\n";
  for (double t : y_axis.ticks)
    svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", left, py(t), left + plot_w,
                       py(t));
  for (double t : x_axis.ticks)
    svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", px(t), top, px(t),
                       top + plot_h);
  svg += "</g>\n";
  svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
                     "stroke=\"#444\" stroke-width=\"1\"/>\n",
                     left, top, plot_w, plot_h);
  svg += "<g stroke=\"#444\" stroke-width=\"1\">\n";
  for (double t : y_axis.ticks)
    svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", left - 5, py(t), left, py(t));
  for (double t : x_axis.ticks)
    svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", px(t), top + plot_h, px(t),
                       top + plot_h + 5);
  // Labels are centred vertically with dy, not dominant-baseline, which some renderers (librsvg) ignore.
  svg += "</g>\n<g fill=\"#222\">\n";
  for (std::size_t i = 0; i < y_axis.ticks.size(); ++i)
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" dy=\"0.35em\">{}</text>\n",
                       left - 8, py(y_axis.ticks[i]), xml_escape(y_axis.labels[i]));
  for (std::size_t i = 0; i < x_axis.ticks.size(); ++i)
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", px(x_axis.ticks[i]),
                       top + plot_h + 9 + kFontPx, xml_escape(x_axis.labels[i]));
  svg += "</g>\n";

  // Series: error bars under the line, markers on top.
  svg += "<g clip-path=\"url(#plot)\">\n";
  for (std::size_t k = 0; k < chart.series.size(); ++k) {
    const Series& s = chart.series[k];
    const std::string_view colour = kPalette[k % kPalette.size()];
    const auto x_at = [&](std::size_t i) { return px(categorical ? static_cast<double>(i) : s.xs[i]); };
    if (!s.spread.empty()) {
      svg += fmt::format("<g stroke=\"{}\" stroke-width=\"1.2\">\n", colour);
      for (std::size_t i = 0; i < s.ys.size(); ++i) {
        if (!std::isfinite(s.ys[i])) continue;
        const double x = x_at(i), y0 = py(s.ys[i] - s.spread[i]), y1 = py(s.ys[i] + s.spread[i]);
        svg += fmt::format("<path d=\"M{0:.1f},{1:.1f} L{0:.1f},{2:.1f} M{3:.1f},{1:.1f} L{4:.1f},{1:.1f} "
                           "M{3:.1f},{2:.1f} L{4:.1f},{2:.1f}\"/>\n",
                           x, y0, y1, x - 4, x + 4);
      }
      svg += "</g>\n";
    }
    std::string path;
    bool pen_down = false;
    for (std::size_t i = 0; i < s.ys.size(); ++i) {
      if (!std::isfinite(s.ys[i])) {
        pen_down = false;
        continue;
      }
      path += fmt::format("{}{:.1f},{:.1f} ", pen_down ? "L" : "M", x_at(i), py(s.ys[i]));
      pen_down = true;
    }
    if (!path.empty()) {
      path.pop_back();
      svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\"/>\n",
                         path, colour);
    }
    for (std::size_t i = 0; i < s.ys.size(); ++i)
      if (std::isfinite(s.ys[i])) svg += marker_svg(kMarkers[k % kMarkers.size()], x_at(i), py(s.ys[i]), colour) + "\n";
  }
  svg += "</g>\n";

  // Legend: right of the plot and top-aligned with it, or below the x label.
  if (!legend.empty()) {
    const double x0 = legend_below ? std::min(left, chart.width - legend_w - 8) : left + plot_w + 14;
    const double y0 = legend_below ? top + plot_h + axis_h : top;
    svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"white\" "
                       "stroke=\"#bbb\"/>\n",
                       x0, y0, legend_w, legend_h);
    for (std::size_t j = 0; j < legend.size(); ++j) {
      const std::size_t k = legend[j].second;
      const std::string_view colour = kPalette[k % kPalette.size()];
      const double y = y0 + 4 + legend_row_h * (static_cast<double>(j) + 0.5);
      svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
                         "stroke-width=\"2\"/>\n",
                         x0 + 10, y, x0 + 34, y, colour);
      svg += marker_svg(kMarkers[k % kMarkers.size()], x0 + 22, y, colour) + "\n";
      svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" dy=\"0.35em\" fill=\"#222\">{}</text>\n",
                         x0 + 40, y, xml_escape(legend[j].first));
    }
  }

  // Title and axis labels.
  if (!chart.title.empty()) {
    // 15 px, smaller when the title would not fit the chart's width; centred over the plot, but moved
    // towards the middle of the chart when that would cut off its ends.
    constexpr double kBoldGlyphEm = 0.66;  // average advance of bold sans-serif text, in font sizes
    const double glyphs = text_width(chart.title, 1);
    const double font = std::clamp((chart.width - 16) / (kBoldGlyphEm * glyphs), 8.0, 15.0);
    const double half = kBoldGlyphEm * font * glyphs / 2;
    const double centre = std::clamp(left + plot_w / 2, std::min(half + 8, chart.width / 2.0),
                                     std::max(chart.width - half - 8, chart.width / 2.0));
    svg += fmt::format("<text x=\"{:.1f}\" y=\"24\" text-anchor=\"middle\" font-size=\"{:.1f}\" "
                       "font-weight=\"bold\" fill=\"#222\">{}</text>\n",
                       centre, font, xml_escape(chart.title));
  }
  if (!chart.x_label.empty())
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#222\">{}</text>\n",
                       left + plot_w / 2, top + plot_h + axis_h - 10, xml_escape(chart.x_label));
  if (!chart.y_label.empty())
    svg += fmt::format("<text transform=\"translate(18 {:.1f}) rotate(-90)\" text-anchor=\"middle\" "
                       "dy=\"0.35em\" fill=\"#222\">{}</text>\n",
                       top + plot_h / 2, xml_escape(chart.y_label));
  svg += "</svg>\n";
  return svg;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  ELLIPSE_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo < hi && std::isfinite(hi - lo), "nice_ticks: expected finite lo < hi, got [{}, {}]",
                lo, hi);
  ELLIPSE_CHECK(target >= 1 && target <= 1000, "nice_ticks: target must be in [1, 1000], got {}", target);
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * magnitude;
  for (double m : {1.0, 2.0, 2.5, 5.0})
    if (raw <= m * magnitude * (1 + 1e-9)) {
      step = m * magnitude;
      break;
    }
  // The tolerance keeps rounding error (0.3 / 0.1 = 2.9999999999999996) from adding a tick.
  const double first = std::floor(lo / step + 1e-9), last = std::ceil(hi / step - 1e-9);
  std::vector<double> ticks;
  for (double k = first; k <= last; ++k) ticks.push_back(k == 0 ? 0.0 : k * step);
  return ticks;
}

std::string render_line_chart_svg(const LineChart& chart) { return chart_svg({"render_line_chart_svg"}, chart); }

void write_line_chart_svg(const std::string& path, const LineChart& chart) {
  const Where where{"write_line_chart_svg", &path};
  check_path(where);
  write_bytes(where, chart_svg(where, chart));
}

}  // namespace ellipse::figures
