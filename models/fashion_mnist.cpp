#include "models/fashion_mnist.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "core/io/file.hpp"

namespace ellipse {

namespace {

constexpr std::uint32_t kImagesMagic = 0x00000803, kLabelsMagic = 0x00000801;
constexpr std::int64_t kSide = 28;
// The largest file of the set decompresses to 47 MB; anything far larger is not Fashion-MNIST.
constexpr std::uint64_t kMaxCompressed = std::uint64_t{256} << 20, kMaxDecompressed = std::uint64_t{512} << 20;

std::uint32_t read_be32(std::string_view bytes, std::size_t offset) {
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < 4; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return value;
}

// Checks the magic and the header's length; returns the dimensions.
std::vector<std::int64_t> idx_dims(std::string_view bytes, const std::string& name, std::uint32_t magic,
                                   const char* kind) {
  const std::size_t dims = magic & 0xFF;
  ELLIPSE_CHECK(bytes.size() >= 4, "{}: {} bytes are too short for an IDX header", name, bytes.size());
  const std::uint32_t found = read_be32(bytes, 0);
  ELLIPSE_CHECK(found == magic, "{}: bad magic 0x{:08x}; expected 0x{:08x} (IDX {} of unsigned bytes)", name, found,
                magic, kind);
  ELLIPSE_CHECK(bytes.size() >= 4 + 4 * dims, "{}: truncated IDX header ({} bytes, {} needed)", name, bytes.size(),
                4 + 4 * dims);
  std::vector<std::int64_t> shape(dims);
  for (std::size_t i = 0; i < dims; ++i) shape[i] = read_be32(bytes, 4 + 4 * i);
  return shape;
}

}  // namespace

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::string gunzip(std::string_view compressed, const std::string& name, std::uint64_t max_bytes) {
  ELLIPSE_CHECK(compressed.size() >= 2 && static_cast<unsigned char>(compressed[0]) == 0x1f &&
                    static_cast<unsigned char>(compressed[1]) == 0x8b,
                "{}: not gzip data (the file must start with bytes 1f 8b)", name);
  z_stream stream{};
  ELLIPSE_CHECK(inflateInit2(&stream, 16 + MAX_WBITS) == Z_OK, "{}: zlib could not start", name);
  std::string out;
  std::size_t consumed = 0;
  int status = Z_OK;
  char buffer[1 << 16];
  // One member at a time: after Z_STREAM_END, more input means a concatenated member (gzip allows it).
  while (true) {
    const std::size_t chunk = std::min<std::size_t>(compressed.size() - consumed, 1u << 30);
    stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data() + consumed));
    stream.avail_in = static_cast<uInt>(chunk);
    do {
      stream.next_out = reinterpret_cast<Bytef*>(buffer);
      stream.avail_out = sizeof buffer;
      status = inflate(&stream, Z_NO_FLUSH);
      if (status != Z_OK && status != Z_STREAM_END) {
        const std::string why = status == Z_BUF_ERROR ? "truncated" : (stream.msg ? stream.msg : "corrupt");
        inflateEnd(&stream);
        fail("{}: gzip data is {} (after {} decompressed bytes)", name, why, out.size());
      }
      out.append(buffer, sizeof buffer - stream.avail_out);
      if (out.size() > max_bytes) {
        inflateEnd(&stream);
        fail("{}: decompresses to more than {} bytes; refusing", name, max_bytes);
      }
    } while (status != Z_STREAM_END && stream.avail_in > 0);
    consumed += chunk - stream.avail_in;
    if (status == Z_STREAM_END) {
      if (consumed == compressed.size()) break;
      inflateReset(&stream);
    } else if (consumed == compressed.size()) {
      inflateEnd(&stream);
      fail("{}: gzip data is truncated (after {} decompressed bytes)", name, out.size());
    }
  }
  inflateEnd(&stream);
  return out;
}

IdxImages parse_idx_images(std::string_view bytes, const std::string& name) {
  const auto dims = idx_dims(bytes, name, kImagesMagic, "images");
  IdxImages images{.count = dims[0], .rows = dims[1], .cols = dims[2], .pixels = {}};
  ELLIPSE_CHECK(images.rows == kSide && images.cols == kSide, "{}: images are {}x{}; expected {}x{}", name,
                images.rows, images.cols, kSide, kSide);
  ELLIPSE_CHECK(images.count > 0, "{}: the file holds no images", name);
  // count < 2^32 and rows*cols = 784, so the product cannot overflow.
  const std::uint64_t expected = static_cast<std::uint64_t>(images.count) * kSide * kSide;
  const std::uint64_t found = bytes.size() - 16;
  ELLIPSE_CHECK(found == expected, "{}: the header promises {} images ({} bytes) but {} bytes follow; the file is {}",
                name, images.count, expected, found, found < expected ? "truncated" : "too long");
  images.pixels.assign(bytes.begin() + 16, bytes.end());
  return images;
}

std::vector<std::int64_t> parse_idx_labels(std::string_view bytes, const std::string& name, std::int64_t classes) {
  const auto dims = idx_dims(bytes, name, kLabelsMagic, "labels");
  const std::uint64_t found = bytes.size() - 8;
  ELLIPSE_CHECK(dims[0] > 0, "{}: the file holds no labels", name);
  ELLIPSE_CHECK(found == static_cast<std::uint64_t>(dims[0]), "{}: the header promises {} labels but {} bytes "
                "follow; the file is {}", name, dims[0], found, found < static_cast<std::uint64_t>(dims[0]) ?
                "truncated" : "too long");
  std::vector<std::int64_t> labels(found);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    labels[i] = static_cast<unsigned char>(bytes[8 + i]);
    ELLIPSE_CHECK(labels[i] < classes, "{}: label {} of item {} is out of range; expected 0 to {}", name, labels[i], i,
                  classes - 1);
  }
  return labels;
}

LabeledImages load_fashion_mnist(const std::string& dir, std::string_view split) {
  ELLIPSE_CHECK(split == "train" || split == "test", "fashion-mnist: unknown split '{}'; expected train or test",
                split);
  const std::string prefix = split == "train" ? "train" : "t10k";
  const std::string images_path = dir + "/" + prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
  for (const auto& path : {images_path, labels_path}) {
    ELLIPSE_CHECK(std::filesystem::exists(path), "{}: no such file. Fashion-MNIST comes from Debian's package "
                  "dataset-fashion-mnist (apt-get install dataset-fashion-mnist, which tools/bootstrap.sh runs), "
                  "or give the directory that holds the files", path);
  }
  const IdxImages images =
      parse_idx_images(gunzip(io::read_file(images_path, kMaxCompressed), images_path, kMaxDecompressed), images_path);
  const std::vector<std::int64_t> labels = parse_idx_labels(
      gunzip(io::read_file(labels_path, kMaxCompressed), labels_path, kMaxDecompressed), labels_path,
      kFashionMnistClasses);
  ELLIPSE_CHECK(static_cast<std::int64_t>(labels.size()) == images.count, "{} holds {} images but {} holds {} labels",
                images_path, images.count, labels_path, labels.size());

  std::vector<float> pixels(images.pixels.size());
  std::transform(images.pixels.begin(), images.pixels.end(), pixels.begin(),
                 [](std::uint8_t p) { return static_cast<float>(p) / 255.0f; });
  return {.images = from_vector(pixels, {images.count, kSide, kSide}),
          .labels = from_vector(labels, {images.count})};
}

}  // namespace ellipse
