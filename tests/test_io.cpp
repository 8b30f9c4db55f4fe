// File I/O: atomic writes, safetensors and npy round trips, golden bytes, and hostile inputs.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/npy.hpp"
#include "core/io/safetensors.hpp"
#include "core/tensor.hpp"
#include "helpers.hpp"

using namespace ellipse;
namespace fs = std::filesystem;
using testing::TempDir;

namespace {

std::string le_u64(std::uint64_t value) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return out;
}

// Concatenation without operator+ on literals (which trips a GCC 12 -Wrestrict false positive).
std::string cat(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (auto part : parts) out += part;
  return out;
}

std::string bytes_of(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

template <class T>
std::string raw(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// A safetensors file from a header text (unpadded) and a data buffer.
std::string safetensors_bytes(const std::string& header, const std::string& data = "") {
  return le_u64(header.size()) + header + data;
}

// An npy file from a version, a header text (used verbatim) and data.
std::string npy_bytes(const std::string& header, const std::string& data = "", int major = 1) {
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const int width = major == 1 ? 2 : 4;
  for (int i = 0; i < width; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

// Exact equality of shape, dtype and every value (NaN-free inputs).
void check_same(const Tensor& got, const Tensor& want) {
  REQUIRE(got.defined());
  CHECK(got.device() == Device::cpu());
  CHECK(got.dtype() == want.dtype());
  CHECK(got.shape() == want.shape());
  if (want.dtype() == DType::i64) {
    CHECK(got.to_vector<std::int64_t>() == want.to_vector<std::int64_t>());
  } else {
    CHECK(got.to_vector<double>() == want.to_vector<double>());
  }
}

// The cases every round trip covers: each dtype, non-contiguous and offset views, 0-dim and zero-size.
std::vector<std::pair<std::string, Tensor>> sample_tensors() {
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back("f32", from_vector<float>({1.5f, -2.25f, 3e-8f, 4e30f, 0.0f, -0.0f}, {2, 3}));
  out.emplace_back("f64", from_vector<double>({1.0 / 3.0, -1e300, 2.5}, {3, 1}));
  out.emplace_back("i64", from_vector<std::int64_t>({INT64_MIN, -1, 0, 1, INT64_MAX, 42}, {3, 2}));
  out.emplace_back("transposed", arange(0, 12, 1, DType::f32).reshape({3, 4}).transpose(0, 1));
  out.emplace_back("sliced", arange(0, 20, 1, DType::i64).reshape({4, 5}).slice(1, 1, 5, 2).narrow(0, 1, 2));
  out.emplace_back("expanded", from_vector<double>({7, 8}, {2, 1}).expand({2, 3}));
  out.emplace_back("scalar", scalar(-6.5, DType::f64));
  out.emplace_back("scalar_i64", scalar(9, DType::i64));
  out.emplace_back("empty_rows", zeros({0, 3}, DType::f32));
  out.emplace_back("empty_cols", zeros({2, 0}, DType::i64));
  return out;
}

// Must throw ellipse::Error (any other exception or a crash fails the test).
template <class F>
void check_rejects(const std::string& label, F&& parse) {
  CAPTURE(label);
  CHECK_THROWS_AS(parse(), Error);
}

// Either parses or throws ellipse::Error; returns whether it threw.
template <class F>
bool parses_or_rejects(F&& parse) {
  try {
    parse();
    return false;
  } catch (const Error&) {
    return true;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// file.hpp

TEST_CASE("read_file and write_file_atomic") {
  TempDir dir;
  const std::string path = dir / "data.bin";
  std::string payload = "hello";
  payload.push_back('\0');
  payload += "\xff world";
  io::write_file_atomic(path, payload);
  CHECK(io::read_file(path, 1000) == payload);
  CHECK(io::read_file(path, payload.size()) == payload);

  io::write_file_atomic(path, "");  // replacing with nothing is fine
  CHECK(io::read_file(path, 0).empty());
  CHECK(dir.names() == std::vector<std::string>{"data.bin"});

  // Files whose size fstat does not know (procfs reports 0) are still read to the end, and the limit holds.
  if (fs::exists("/proc/self/status")) {
    CHECK(io::read_file("/proc/self/status", UINT64_MAX).find("Name:") != std::string::npos);
    CHECK_THROWS_AS(io::read_file("/proc/self/status", 10), Error);
  }

  // A file written by someone else keeps its permission bits when replaced.
  REQUIRE(::chmod(path.c_str(), 0600) == 0);
  io::write_file_atomic(path, "x");
  struct stat info {};
  REQUIRE(::stat(path.c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0600);
}

TEST_CASE("read_file errors name the file") {
  TempDir dir;
  const std::string missing = dir / "missing.bin";
  const std::string no_file = testing::error_message([&] { io::read_file(missing, 10); });
  CHECK(no_file.find(missing) != std::string::npos);
  CHECK(no_file.find("No such file") != std::string::npos);

  const std::string big = dir / "big.bin";
  io::write_file_atomic(big, std::string(100, 'x'));
  const std::string too_big = testing::error_message([&] { io::read_file(big, 99); });
  CHECK(too_big.find(big) != std::string::npos);
  CHECK(too_big.find("99") != std::string::npos);

  const std::string not_regular = testing::error_message([&] { io::read_file(dir.str(), 10); });
  CHECK(not_regular.find(dir.str()) != std::string::npos);
}

TEST_CASE("write_file_atomic failures leave no temp file and no change") {
  TempDir dir;
  // The target is a non-empty directory: the rename fails after the temp file was written.
  const std::string blocked = dir / "blocked";
  fs::create_directories(blocked + "/inside");
  try {
    io::write_file_atomic(blocked, "data");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(blocked) != std::string::npos);
    CHECK(std::string(e.what()).find("rename") != std::string::npos);
  }
  CHECK(dir.names() == std::vector<std::string>{"blocked"});
  CHECK(fs::is_directory(blocked + "/inside"));

  // The directory does not exist: the temp file cannot even be created.
  const std::string nowhere = dir / "no/such/dir/file.bin";
  try {
    io::write_file_atomic(nowhere, "data");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(nowhere) != std::string::npos);
    CHECK(std::string(e.what()).find("No such file") != std::string::npos);
  }
  CHECK(dir.names() == std::vector<std::string>{"blocked"});
}

TEST_CASE("a failed save leaves the existing file byte-identical") {
  TempDir dir;
  const std::string st_path = dir / "model.safetensors";
  const std::string npy_path = dir / "array.npy";
  io::save_safetensors(st_path, sample_tensors(), {{"step", "1"}});
  io::save_npy(npy_path, from_vector<float>({1, 2, 3}, {3}));
  const std::string st_before = io::read_file(st_path, 1 << 20);
  const std::string npy_before = io::read_file(npy_path, 1 << 20);

  const Tensor t = ones({2});
  CHECK_THROWS_AS(io::save_safetensors(st_path, {{"a", t}, {"b", t}, {"a", t}}), Error);
  CHECK_THROWS_AS(io::save_safetensors(st_path, {{"", t}}), Error);
  CHECK_THROWS_AS(io::save_safetensors(st_path, {{"__metadata__", t}}), Error);
  CHECK_THROWS_AS(io::save_safetensors(st_path, {{"a", Tensor()}}), Error);
  CHECK_THROWS_AS(io::save_safetensors(st_path, {{"bad\xff utf8", t}}), Error);
  CHECK_THROWS_AS(io::save_npy(npy_path, Tensor()), Error);
  const Tensor rank65 = ones(Shape(65, 1));
  CHECK_THROWS_AS(io::save_safetensors(st_path, {{"deep", rank65}}), Error);
  CHECK_THROWS_AS(io::save_npy(npy_path, rank65), Error);
  try {
    io::save_safetensors(st_path, {{"a", t}, {"a", t}});
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(st_path) != std::string::npos);
    CHECK(std::string(e.what()).find("\"a\"") != std::string::npos);
  }

  CHECK(io::read_file(st_path, 1 << 20) == st_before);
  CHECK(io::read_file(npy_path, 1 << 20) == npy_before);
  CHECK(dir.names() == std::vector<std::string>{"array.npy", "model.safetensors"});
}

// ---------------------------------------------------------------------------------------------------------
// safetensors

TEST_CASE("safetensors round trip of every dtype and layout, with metadata") {
  TempDir dir;
  const auto tensors = sample_tensors();
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "ünïcode \"quoted\"\n"}, {"", ""}};
  const std::string path = dir / "all.safetensors";
  io::save_safetensors(path, tensors, metadata);

  const io::SafetensorsFile loaded = io::load_safetensors(path);
  CHECK(loaded.metadata == metadata);
  REQUIRE(loaded.tensors.size() == tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    CAPTURE(tensors[i].first);
    CHECK(loaded.tensors[i].first == tensors[i].first);  // written in order, so offsets keep that order
    check_same(loaded.tensors[i].second, tensors[i].second);
    CHECK(loaded.tensors[i].second.is_contiguous());
  }

  // Serialising twice gives identical bytes; the data buffer starts 8-byte aligned.
  const std::string bytes = io::to_safetensors(tensors, metadata);
  CHECK(bytes == io::read_file(path, 1 << 20));
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  CHECK(header_size % 8 == 0);

  // No tensors, no metadata: the smallest valid file.
  const io::SafetensorsFile nothing = io::from_safetensors(io::to_safetensors({}), "nothing");
  CHECK(nothing.tensors.empty());
  CHECK(nothing.metadata.empty());
  CHECK(io::to_safetensors({}) == le_u64(8) + "{}      ");
}

TEST_CASE("safetensors golden bytes") {
  const Tensor w = from_vector<float>({1.0f, -2.0f}, {2});
  const Tensor n = scalar(5, DType::i64);
  // 138 bytes of JSON, padded with 6 spaces to 144 = 0x90.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("n":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})"
      "      ";
  REQUIRE(header.size() == 144);
  const std::string expected = bytes_of({0x90, 0, 0, 0, 0, 0, 0, 0}) + header +
                               bytes_of({0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0}) +  // 1.0f, -2.0f
                               bytes_of({0x05, 0, 0, 0, 0, 0, 0, 0});                        // 5 as i64
  CHECK(io::to_safetensors({{"w", w}, {"n", n}}, {{"format", "pt"}}) == expected);

  const io::SafetensorsFile parsed = io::from_safetensors(expected, "golden");
  REQUIRE(parsed.tensors.size() == 2);
  CHECK(parsed.tensors[0].first == "w");
  CHECK(parsed.tensors[1].first == "n");
  check_same(parsed.tensors[0].second, w);
  check_same(parsed.tensors[1].second, n);
  CHECK(parsed.metadata == std::map<std::string, std::string>{{"format", "pt"}});
}

TEST_CASE("safetensors reading: I32, offset order, padding, null metadata") {
  // Header order differs from data order; the result follows the data offsets. I32 widens to i64.
  const std::string header =
      R"({"late":{"dtype":"F64","shape":[1],"data_offsets":[12,20]},)"
      R"("early":{"dtype":"I32","shape":[3],"data_offsets":[0,12]},)"
      R"("none":{"dtype":"F32","shape":[0,5],"data_offsets":[20,20]},)"
      R"("__metadata__":null} )"
      "\n\t ";
  const std::string data = raw<std::int32_t>({-7, 0, 2147483647}) + raw<double>({0.125});
  const io::SafetensorsFile parsed = io::from_safetensors(safetensors_bytes(header, data), "mixed");
  REQUIRE(parsed.tensors.size() == 3);
  CHECK(parsed.tensors[0].first == "early");
  check_same(parsed.tensors[0].second, from_vector<std::int64_t>({-7, 0, 2147483647}, {3}));
  CHECK(parsed.tensors[1].first == "late");
  check_same(parsed.tensors[1].second, from_vector<double>({0.125}, {1}));
  CHECK(parsed.tensors[2].first == "none");
  CHECK(parsed.tensors[2].second.shape() == Shape{0, 5});
  CHECK(parsed.metadata.empty());
}

TEST_CASE("safetensors writing I32: golden bytes, round trip, range check, floats untouched") {
  const Tensor ids = from_vector<std::int64_t>({-2147483648LL, -1, 0, 7, 2147483647LL}, {5});
  const Tensor w = from_vector<float>({1.0f}, {1});
  // 112 bytes of JSON = 0x70, already a multiple of 8: no padding.
  const std::string header = R"({"ids":{"dtype":"I32","shape":[5],"data_offsets":[0,20]},)"
                             R"("w":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}})";
  REQUIRE(header.size() == 112);
  const std::string expected = bytes_of({0x70, 0, 0, 0, 0, 0, 0, 0}) + header +
                               raw<std::int32_t>({-2147483647 - 1, -1, 0, 7, 2147483647}) + raw<float>({1.0f});
  CHECK(io::to_safetensors({{"ids", ids}, {"w", w}}, {}, io::IntegerFormat::i32) == expected);

  // Strided i64 input (every other element) and a file on disk: read back as the same i64 values.
  TempDir dir;
  const Tensor strided = narrow(reshape(arange(0, 12, 1, DType::i64), {6, 2}), 1, 0, 1);
  io::save_safetensors(dir / "ids.safetensors", {{"ids", ids}, {"strided", strided}}, {{"k", "v"}},
                       io::IntegerFormat::i32);
  const io::SafetensorsFile loaded = io::load_safetensors(dir / "ids.safetensors");
  REQUIRE(loaded.tensors.size() == 2);
  check_same(loaded.tensors[0].second, ids);
  check_same(loaded.tensors[1].second, strided.contiguous());
  CHECK(loaded.metadata.at("k") == "v");

  // A value beyond 32 bits names the tensor and the value, and leaves an existing file as it was.
  const std::string before = io::read_file(dir / "ids.safetensors", 1 << 20);
  const Tensor big = from_vector<std::int64_t>({1, 2147483648LL}, {2});
  CHECK_ERROR(io::to_safetensors({{"big", big}}, {}, io::IntegerFormat::i32), "to_safetensors", "\"big\"",
              "2147483648", "flat index 1", "I32");
  CHECK_ERROR(io::save_safetensors(dir / "ids.safetensors", {{"big", big}}, {}, io::IntegerFormat::i32),
              "ids.safetensors", "2147483648");
  CHECK(io::read_file(dir / "ids.safetensors", 1 << 20) == before);
  // The default stays I64, which holds it.
  check_same(io::from_safetensors(io::to_safetensors({{"big", big}}), "big").tensors[0].second, big);
}

TEST_CASE("safetensors reading: F16 and BF16 widen to f32 exactly") {
  const std::string header = R"({"h":{"dtype":"F16","shape":[7],"data_offsets":[0,14]},)"
                             R"("b":{"dtype":"BF16","shape":[2,2],"data_offsets":[14,22]}})";
  // F16: 1, -2, 65504 (the largest), 2^-24 (the smallest subnormal), 2^-14 (the smallest normal), -0, inf.
  // BF16: 1, -3.5, 2^-133 (a subnormal), 3.3895e38 (the largest).
  const std::string data = raw<std::uint16_t>({0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x8000, 0x7c00}) +
                           raw<std::uint16_t>({0x3f80, 0xc060, 0x0001, 0x7f7f});
  const io::SafetensorsFile parsed = io::from_safetensors(safetensors_bytes(header, data), "half");
  REQUIRE(parsed.tensors.size() == 2);
  const float inf = std::numeric_limits<float>::infinity();
  check_same(parsed.tensors[0].second,
             from_vector<float>({1.0f, -2.0f, 65504.0f, 0x1p-24f, 0x1p-14f, -0.0f, inf}, {7}));
  CHECK(std::signbit(parsed.tensors[0].second.to_vector<float>()[5]));
  check_same(parsed.tensors[1].second, from_vector<float>({1.0f, -3.5f, 0x1p-133f, 0x1.fep127f}, {2, 2}));
  // A NaN stays a NaN.
  const io::SafetensorsFile nan = io::from_safetensors(
      safetensors_bytes(R"({"n":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", raw<std::uint16_t>({0x7e00})),
      "nan");
  CHECK(std::isnan(nan.tensors[0].second.item()));
}

TEST_CASE("safetensors rejects corrupt headers") {
  const std::string f32x2 = raw<float>({1, 2});
  auto entry = [](std::string_view name, std::string_view body) { return cat({"\"", name, "\":", body}); };
  const std::string ok = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::string ones65;
  for (int i = 0; i < 64; ++i) ones65 += "1,";
  struct Case {
    std::string label;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"empty file", ""},
      {"3 bytes", "abc"},
      {"7 bytes", std::string(7, '\0')},
      {"header length past the end", le_u64(100) + "{}"},
      {"header length 2^64-1", le_u64(UINT64_MAX) + "{}"},
      {"header length over 100 MB", le_u64(100'000'001) + std::string(100'000'001, ' ')},
      {"empty header", safetensors_bytes("")},
      {"spaces only", safetensors_bytes("        ")},
      {"unterminated object", safetensors_bytes("{")},
      {"not JSON", safetensors_bytes("nope")},
      {"trailing text after JSON", safetensors_bytes("{} x")},
      {"two objects", safetensors_bytes("{}{}")},
      {"invalid UTF-8", safetensors_bytes("{\"\xff\xfe\":{}}")},
      {"NUL inside header", safetensors_bytes(std::string("{}\0", 3))},
      {"NUL then garbage", safetensors_bytes(std::string("{}\0garbage", 10))},
      {"array header", safetensors_bytes("[]")},
      {"number header", safetensors_bytes("1")},
      {"string header", safetensors_bytes("\"x\"")},
      {"entry is a number", safetensors_bytes(cat({"{", entry("a", "1"), "}"}))},
      {"entry is an array", safetensors_bytes(cat({"{", entry("a", "[]"), "}"}))},
      {"entry is null", safetensors_bytes(cat({"{", entry("a", "null"), "}"}))},
      {"empty name", safetensors_bytes(cat({"{", entry("", ok), "}"}), f32x2)},
      {"missing dtype", safetensors_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", f32x2)},
      {"missing shape", safetensors_bytes(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", f32x2)},
      {"missing offsets", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", f32x2)},
      {"dtype number", safetensors_bytes(R"({"a":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", f32x2)},
      {"dtype lower case", safetensors_bytes(R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", f32x2)},
      {"BF16 with F32 size", safetensors_bytes(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", f32x2)},
      {"F16 with F32 size", safetensors_bytes(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", f32x2)},
      {"dtype U8", safetensors_bytes(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", f32x2)},
      {"dtype BOOL", safetensors_bytes(R"({"a":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})", f32x2)},
      {"shape string", safetensors_bytes(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", f32x2)},
      {"shape object", safetensors_bytes(R"({"a":{"dtype":"F32","shape":{},"data_offsets":[0,8]}})", f32x2)},
      {"negative dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2)},
      {"negative dims cancel",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-1,-2],"data_offsets":[0,8]}})", f32x2)},
      {"fractional dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", f32x2)},
      {"float dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", f32x2)},
      {"string dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", f32x2)},
      {"null dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[null],"data_offsets":[0,8]}})", f32x2)},
      {"bool dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[true],"data_offsets":[0,8]}})", f32x2)},
      {"huge dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1e30],"data_offsets":[0,8]}})", f32x2)},
      {"dim 2^64-1",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", f32x2)},
      {"dim 2^64",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", f32x2)},
      {"element count overflows",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})")},
      {"dim above the element limit",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2305843009213693952,0],"data_offsets":[0,0]}})")},
      {"product above the element limit",
       safetensors_bytes(R"({"a":{"dtype":"F64","shape":[1073741824,2147483648],"data_offsets":[0,0]}})")},
      {"65 dimensions", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[)" + ones65 + R"(2],"data_offsets":[0,8]}})",
                                          f32x2)},
      {"offsets string", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":"0,8"}})", f32x2)},
      {"offsets one", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", f32x2)},
      {"offsets three", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", f32x2)},
      {"offsets object",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":{"0":0,"1":8}}})", f32x2)},
      {"negative offset", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", f32x2)},
      {"fractional offset",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", f32x2)},
      {"float offset", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8]}})", f32x2)},
      {"offsets reversed", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", f32x2)},
      {"end past the buffer", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234")},
      {"offsets 2^64-1",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],)"
                         R"("data_offsets":[18446744073709551615,18446744073709551615]}})")},
      {"size too small", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "1234")},
      {"size too large", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", f32x2)},
      {"I32 with F32 size", safetensors_bytes(R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,8]}})", f32x2)},
      {"overlap",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         raw<float>({1, 2, 3}))},
      {"same range twice",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                         f32x2)},
      {"empty tensor inside another",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                         f32x2)},
      {"gap between tensors",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                         raw<float>({1, 2, 3}))},
      {"gap at the start", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2)},
      {"trailing garbage", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32x2)},
      {"data without tensors", safetensors_bytes("{}", f32x2)},
      {"metadata string", safetensors_bytes(R"({"__metadata__":"x"})")},
      {"metadata array", safetensors_bytes(R"({"__metadata__":["x"]})")},
      {"metadata number value", safetensors_bytes(R"({"__metadata__":{"k":1}})")},
      {"metadata null value", safetensors_bytes(R"({"__metadata__":{"k":null}})")},
      {"metadata object value", safetensors_bytes(R"({"__metadata__":{"k":{}}})")},
      {"duplicate tensor", safetensors_bytes(cat({"{", entry("a", ok), ",", entry("a", ok), "}"}), f32x2)},
      {"duplicate metadata key", safetensors_bytes(R"({"__metadata__":{"k":"1","k":"2"}})")},
      {"duplicate metadata", safetensors_bytes(R"({"__metadata__":{},"__metadata__":{}})")},
      {"duplicate field", safetensors_bytes(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                            f32x2)},
      {"deep nesting", safetensors_bytes("{\"a\":" + std::string(10000, '[') + std::string(10000, ']') + "}")},
  };
  for (const auto& c : cases) check_rejects(c.label, [&] { return io::from_safetensors(c.bytes, "corrupt"); });

  // Errors name the file and the problem.
  try {
    io::from_safetensors(safetensors_bytes(R"({"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}})", f32x2),
                         "weights.safetensors");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("weights.safetensors") != std::string::npos);
    CHECK(std::string(e.what()).find("U16") != std::string::npos);
  }
}

