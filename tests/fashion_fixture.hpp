#pragma once
// Tiny synthetic Fashion-MNIST files for tests: gzip-compressed IDX images and labels written with zlib
// (the test program links ZLIB::ZLIB), so that nothing depends on the real data set.
#include <doctest/doctest.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/io/file.hpp"
#include "core/random.hpp"

namespace ellipse::testing {

using Bytes = std::string;

inline Bytes read_bytes(const std::string& path) { return io::read_file(path, std::uint64_t{1} << 30); }

inline void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  REQUIRE(out.good());
}

// One gzip member of `data` (deflate with a gzip header and trailer).
inline Bytes gzip(const Bytes& data, int level = 6) {
  z_stream stream{};
  REQUIRE(deflateInit2(&stream, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&stream, static_cast<uLong>(data.size())) + 32, '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&stream, Z_FINISH) == Z_STREAM_END);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

inline void put_be32(Bytes& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((value >> shift) & 0xFF));
}

// IDX payloads with an explicit header, so that tests can make the header lie.
inline Bytes idx_images(std::uint32_t count, std::uint32_t rows, std::uint32_t cols,
                        const std::vector<std::uint8_t>& pixels, std::uint32_t magic = 0x00000803) {
  Bytes out;
  put_be32(out, magic);
  put_be32(out, count);
  put_be32(out, rows);
  put_be32(out, cols);
  out.append(pixels.begin(), pixels.end());
  return out;
}

inline Bytes idx_labels(std::uint32_t count, const std::vector<std::uint8_t>& labels,
                        std::uint32_t magic = 0x00000801) {
  Bytes out;
  put_be32(out, magic);
  put_be32(out, count);
  out.append(labels.begin(), labels.end());
  return out;
}

struct Synthetic {
  std::vector<std::uint8_t> pixels, labels;
};

// `count` 28x28 images of 4 classes told apart by texture: 0 horizontal stripes, 1 vertical stripes, 2 a
// checkerboard of 2x2 cells, 3 a bright centre square, each with noise. Single patches separate the
// classes, so a few optimizer steps learn them; flips and small shifts keep every class.
inline Synthetic synthetic(std::int64_t count, std::uint64_t seed) {
  Generator gen(seed);
  Synthetic data;
  for (std::int64_t i = 0; i < count; ++i) {
    const auto label = static_cast<std::uint8_t>(gen.integer(4));
    data.labels.push_back(label);
    for (int y = 0; y < 28; ++y) {
      for (int x = 0; x < 28; ++x) {
        bool on = false;
        switch (label) {
          case 0: on = y % 2 == 0; break;
          case 1: on = x % 2 == 0; break;
          case 2: on = (y / 2 + x / 2) % 2 == 0; break;
          default: on = y >= 8 && y < 20 && x >= 8 && x < 20; break;
        }
        data.pixels.push_back(static_cast<std::uint8_t>((on ? 190 : 20) + gen.integer(60)));
      }
    }
  }
  return data;
}

// Writes the four standard files (256 train and 64 test images unless told otherwise) into `dir`.
inline void write_dataset(const std::string& dir, std::int64_t train = 256, std::int64_t test = 64) {
  std::filesystem::create_directories(dir);
  for (const auto& [prefix, count, seed] : {std::tuple{"train", train, 1}, std::tuple{"t10k", test, 2}}) {
    const Synthetic data = synthetic(count, static_cast<std::uint64_t>(seed));
    const auto n = static_cast<std::uint32_t>(count);
    write_bytes(dir + "/" + prefix + "-images-idx3-ubyte.gz", gzip(idx_images(n, 28, 28, data.pixels)));
    write_bytes(dir + "/" + prefix + "-labels-idx1-ubyte.gz", gzip(idx_labels(n, data.labels)));
  }
}

}  // namespace ellipse::testing
