#include "study/figures.hpp"

// Only PNG-to-memory is needed; static linkage keeps these symbols from clashing with Debian's libstb.a
// should anything link it.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
#include <stb/stb_image_write.h>
// Text in PNGs: a public-domain bitmap font of quads, ASCII only; its functions are static.
#include <stb/stb_easy_font.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

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
  // Widens the span to take in 0, when it holds any value.
  void reach_zero() {
    if (lo > hi) return;
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
  }
};

Span fixed_span(const Range& range) { return {range.lo, range.hi}; }

Span span_of(const Grid& grid, bool from_zero) {
  Span span;
  span.include(grid);
  if (from_zero) span.reach_zero();
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

// ---- text ----
// stb_easy_font draws printable ASCII as axis-aligned quads on a grid of font units: a glyph spans 9 units from
// the top of a capital to the bottom of a descender and advances 2 to 7 units, spacing included. At two pixels
// a unit the text is 18 px tall, which reads well beside heatmap cells of 6 to 16 px.

constexpr int kTextScale = 2;
constexpr std::int64_t kTextHeight = 9 * kTextScale;
constexpr Rgb kInk{34, 34, 34};

// `text` in the characters the font has: each UTF-8 character outside printable ASCII becomes one '?' (its
// continuation bytes draw nothing), and so does each control character, except '\n' when `keep_newlines`.
std::string printable(std::string_view text, bool keep_newlines) {
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c & 0xC0) == 0x80) continue;
    out += (c >= 0x20 && c < 0x7F) || (keep_newlines && c == '\n') ? ch : '?';
  }
  return out;
}

// The advance of one printable character, in pixels.
std::int64_t advance_px(char c) {
  char glyph[2] = {c, '\0'};
  return std::int64_t{stb_easy_font_width(glyph)} * kTextScale;
}

std::int64_t text_px(std::string_view line) {
  std::int64_t width = 0;
  for (const char c : line) width += advance_px(c);
  return width;
}

void fill_rect(Image& image, std::int64_t x0, std::int64_t y0, std::int64_t x1, std::int64_t y1, Rgb colour) {
  for (std::int64_t y = std::max<std::int64_t>(y0, 0); y < std::min<std::int64_t>(y1, image.height); ++y)
    for (std::int64_t x = std::max<std::int64_t>(x0, 0); x < std::min<std::int64_t>(x1, image.width); ++x)
      set_pixel(image, x, y, colour);
}

enum class Direction { across, upwards };

// Draws one printable line in kInk into the box whose top-left corner is (x, y): text_px wide and kTextHeight
// tall across, or turned a quarter anticlockwise (reading from the bottom up) in a box kTextHeight wide and
// text_px tall. Pixels outside the image are left out.
void draw_text(Image& image, std::int64_t x, std::int64_t y, std::string_view line, Direction direction) {
  const std::int64_t length = text_px(line);
  std::int64_t pen = 0;
  for (const char c : line) {
    char glyph[2] = {c, '\0'};
    constexpr int kQuadBytes = 64;  // four vertices of x, y, z (floats) and an RGBA colour
    alignas(float) std::array<char, 16 * kQuadBytes> quads{};  // the busiest glyph has 11 quads
    const int n = stb_easy_font_print(0, 0, glyph, nullptr, quads.data(), static_cast<int>(quads.size()));
    for (int q = 0; q < n; ++q) {
      std::array<float, 10> v{};  // vertex 0 at floats 0 and 1, the opposite vertex 2 at floats 8 and 9
      std::memcpy(v.data(), quads.data() + q * kQuadBytes, sizeof(v));
      const auto px = [](float units) { return std::int64_t{std::lround(units)} * kTextScale; };
      const std::int64_t a0 = pen + px(v[0]), a1 = pen + px(v[8]), b0 = px(v[1]), b1 = px(v[9]);
      if (direction == Direction::across)
        fill_rect(image, x + a0, y + b0, x + a1, y + b1, kInk);
      else
        fill_rect(image, x + b0, y + length - a1, x + b1, y + length - a0, kInk);
    }
    pen += advance_px(c);
  }
}