TEST_CASE("safetensors: every truncation and random byte flips") {
  const std::string valid = io::to_safetensors(
      {{"a", from_vector<float>({1, 2, 3}, {3})}, {"b", from_vector<std::int64_t>({4, 5}, {1, 2})}}, {{"k", "v"}});
  REQUIRE_NOTHROW(io::from_safetensors(valid, "valid"));
  for (std::size_t length = 0; length < valid.size(); ++length) {
    check_rejects(fmt::format("prefix of {} bytes", length),
                  [&] { return io::from_safetensors(std::string_view(valid).substr(0, length), "truncated"); });
  }
  // One extra byte is trailing garbage.
  check_rejects("one byte appended", [&] { return io::from_safetensors(valid + "x", "long"); });

  std::mt19937_64 rng(20240601);
  int rejected = 0;
  const int trials = 4000;
  for (int trial = 0; trial < trials; ++trial) {
    std::string mutated = valid;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      const std::size_t at = rng() % mutated.size();
      mutated[at] = static_cast<char>(mutated[at] ^ static_cast<char>(1 + rng() % 255));
    }
    rejected += parses_or_rejects([&] { io::from_safetensors(mutated, "flipped"); });
  }
  MESSAGE(rejected << " of " << trials << " mutated safetensors files rejected");
  CHECK(rejected > trials / 2);  // most bytes are header, where nearly every change is an error
}

