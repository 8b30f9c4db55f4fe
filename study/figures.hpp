#pragma once
// Figures for the study tools: heatmaps (one map, a grid of panels, an image beside its overlays) as PNG,
// and line charts as SVG. Rendering and encoding are separate steps, so that tests can check the pixels
// of a rendered Image without decoding a PNG. Every failure is an ellipse::Error that names the function,
// the output file and the problem; every file is replaced atomically (io::write_file_atomic).
// The option structs are meant for designated initializers ({.cell_px = 4}); members without a default of
// their own get `{}` so that GCC's -Wmissing-field-initializers stays quiet when callers leave them out.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "../core/tensor.hpp"

namespace ellipse::figures {

// A rows x cols matrix of values in row-major order. Valid when rows and cols are positive and values
// holds rows * cols of them; non-finite values are allowed (they are drawn in kNonFiniteColour).
struct Grid {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<float> values{};

  float at(std::int64_t row, std::int64_t col) const {  // unchecked
    return values[static_cast<std::size_t>(row * cols + col)];
  }
};

// A 2-D tensor of any dtype, device and strides, as a Grid (values converted to float).
Grid to_grid(const Tensor& t);

struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

inline constexpr Rgb kNonFiniteColour{255, 0, 255};  // magenta: neither colour map uses it
inline constexpr Rgb kBackground{255, 255, 255};     // gaps between panels, cell separators

enum class Colormap {
  viridis,  // dark purple -> blue -> teal -> green -> yellow, lightness rising steadily: for attention maps
  grey,     // black -> white: for images
};

// The viridis-like map at t in [0, 1] (clamped); kNonFiniteColour for a non-finite t.
Rgb colormap(float t);
// The map `map` at t in [0, 1] (clamped); kNonFiniteColour for a non-finite t.
Rgb colour_of(Colormap map, float t);

// A closed value interval; valid when both ends are finite and lo < hi.
struct Range {
  double lo = 0;
  double hi = 1;
};

// The words that make a heatmap figure read on its own. With all of them empty a heatmap is drawn bare, its
// cells and gaps only (as tests and image tools want it). Any text frames it: the title above (wrapped to the
// figure's width; '\n' starts a new line), the panels with their labels, the x label below (wrapped too), the
// y label left of the panels reading upwards, and at the right a colour bar running from the bottom of the
// map (the range's lo) to its top (hi), with its values printed beside it. Panels on a colour scale of their
// own print that scale (e.g. "max 0.43") above them, and the colour bar then reads from "0" (or "min") to
// "max". Gaps between panels widen to fit their labels, and the figure grows to fit its text: nothing is cut
// off. Text is drawn in ASCII: any other UTF-8 character is drawn as '?', control characters as well.
struct Labels {
  std::string title{};
  std::string x_label{};
  std::string y_label{};
  std::vector<std::string> row_labels{};     // empty, or one per panel row (a single heatmap is one panel)
  std::vector<std::string> column_labels{};  // empty, or one per panel column, above it
  std::string colour_label{};                // what the colour bar measures, beside it reading upwards
};

struct HeatmapStyle {
  Colormap map = Colormap::viridis;
  int cell_px = 8;               // each cell is a cell_px x cell_px square
  bool separators = false;       // a 1-px kBackground line between neighbouring cells
  std::optional<Range> range{};  // values mapped to the ends of the map; unset: min..max of the finite values
  bool shared_range = false;     // panel grids without `range`: one min..max over all panels, not one per panel
  bool from_zero = false;        // automatic ranges reach down (or up) to 0: the dark end means zero weight
  Labels labels{};
};

// RGB pixels, row-major, 3 bytes a pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb{};

  Rgb at(int x, int y) const;
};

// One heatmap. Under an automatic range, a grid whose finite values are all equal is drawn in the middle
// colour of the map.
Image render_heatmap(const Grid& grid, const HeatmapStyle& style);
// panels[r][c] at row r, column c, with gap_px of kBackground between panels. All rows hold the same
// number of panels and all panels have the same shape.
Image render_panel_grid(const std::vector<std::vector<Grid>>& panels, const HeatmapStyle& style, int gap_px);

struct SideBySideStyle {
  int pixel_px = 4;                      // screen pixels per image pixel
  int gap_px = 4;                        // kBackground between the image and each overlay
  std::optional<Range> image_range{};    // grey levels; unset: min..max of the image's finite values
  Colormap overlay_map = Colormap::viridis;
  std::optional<Range> overlay_range{};  // unset: each overlay its own min..max
  bool overlay_from_zero = false;        // automatic overlay ranges reach down (or up) to 0
  Labels labels{};                       // the image and the overlays are the panels of one row
};

// The image in grey, then each overlay as a heatmap scaled up (nearest neighbour) to the image's size,
// in one row: e.g. a 28x28 image and the class token's 7x7 attention over its patches, scaled by 4. Each
// overlay's rows and columns must divide the image's (the two factors may differ). A framed figure's colour
// bar is the overlays' (the image's when there are none).
Image render_side_by_side(const Grid& image, const std::vector<Grid>& overlays, const SideBySideStyle& style);

std::string encode_png(const Image& image);  // the bytes of an 8-bit RGB PNG
void write_png(const std::string& path, const Image& image);

void write_heatmap_png(const std::string& path, const Grid& grid, const HeatmapStyle& style = {});
void write_heatmap_png(const std::string& path, const Tensor& t, const HeatmapStyle& style = {});
void write_panel_grid_png(const std::string& path, const std::vector<std::vector<Grid>>& panels,
                          const HeatmapStyle& style = {}, int gap_px = 4);
// maps: [rows, cols, h, w], e.g. [layer, head, query, key] attention weights.
void write_panel_grid_png(const std::string& path, const Tensor& maps, const HeatmapStyle& style = {},
                          int gap_px = 4);
void write_side_by_side_png(const std::string& path, const Grid& image, const std::vector<Grid>& overlays,
                            const SideBySideStyle& style = {});
void write_side_by_side_png(const std::string& path, const Tensor& image, const std::vector<Tensor>& overlays,
                            const SideBySideStyle& style = {});

// One line of a chart. Non-finite ys are gaps: no marker, and the line breaks there.
struct Series {
  std::string name{};            // shown in the legend; empty: left out of it
  std::vector<double> xs{};      // numeric charts: one finite x per y; categorical charts: empty
  std::vector<double> ys{};
  std::vector<double> spread{};  // empty, or one finite half-width >= 0 per y: an error bar from y - s to y + s
};

struct LineChart {
  std::string title{}, x_label{}, y_label{};
  std::vector<std::string> categories{};  // non-empty: categorical x, one y per category in every series
  std::vector<Series> series{};           // colours and marker shapes follow the order of the series
  std::optional<Range> y_range{};         // unset: nice bounds around every y and error bar
  int width = 640;
  int height = 400;
};

// "Nice" tick positions (steps of 1, 2, 2.5 or 5 times a power of ten) from the first multiple of the
// step at or below lo to the first at or above hi, about `target` intervals in all. lo < hi, finite.
std::vector<double> nice_ticks(double lo, double hi, int target);

// A standalone SVG document (width, height, viewBox) with every text XML-escaped: axes with nice ticks and
// grid lines, one line, markers and error bars per series, and a legend of the named series right of the
// plot, or below it when it would take more than a third of the width. Label sizes are estimated (SVG has
// no font metrics), and a chart too small for its labels is an error rather than a clipped figure.
std::string render_line_chart_svg(const LineChart& chart);
void write_line_chart_svg(const std::string& path, const LineChart& chart);

}  // namespace ellipse::figures