// Printable `text` broken into lines of at most `width` pixels: at '\n', between words, and inside a word that
// is wider than a line on its own.
std::vector<std::string> wrapped(std::string_view text, std::int64_t width) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    std::string line;
    std::size_t at = start;
    while (at < end) {
      const std::size_t word_end = std::min(text.find(' ', at), end);
      const std::string_view word = text.substr(at, word_end - at);
      at = word_end + 1;
      if (word.empty()) continue;
      if (!line.empty() && text_px(line) + advance_px(' ') + text_px(word) <= width) {
        line += ' ';
        line += word;
        continue;
      }
      if (!line.empty()) lines.push_back(std::exchange(line, {}));
      for (const char c : word) {
        if (!line.empty() && text_px(line) + advance_px(c) > width) lines.push_back(std::exchange(line, {}));
        line += c;
      }
    }
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

std::int64_t widest(const std::vector<std::string>& lines) {
  std::int64_t width = 0;
  for (const std::string& line : lines) width = std::max(width, text_px(line));
  return width;
}

// ---- heatmap figures ----

// One panel of a heatmap figure: its cells as drawn (an overlay already scaled up), its colours, and whether
// its colour scale is its own rather than the colour bar's (then a framed figure prints it above the panel).
struct Panel {
  const Grid* grid = nullptr;
  Colormap map = Colormap::viridis;
  Span span;
  bool own_scale = false;
};

// Panels in rows of equal length, all of one size, and what a framed figure's colour bar shows: `bar_map` from
// `bar_span`'s lo to its hi, or, unset, from 0 (or min) to max of each panel on its own scale.
struct Sheet {
  std::vector<std::vector<Panel>> rows;
  int cell_px = 1;
  bool separators = false;
  int gap_px = 0;
  Colormap bar_map = Colormap::viridis;
  std::optional<Span> bar_span;
};

std::string number(double v) { return fmt::format("{:.3g}", v); }

// How a framed figure prints a panel's own colour scale.
std::string scale_caption(const Span& span) {
  if (span.lo > span.hi) return "no finite values";
  if (span.lo == span.hi) return "all " + number(span.lo);
  if (span.lo == 0) return "max " + number(span.hi);
  return number(span.lo) + " to " + number(span.hi);
}

// A value printed beside the colour bar, at `at` (0: its bottom, 1: its top).
struct Tick {
  double at = 0;
  std::string label;
};

std::vector<Tick> bar_ticks(const Sheet& sheet) {
  if (sheet.bar_span) {
    const Span& span = *sheet.bar_span;
    if (!(span.lo < span.hi)) return {{0.5, scale_caption(span)}};
    return {{0, number(span.lo)}, {0.5, number((span.lo + span.hi) / 2)}, {1, number(span.hi)}};
  }
  bool from_zero = true;
  for (const auto& row : sheet.rows)
    for (const Panel& panel : row)
      if (panel.own_scale) from_zero = from_zero && panel.span.lo == 0;
  return {{0, from_zero ? "0" : "min"}, {1, "max"}};
}

bool has_text(const Labels& labels) {
  return !labels.title.empty() || !labels.x_label.empty() || !labels.y_label.empty() || !labels.row_labels.empty() ||
         !labels.column_labels.empty() || !labels.colour_label.empty();
}

std::vector<std::string> printable_all(const std::vector<std::string>& texts) {
  std::vector<std::string> out;
  for (const std::string& text : texts) out.push_back(printable(text, false));
  return out;
}

// Draws the sheet's panels, panel [r][c] with its top-left corner at (x0 + c * pitch_x, y0 + r * pitch_y).
void draw_panels(Image& image, const Sheet& sheet, std::int64_t x0, std::int64_t y0, std::int64_t pitch_x,
                 std::int64_t pitch_y) {
  for (std::size_t r = 0; r < sheet.rows.size(); ++r)
    for (std::size_t c = 0; c < sheet.rows[r].size(); ++c) {
      const Panel& panel = sheet.rows[r][c];
      draw_grid(image, x0 + static_cast<std::int64_t>(c) * pitch_x, y0 + static_cast<std::int64_t>(r) * pitch_y,
                *panel.grid, panel.map, panel.span, sheet.cell_px, sheet.separators);
    }
}