TEST_CASE("load_safetensors names the path") {
  TempDir dir;
  const std::string path = dir / "bad.safetensors";
  io::write_file_atomic(path, "\x01\x02");
  try {
    io::load_safetensors(path);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
  }
  CHECK_THROWS_AS(io::load_safetensors(dir / "missing.safetensors"), Error);
}

// ---------------------------------------------------------------------------------------------------------
// npy

TEST_CASE("npy round trip of every dtype and layout") {
  TempDir dir;
  for (const auto& [name, tensor] : sample_tensors()) {
    CAPTURE(name);
    const std::string path = dir / (name + ".npy");
    io::save_npy(path, tensor);
    const std::string bytes = io::read_file(path, 1 << 20);
    CHECK(bytes == io::to_npy(tensor));
    // The preamble (through the '\n') is a multiple of 64 bytes.
    const auto low = static_cast<unsigned char>(bytes[8]);
    const auto high = static_cast<unsigned char>(bytes[9]);
    const std::size_t preamble = 10 + (low | high << 8);
    CHECK(preamble % 64 == 0);
    CHECK(bytes[preamble - 1] == '\n');
    check_same(io::load_npy(path), tensor);
  }
  CHECK(dir.names().size() == sample_tensors().size());
}

TEST_CASE("npy golden bytes") {
  // {'descr': '<i8', 'fortran_order': False, 'shape': (2,), } is 57 bytes; 10 + 57 + 1 = 68, so 60 spaces pad the
  // preamble to 128 and the header length is 57 + 60 + 1 = 118 = 0x76.
  const std::string expected = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                               "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }" + std::string(60, ' ') +
                               "\n" + bytes_of({0x01, 0, 0, 0, 0, 0, 0, 0}) +
                               bytes_of({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  const Tensor t = from_vector<std::int64_t>({1, -1}, {2});
  CHECK(io::to_npy(t) == expected);
  check_same(io::from_npy(expected, "golden"), t);

  // 0-dim f32 and 2-D f64 headers: shape () and (2, 3).
  const std::string scalar_bytes = io::to_npy(scalar(2.5, DType::f32));
  CHECK(scalar_bytes.substr(10, 55) == "{'descr': '<f4', 'fortran_order': False, 'shape': (), }");
  CHECK(scalar_bytes.size() == 128 + 4);  // 10 + 55 + 1 = 66 bytes round up to 128
  CHECK(scalar_bytes.substr(128) == bytes_of({0x00, 0x00, 0x20, 0x40}));  // 2.5f
  CHECK(io::to_npy(zeros({2, 3}, DType::f64)).substr(10, 59) ==
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }");
}

TEST_CASE("npy reading: version 2.0, '<i4', other spellings") {
  const std::string f32x6 = raw<float>({1, 2, 3, 4, 5, 6});
  const Tensor want = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  check_same(io::from_npy(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", f32x6, 2), "v2"),
             want);
  // Other key order, double quotes, no trailing comma, newlines, Python 2 longs, shape trailing comma.
  check_same(io::from_npy(npy_bytes("{\"shape\": (2L, 3L,),\n 'fortran_order':False,'descr':'<f4'}", f32x6), "odd"),
             want);
  check_same(io::from_npy(npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }\n",
                                    raw<std::int32_t>({-2147483647 - 1, 0, 7})),
                          "i4"),
             from_vector<std::int64_t>({-2147483647 - 1, 0, 7}, {3}));
  const Tensor empty_array =
      io::from_npy(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4), }\n"), "empty");
  CHECK(empty_array.shape() == Shape{0, 4});
  CHECK(empty_array.dtype() == DType::f64);
}

