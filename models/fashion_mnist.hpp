#pragma once
// Fashion-MNIST (Xiao et al., 2017) in its distributed form: gzip-compressed IDX files. Every byte is
// validated before use; errors name the file and the problem.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/tensor.hpp"

namespace ellipse {

// Where Debian's `dataset-fashion-mnist` package puts the four files.
inline constexpr std::string_view kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::int64_t kFashionMnistClasses = 10;
inline constexpr std::int64_t kFashionMnistSide = 28;  // images are kFashionMnistSide x kFashionMnistSide
// The class names in label order.
const std::vector<std::string>& fashion_mnist_class_names();

// Decompresses a gzip member (one or several concatenated). Refuses data that is not gzip, is truncated
// or corrupt, or would decompress to more than max_bytes.
std::string gunzip(std::string_view compressed, const std::string& name, std::uint64_t max_bytes);

// IDX payloads after decompression: images (magic 0x00000803, [count, rows, cols] unsigned bytes) and
// labels (magic 0x00000801, [count] unsigned bytes, each < classes).
struct IdxImages {
  std::int64_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  // count * rows * cols, row-major
};
IdxImages parse_idx_images(std::string_view bytes, const std::string& name);
std::vector<std::int64_t> parse_idx_labels(std::string_view bytes, const std::string& name, std::int64_t classes);

struct LabeledImages {
  Tensor images;  // [n, 28, 28] f32, pixels scaled to [0, 1]
  Tensor labels;  // [n] i64 in [0, 10)
  std::int64_t size() const { return labels.defined() ? labels.shape()[0] : 0; }
};
// split: "train" (60,000 images) or "test" (10,000). dir holds {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
LabeledImages load_fashion_mnist(const std::string& dir, std::string_view split);

}  // namespace ellipse