// Spacing of a framed figure, in pixels.
constexpr std::int64_t kMargin = 12;      // around everything
constexpr std::int64_t kSpace = 10;       // between the title, labels, panels and colour bar
constexpr std::int64_t kLineGap = 4;      // between lines of text, and a caption and its panel
constexpr std::int64_t kBarWidth = 18;
constexpr std::int64_t kMinBarHeight = 80;
constexpr std::int64_t kMinTextWidth = 560;  // titles wrap to the figure's width, but never to less than this

Image framed(const Where& where, const Sheet& sheet, const Labels& labels, std::int64_t panel_w,
             std::int64_t panel_h) {
  const auto n_rows = static_cast<std::int64_t>(sheet.rows.size());
  const auto n_cols = static_cast<std::int64_t>(sheet.rows[0].size());
  if (!labels.row_labels.empty() && std::ssize(labels.row_labels) != n_rows)
    fail_at(where, "{} row labels for {} panel rows", labels.row_labels.size(), n_rows);
  if (!labels.column_labels.empty() && std::ssize(labels.column_labels) != n_cols)
    fail_at(where, "{} column labels for {} panel columns", labels.column_labels.size(), n_cols);
  const std::vector<std::string> row_labels = printable_all(labels.row_labels);
  const std::vector<std::string> column_labels = printable_all(labels.column_labels);
  const std::string y_label = printable(labels.y_label, false), colour_label = printable(labels.colour_label, false);
  std::vector<std::vector<std::string>> captions;
  std::int64_t caption_w = 0;
  for (const auto& row : sheet.rows) {
    captions.emplace_back();
    for (const Panel& panel : row) {
      captions.back().push_back(panel.own_scale ? scale_caption(panel.span) : "");
      caption_w = std::max(caption_w, text_px(captions.back().back()));
    }
  }
  const std::vector<Tick> ticks = bar_ticks(sheet);
  std::int64_t tick_w = 0;
  for (const Tick& tick : ticks) tick_w = std::max(tick_w, text_px(tick.label));

  // Each panel sits in a slot wide enough for its column label and caption and tall enough for its row label,
  // with its caption above it.
  const std::int64_t slot_w = std::max({panel_w, widest(column_labels), caption_w});
  const std::int64_t caption_h = caption_w > 0 ? kTextHeight + kLineGap : 0;
  const std::int64_t band_h = std::max(panel_h, row_labels.empty() ? 0 : kTextHeight);
  const std::int64_t pitch_x = slot_w + sheet.gap_px, pitch_y = caption_h + band_h + sheet.gap_px;
  const std::int64_t grid_w = n_cols * pitch_x - sheet.gap_px, grid_h = n_rows * pitch_y - sheet.gap_px;

  // Across: the y label, the row labels, the panels, the colour bar with its ticks, the colour label.
  const std::int64_t y_label_x = kMargin;
  const std::int64_t row_label_right = y_label_x + (y_label.empty() ? 0 : kTextHeight + kSpace) + widest(row_labels);
  const std::int64_t grid_x = row_label_right + (row_labels.empty() ? 0 : kSpace);
  const std::int64_t bar_x = grid_x + grid_w + 2 * kSpace;
  const std::int64_t tick_x = bar_x + kBarWidth + kSpace / 2;
  const std::int64_t colour_label_x = tick_x + tick_w + kSpace;
  const std::int64_t content_w = colour_label_x + (colour_label.empty() ? 0 : kTextHeight) + kMargin;
  const std::int64_t width = std::max(content_w, kMinTextWidth + 2 * kMargin);
  const std::int64_t shift = (width - content_w) / 2;  // centres narrow content under a wider title

  // Down: the title, the column labels, the panels beside the colour bar, the x label.
  const auto paragraph = [&](const std::string& text) {
    return text.empty() ? std::vector<std::string>{} : wrapped(printable(text, true), width - 2 * kMargin);
  };
  const std::vector<std::string> title = paragraph(labels.title), x_label = paragraph(labels.x_label);
  const auto lines_h = [](const std::vector<std::string>& lines) {
    return std::ssize(lines) * (kTextHeight + kLineGap) - kLineGap;
  };
  const std::int64_t column_label_y = kMargin + (title.empty() ? 0 : lines_h(title) + kSpace + kLineGap);
  const std::int64_t grid_y = column_label_y + (column_labels.empty() ? 0 : kTextHeight + kSpace);
  // The colour bar runs from the top of the first row's panels (below their captions) down.
  const std::int64_t bar_y = grid_y + caption_h;
  const std::int64_t bar_h = std::max({grid_h - caption_h, text_px(colour_label), kMinBarHeight});
  const std::int64_t body_h = std::max(caption_h + bar_h, text_px(y_label));
  // The ticks' labels stand half a line beyond the bar's ends.
  const std::int64_t x_label_y = grid_y + body_h + kTextHeight / 2 + kSpace;
  const std::int64_t height = x_label_y + (x_label.empty() ? 0 : lines_h(x_label)) + kMargin;

  Image image = blank_image(where, width, height);
  for (std::size_t i = 0; i < title.size(); ++i)
    draw_text(image, (width - text_px(title[i])) / 2, kMargin + static_cast<std::int64_t>(i) * (kTextHeight + kLineGap),
              title[i], Direction::across);
  for (std::int64_t c = 0; c < std::ssize(column_labels); ++c) {
    const std::string& label = column_labels[static_cast<std::size_t>(c)];
    draw_text(image, shift + grid_x + c * pitch_x + (slot_w - text_px(label)) / 2, column_label_y, label,
              Direction::across);
  }
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const std::int64_t slot_y = grid_y + r * pitch_y;
    if (!row_labels.empty()) {
      const std::string& label = row_labels[static_cast<std::size_t>(r)];
      draw_text(image, shift + row_label_right - text_px(label), slot_y + caption_h + (band_h - kTextHeight) / 2,
                label, Direction::across);
    }
    for (std::int64_t c = 0; c < n_cols; ++c) {
      const std::string& caption = captions[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)];
      draw_text(image, shift + grid_x + c * pitch_x + (slot_w - text_px(caption)) / 2, slot_y, caption,
                Direction::across);
    }
  }
  draw_panels(image, sheet, shift + grid_x + (slot_w - panel_w) / 2, grid_y + caption_h + (band_h - panel_h) / 2,
              pitch_x, pitch_y);
  if (!y_label.empty())
    draw_text(image, shift + y_label_x, grid_y + (std::max(grid_h, text_px(y_label)) - text_px(y_label)) / 2, y_label,
              Direction::upwards);

  // The colour bar, bottom (the map at 0) to top (at 1), with the values of `ticks` beside it. (Tick marks would
  // read as minus signs in this font.)
  for (std::int64_t i = 0; i < bar_h; ++i)
    fill_rect(image, shift + bar_x, bar_y + i, shift + bar_x + kBarWidth, bar_y + i + 1,
              colour_of(sheet.bar_map, static_cast<float>(bar_h - 1 - i) / static_cast<float>(bar_h - 1)));
  for (const Tick& tick : ticks) {
    const std::int64_t y = bar_y + std::llround((1 - tick.at) * static_cast<double>(bar_h - 1));
    draw_text(image, shift + tick_x, y - kTextHeight / 2, tick.label, Direction::across);
  }
  if (!colour_label.empty())
    draw_text(image, shift + colour_label_x, bar_y + (bar_h - text_px(colour_label)) / 2, colour_label,
              Direction::upwards);

  for (std::size_t i = 0; i < x_label.size(); ++i) {
    const std::int64_t w = text_px(x_label[i]);
    const std::int64_t x =
        std::clamp(shift + grid_x + (grid_w - w) / 2, kMargin, std::max(kMargin, width - kMargin - w));
    draw_text(image, x, x_label_y + static_cast<std::int64_t>(i) * (kTextHeight + kLineGap), x_label[i],
              Direction::across);
  }
  return image;
}