TEST_CASE("npy rejects corrupt files") {
  const std::string f32x2 = raw<float>({1, 2});
  auto header = [](const std::string& descr, const std::string& fortran, const std::string& shape) {
    return "{'descr': " + descr + ", 'fortran_order': " + fortran + ", 'shape': " + shape + ", }\n";
  };
  const std::string good = header("'<f4'", "False", "(2,)");
  REQUIRE_NOTHROW(io::from_npy(npy_bytes(good, f32x2), "good"));
  struct Case {
    std::string label;
    std::string bytes;
  };
  std::string long_shape = "(";
  for (int i = 0; i < 65; ++i) long_shape += "1, ";
  long_shape += ")";
  std::vector<Case> cases = {
      {"empty file", ""},
      {"magic only", "\x93NUMPY"},
      {"wrong magic", "\x93NUMPZ\x01\x00\x00\x00"},
      {"text file", "hello world, not numpy"},
      {"no header length", std::string("\x93NUMPY\x01\x00\x10", 9)},
      {"v2 short header length", std::string("\x93NUMPY\x02\x00\x10\x00\x00", 11)},
      {"version 3.0", npy_bytes(good, f32x2, 3)},
      {"version 1.1", [&] {
         std::string b = npy_bytes(good, f32x2);
         b[7] = 1;
         return b;
       }()},
      {"version 0.0", [&] {
         std::string b = npy_bytes(good, f32x2);
         b[6] = 0;
         return b;
       }()},
      {"header length past the end", std::string("\x93NUMPY\x01\x00\xff\xff{}", 12)},
      {"v2 header length 4 GB", std::string("\x93NUMPY\x02\x00\xff\xff\xff\xff{}", 14)},
      {"v2 header over the limit", npy_bytes(std::string(1'000'001, ' '), "", 2)},
      {"empty header", npy_bytes("")},
      {"not a dict", npy_bytes("['<f4', False, (2,)]\n", f32x2)},
      {"unterminated dict", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", f32x2)},
      {"unterminated string", npy_bytes("{'descr: '<f4'}", f32x2)},
      {"missing colon", npy_bytes("{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", f32x2)},
      {"missing comma", npy_bytes("{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", f32x2)},
      {"text after dict", npy_bytes(good + "x", f32x2)},
      {"NUL in header", npy_bytes(std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\0", 58),
                                  f32x2)},
      {"no descr", npy_bytes("{'fortran_order': False, 'shape': (2,), }", f32x2)},
      {"no fortran_order", npy_bytes("{'descr': '<f4', 'shape': (2,), }", f32x2)},
      {"no shape", npy_bytes("{'descr': '<f4', 'fortran_order': False, }", f32x2)},
      {"extra key", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': True}", f32x2)},
      {"repeated key", npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", f32x2)},
      {"unquoted key", npy_bytes("{descr: '<f4', 'fortran_order': False, 'shape': (2,)}", f32x2)},
      {"escape in string", npy_bytes(header("'<f\\x34'", "False", "(2,)"), f32x2)},
      {"fortran order", npy_bytes(header("'<f4'", "True", "(2,)"), f32x2)},
      {"fortran_order string", npy_bytes(header("'<f4'", "'False'", "(2,)"), f32x2)},
      {"fortran_order 0", npy_bytes(header("'<f4'", "0", "(2,)"), f32x2)},
      {"fortran_order lower case", npy_bytes(header("'<f4'", "false", "(2,)"), f32x2)},
      {"big-endian f4", npy_bytes(header("'>f4'", "False", "(2,)"), f32x2)},
      {"native f4", npy_bytes(header("'=f4'", "False", "(2,)"), f32x2)},
      {"f2", npy_bytes(header("'<f2'", "False", "(4,)"), f32x2)},
      {"u1", npy_bytes(header("'|u1'", "False", "(8,)"), f32x2)},
      {"bool", npy_bytes(header("'|b1'", "False", "(8,)"), f32x2)},
      {"object", npy_bytes(header("'|O'", "False", "(1,)"), f32x2)},
      {"structured descr", npy_bytes(header("[('a', '<f4')]", "False", "(2,)"), f32x2)},
      {"descr not a string", npy_bytes(header("4", "False", "(2,)"), f32x2)},
      {"shape list", npy_bytes(header("'<f4'", "False", "[2]"), f32x2)},
      {"shape integer", npy_bytes(header("'<f4'", "False", "2"), f32x2)},
      {"shape (2) is no tuple", npy_bytes(header("'<f4'", "False", "(2)"), f32x2)},
      {"negative dim", npy_bytes(header("'<f4'", "False", "(-2,)"), f32x2)},
      {"float dim", npy_bytes(header("'<f4'", "False", "(2.0,)"), f32x2)},
      {"string dim", npy_bytes(header("'<f4'", "False", "('2',)"), f32x2)},
      {"empty dim", npy_bytes(header("'<f4'", "False", "(1,,2)"), f32x2)},
      {"unclosed shape", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, }", f32x2)},
      {"dim 2^63", npy_bytes(header("'<f4'", "False", "(9223372036854775808,)"), f32x2)},
      {"dim 2^64", npy_bytes(header("'<f4'", "False", "(18446744073709551616,)"), f32x2)},
      {"element count overflows", npy_bytes(header("'<f4'", "False", "(4294967296, 4294967296, 0)"))},
      {"byte count overflows", npy_bytes(header("'<f8'", "False", "(2305843009213693952,)"))},
      {"65 dimensions", npy_bytes(header("'<f4'", "False", long_shape), raw<float>({1}))},
      {"data too short", npy_bytes(good, raw<float>({1}))},
      {"data missing", npy_bytes(good)},
      {"trailing garbage", npy_bytes(good, f32x2 + "x")},
      {"i4 with f4 size", npy_bytes(header("'<i4'", "False", "(1,)"), f32x2)},
  };
  for (const auto& c : cases) check_rejects(c.label, [&] { return io::from_npy(c.bytes, "corrupt"); });

  try {
    io::from_npy(npy_bytes(header("'<f4'", "True", "(2,)"), f32x2), "weights.npy");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("weights.npy") != std::string::npos);
    CHECK(std::string(e.what()).find("Fortran") != std::string::npos);
  }
}

TEST_CASE("npy: every truncation and random byte flips") {
  const std::string valid = io::to_npy(from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2}));
  REQUIRE_NOTHROW(io::from_npy(valid, "valid"));
  for (std::size_t length = 0; length < valid.size(); ++length) {
    check_rejects(fmt::format("prefix of {} bytes", length),
                  [&] { return io::from_npy(std::string_view(valid).substr(0, length), "truncated"); });
  }
  check_rejects("one byte appended", [&] { return io::from_npy(valid + "x", "long"); });

  std::mt19937_64 rng(7);
  int rejected = 0;
  const int trials = 4000;
  for (int trial = 0; trial < trials; ++trial) {
    std::string mutated = valid;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      const std::size_t at = rng() % mutated.size();
      mutated[at] = static_cast<char>(mutated[at] ^ static_cast<char>(1 + rng() % 255));
    }
    rejected += parses_or_rejects([&] { io::from_npy(mutated, "flipped"); });
  }
  MESSAGE(rejected << " of " << trials << " mutated npy files rejected");
  CHECK(rejected > trials / 4);  // flips in the data or in the padding spaces still parse
}

TEST_CASE("load_npy names the path") {
  TempDir dir;
  const std::string path = dir / "bad.npy";
  io::write_file_atomic(path, "\x93NUMPY\x01");
  try {
    io::load_npy(path);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
  }
  CHECK_THROWS_AS(io::load_npy(dir / "missing.npy"), Error);
}

TEST_CASE("an empty tensor whose other dimensions multiply past what can be addressed is refused") {
  // A zero dimension empties the tensor, but its strides would still multiply the others into an overflow
  // (found by the npy fuzz target).
  CHECK_ERROR(empty({0, std::int64_t{1} << 32, std::int64_t{1} << 32}), "empty", "[0, 4294967296, 4294967296]",
              "more than can be addressed");
  CHECK_NOTHROW(empty({0, std::int64_t{1} << 20, std::int64_t{1} << 20}));
  const std::string npy_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }\n";
  CHECK_ERROR(io::from_npy(npy_bytes(npy_header, ""), "huge"), "npy 'huge'", "too many elements");
  const std::string st_header = R"({"a":{"dtype":"F32","shape":[4294967296,0,4294967296],"data_offsets":[0,0]}})";
  CHECK_ERROR(io::from_safetensors(safetensors_bytes(st_header, ""), "huge"), "safetensors 'huge'", "tensor \"a\"",
              "too many elements");
}