// The sheet drawn bare, panel [r][c] at (c * (panel_w + gap_px), r * (panel_h + gap_px)), or framed by `labels`
// when they hold any text.
Image render_sheet(const Where& where, const Sheet& sheet, const Labels& labels) {
  const Grid& first = *sheet.rows[0][0].grid;
  const std::int64_t panel_w = extent(first.cols, sheet.cell_px, sheet.separators);
  const std::int64_t panel_h = extent(first.rows, sheet.cell_px, sheet.separators);
  if (has_text(labels)) return framed(where, sheet, labels, panel_w, panel_h);
  const auto n_rows = static_cast<std::int64_t>(sheet.rows.size());
  const auto n_cols = static_cast<std::int64_t>(sheet.rows[0].size());
  Image image = blank_image(where, n_cols * (panel_w + sheet.gap_px) - sheet.gap_px,
                            n_rows * (panel_h + sheet.gap_px) - sheet.gap_px);
  draw_panels(image, sheet, 0, 0, panel_w + sheet.gap_px, panel_h + sheet.gap_px);
  return image;
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
  const Span span = style.range ? fixed_span(*style.range) : span_of(grid, style.from_zero);
  return render_sheet(where,
                      {.rows = {{{.grid = &grid, .map = style.map, .span = span, .own_scale = false}}},
                       .cell_px = style.cell_px, .separators = style.separators, .gap_px = 0, .bar_map = style.map,
                       .bar_span = span},
                      style.labels);
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
  if (std::ssize(panels) > kMaxSide || std::ssize(panels[0]) > kMaxSide)
    fail_at(where, "{} x {} panels are more than the limit of {} per side", panels.size(), panels[0].size(), kMaxSide);

  std::optional<Span> shared;
  if (style.range) {
    shared = fixed_span(*style.range);
  } else if (style.shared_range) {
    shared.emplace();
    for (const auto& row : panels)
      for (const Grid& panel : row) shared->include(panel);
    if (style.from_zero) shared->reach_zero();
  }
  Sheet sheet{.rows = {}, .cell_px = style.cell_px, .separators = style.separators, .gap_px = gap_px,
              .bar_map = style.map, .bar_span = shared};
  for (const auto& row : panels) {
    sheet.rows.emplace_back();
    for (const Grid& panel : row)
      sheet.rows.back().push_back({.grid = &panel, .map = style.map,
                                   .span = shared ? *shared : span_of(panel, style.from_zero),
                                   .own_scale = !shared});
  }
  return render_sheet(where, sheet, style.labels);
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
  if (std::ssize(overlays) >= kMaxSide)
    fail_at(where, "{} overlays are more than the limit of {}", overlays.size(), kMaxSide);

  std::vector<Grid> scaled;
  for (const Grid& overlay : overlays) scaled.push_back(upscaled(overlay, image.rows, image.cols));
  const Span image_span = style.image_range ? fixed_span(*style.image_range) : span_of(image, false);
  const std::optional<Span> overlay_span =
      style.overlay_range ? std::optional(fixed_span(*style.overlay_range)) : std::nullopt;
  Sheet sheet{.rows = {{{.grid = &image, .map = Colormap::grey, .span = image_span, .own_scale = false}}},
              .cell_px = style.pixel_px, .separators = false, .gap_px = style.gap_px,
              .bar_map = scaled.empty() ? Colormap::grey : style.overlay_map,
              .bar_span = scaled.empty() ? std::optional(image_span) : overlay_span};
  for (const Grid& overlay : scaled)
    sheet.rows[0].push_back({.grid = &overlay, .map = style.overlay_map,
                             .span = overlay_span ? *overlay_span : span_of(overlay, style.overlay_from_zero),
                             .own_scale = !overlay_span});
  return render_sheet(where, sheet, style.labels);
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