TEST_CASE("npy and safetensors: each rejection's message names the file and the problem") {
  // A corrupt file must be refused by the check written for its problem, not by a later, vaguer one: each
  // message names the file (here "model.npy" or "model.safetensors") and what is wrong.
  struct Case {
    std::string label, bytes;
    std::vector<std::string> parts;
  };
  auto npy_header = [](const std::string& descr, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }\n";
  };
  const std::string f32x2 = raw<float>({1, 2});
  const std::vector<Case> npy_cases = {
      {"version 1.1", [&] {
         std::string b = npy_bytes(npy_header("<f4", "(2,)"), f32x2);
         b[7] = 1;
         return b;
       }(), {"format version 1.1", "not supported"}},
      {"dim 2^63", npy_bytes(npy_header("<f4", "(9223372036854775808,)"), f32x2), {"a dimension is too large"}},
      {"element count overflows", npy_bytes(npy_header("<f4", "(4294967296, 4294967296, 2)")),
       {"[4294967296, 4294967296, 2]", "too many elements"}},
      {"(2) is no tuple", npy_bytes(npy_header("<f4", "(2)"), f32x2), {"the shape is not a tuple"}},
      {"big-endian", npy_bytes(npy_header(">f4", "(2,)"), f32x2), {"dtype '>f4' is not supported"}},
      {"data too short", npy_bytes(npy_header("<f4", "(2,)"), raw<float>({1})),
       {"<f4 of shape [2] needs 8 data bytes, but the file holds 4"}},
      {"i4 data of f4 size", npy_bytes(npy_header("<i4", "(1,)"), f32x2), {"needs 4 data bytes", "holds 8"}},
  };
  for (const auto& c : npy_cases) {
    CAPTURE(c.label);
    const std::string message = testing::error_message([&] { io::from_npy(c.bytes, "model.npy"); });
    CHECK(message.find("npy 'model.npy'") != std::string::npos);
    for (const auto& part : c.parts) CHECK_MESSAGE(message.find(part) != std::string::npos, message, " lacks ", part);
  }

  const std::vector<Case> safetensors_cases = {
      {"trailing bytes", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f32x2 + "xy"),
       {"2 trailing bytes after the last tensor", "holds 10 bytes"}},
      {"a gap", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2),
       {"bytes [0, 4) of the data buffer belong to no tensor"}},
      {"overlap",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2),
       {"tensor \"b\" at bytes [4, 8) overlaps tensor \"a\" at [0, 8)"}},
      {"size mismatch", safetensors_bytes(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", f32x2),
       {"tensor \"w\"", "needs 16 bytes", "hold 8"}},
      {"offsets reversed", safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", f32x2),
       {"tensor \"w\"", "[8, 0] out of order"}},
      {"unknown dtype", safetensors_bytes(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", f32x2),
       {"tensor \"w\" has dtype \"U8\", which is not supported"}},
  };
  for (const auto& c : safetensors_cases) {
    CAPTURE(c.label);
    const std::string message = testing::error_message([&] { io::from_safetensors(c.bytes, "model.safetensors"); });
    CHECK(message.find("safetensors 'model.safetensors'") != std::string::npos);
    for (const auto& part : c.parts) CHECK_MESSAGE(message.find(part) != std::string::npos, message, " lacks ", part);
  }
  // Empty tensors are valid: [b, b] offsets, beside a full one.
  const auto empty = io::from_safetensors(
      safetensors_bytes(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},)"
                        R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f32x2), "model.safetensors");
  REQUIRE(empty.tensors.size() == 2);
  CHECK(empty.tensors[1].second.shape() == Shape{0, 3});
}
