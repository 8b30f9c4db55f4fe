#include "core/io/npy.hpp"

#include <algorithm>
#include <bit>
#include <iterator>
#include <cstring>
#include <limits>
#include <optional>

#include "core/error.hpp"
#include "core/io/file.hpp"

namespace ellipse::io {
namespace {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

constexpr std::string_view kMagic = "\x93NUMPY";
constexpr std::uint64_t kMaxHeaderBytes = 1'000'000;  // real headers are ~100 bytes; this bounds hostile ones
constexpr std::size_t kMaxRank = 64;
constexpr std::size_t kAlignment = 64;

std::string_view descr_of(DType dtype) {
  switch (dtype) {
    case DType::f32: return "<f4";
    case DType::f64: return "<f8";
    case DType::i64: return "<i8";
  }
  return "?";
}

// A reader for the one dict literal NumPy writes: string keys, and values that are strings, True/False or
// tuples of non-negative integers. Whitespace may appear between tokens, as Python allows.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  struct Value {
    enum class Kind { string, boolean, tuple } kind = Kind::string;
    std::string text;
    bool flag = false;
    Shape dims;
  };

  template <class Visit>
  void parse_dict(Visit&& visit) {
    expect('{');
    skip_space();
    while (peek() != '}') {
      std::string key = parse_string();
      expect(':');
      visit(key, parse_value());
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != '}') {
        error("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) error("unexpected text after the dictionary");
  }

  [[noreturn]] void error(std::string_view what) const {
    fail("npy '{}': cannot parse the header at byte {}: {}", name_, pos_, what);
  }

 private:
  char peek() {
    if (pos_ >= text_.size()) error("the header ends early");
    return text_[pos_];
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r'))
      ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) error(fmt::format("expected '{}'", c));
    ++pos_;
  }
  bool try_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  std::string parse_string() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') error("expected a quoted string");
    ++pos_;
    const auto close = text_.find(quote, pos_);
    if (close == std::string_view::npos) error("unterminated string");
    std::string out(text_.substr(pos_, close - pos_));
    if (out.find('\\') != std::string::npos) error("escapes in strings are not supported");
    pos_ = close + 1;
    return out;
  }

  std::int64_t parse_int() {
    skip_space();
    const std::size_t start = pos_;
    std::int64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const int digit = text_[pos_] - '0';
      if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) error("a dimension is too large");
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) error("expected a non-negative integer");
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;  // Python 2 wrote long integers as 3L
    return value;
  }

  Value parse_value() {
    skip_space();
    Value value;
    const char c = peek();
    if (c == '\'' || c == '"') {
      value.kind = Value::Kind::string;
      value.text = parse_string();
    } else if (try_word("True")) {
      value.kind = Value::Kind::boolean;
      value.flag = true;
    } else if (try_word("False")) {
      value.kind = Value::Kind::boolean;
      value.flag = false;
    } else if (c == '(') {
      // (), (n,) or (a, b, ...) with an optional trailing comma; (n) is an integer in Python, not a tuple.
      ++pos_;
      value.kind = Value::Kind::tuple;
      bool comma_after_last = false;
      skip_space();
      while (peek() != ')') {
        if (value.dims.size() == kMaxRank) error(fmt::format("more than {} dimensions", kMaxRank));
        value.dims.push_back(parse_int());
        skip_space();
        comma_after_last = peek() == ',';
        if (comma_after_last) {
          ++pos_;
          skip_space();
        } else if (peek() != ')') {
          error("expected ',' or ')' in the shape");
        }
      }
      ++pos_;
      if (value.dims.size() == 1 && !comma_after_last) error("the shape is not a tuple");
    } else {
      error("expected a string, True, False or a tuple");
    }
    return value;
  }

  std::string_view text_;
  const std::string& name_;
  std::size_t pos_ = 0;
};

std::uint32_t read_le(std::string_view bytes, std::size_t at, int width) {
  std::uint32_t value = 0;
  for (int i = width - 1; i >= 0; --i)
    value = (value << 8) | static_cast<unsigned char>(bytes[at + static_cast<std::size_t>(i)]);
  return value;
}

}  // namespace

std::string to_npy(const Tensor& t) {
  ELLIPSE_CHECK(t.defined(), "to_npy: the tensor is undefined");
  // Never write what load_npy would refuse.
  ELLIPSE_CHECK(t.shape().size() <= kMaxRank, "to_npy: the tensor has {} dimensions, more than {}", t.dim(), kMaxRank);
  const Tensor host = t.to(Device::cpu()).contiguous();
  std::string shape;
  for (auto d : t.shape()) shape += fmt::format("{}, ", d);
  if (t.dim() > 1) shape.resize(shape.size() - 2);  // Python writes (2, 3) and (3,) and ()
  else if (t.dim() == 1) shape.pop_back();
  std::string dict =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr_of(t.dtype()), shape);

  // Pad with spaces, then '\n', so that magic + version + length + header is a multiple of 64 bytes. With at most
  // kMaxRank dimensions the header stays far below the 64 KiB that version 1.0 can describe.
  const std::size_t unpadded = kMagic.size() + 4 + dict.size() + 1;
  const std::size_t header_size = dict.size() + (kAlignment - unpadded % kAlignment) % kAlignment + 1;

  const auto data_bytes = static_cast<std::size_t>(host.numel()) * itemsize(host.dtype());
  std::string out;
  out.reserve(kMagic.size() + 6 + header_size + data_bytes);
  out += kMagic;
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header_size & 0xff));
  out.push_back(static_cast<char>(header_size >> 8));
  out += dict;
  out.append(header_size - dict.size() - 1, ' ');
  out.push_back('\n');
  if (data_bytes > 0) out.append(static_cast<const char*>(host.raw_data()), data_bytes);
  return out;
}

void save_npy(const std::string& path, const Tensor& t) {
  std::string bytes;
  try {
    bytes = to_npy(t);
  } catch (const Error& e) {
    fail("save_npy '{}': {}", path, e.what());
  }
  write_file_atomic(path, bytes);
}

Tensor from_npy(std::string_view bytes, const std::string& name) {
  ELLIPSE_CHECK(bytes.size() >= kMagic.size() + 2 && bytes.substr(0, kMagic.size()) == kMagic,
                "npy '{}': not an NPY file (the magic string \\x93NUMPY is missing)", name);
  const auto major = static_cast<unsigned char>(bytes[6]);
  const auto minor = static_cast<unsigned char>(bytes[7]);
  ELLIPSE_CHECK((major == 1 || major == 2) && minor == 0,
                "npy '{}': format version {}.{} is not supported (1.0 and 2.0 are)", name, major, minor);
  const std::size_t length_field = major == 1 ? 2 : 4;
  const std::size_t header_start = kMagic.size() + 2 + length_field;
  ELLIPSE_CHECK(bytes.size() >= header_start, "npy '{}': the file is {} bytes, too short for the header length",
                name, bytes.size());
  const std::uint64_t header_size = read_le(bytes, kMagic.size() + 2, static_cast<int>(length_field));
  ELLIPSE_CHECK(header_size <= bytes.size() - header_start,
                "npy '{}': the header length {} exceeds the {} bytes that follow it", name, header_size,
                bytes.size() - header_start);
  ELLIPSE_CHECK(header_size <= kMaxHeaderBytes, "npy '{}': the header length {} is over the {} limit", name,
                header_size, kMaxHeaderBytes);
  const std::string_view header = bytes.substr(header_start, static_cast<std::size_t>(header_size));
  const std::string_view data = bytes.substr(header_start + static_cast<std::size_t>(header_size));

  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<Shape> shape;
  HeaderParser parser(header, name);
  parser.parse_dict([&](const std::string& key, HeaderParser::Value value) {
    using Kind = HeaderParser::Value::Kind;
    auto once = [&](bool seen) {
      ELLIPSE_CHECK(!seen, "npy '{}': the header repeats the key '{}'", name, key);
    };
    if (key == "descr") {
      once(descr.has_value());
      ELLIPSE_CHECK(value.kind == Kind::string, "npy '{}': 'descr' is not a string (structured arrays are not "
                    "supported)", name);
      descr = std::move(value.text);
    } else if (key == "fortran_order") {
      once(fortran_order.has_value());
      ELLIPSE_CHECK(value.kind == Kind::boolean, "npy '{}': 'fortran_order' is not True or False", name);
      fortran_order = value.flag;
    } else if (key == "shape") {
      once(shape.has_value());
      ELLIPSE_CHECK(value.kind == Kind::tuple, "npy '{}': 'shape' is not a tuple", name);
      shape = std::move(value.dims);
    } else {
      fail("npy '{}': unexpected key '{}' in the header", name, key);
    }
  });
  ELLIPSE_CHECK(descr && fortran_order && shape, "npy '{}': the header lacks {}", name,
                !descr ? "'descr'" : !fortran_order ? "'fortran_order'" : "'shape'");
  ELLIPSE_CHECK(!*fortran_order, "npy '{}': Fortran-order arrays are not supported; save in C order", name);

  struct Known {
    std::string_view descr;
    DType target;
    std::size_t source_itemsize;
  };
  static constexpr Known kKnown[] = {
      {"<f4", DType::f32, 4}, {"<f8", DType::f64, 8}, {"<i8", DType::i64, 8}, {"<i4", DType::i64, 4}};
  const auto known =
      std::find_if(std::begin(kKnown), std::end(kKnown), [&](const Known& k) { return k.descr == *descr; });
  ELLIPSE_CHECK(known != std::end(kKnown), "npy '{}': dtype '{}' is not supported ('<f4', '<f8', '<i8', '<i4' are)",
                name, *descr);
  const DType target = known->target;
  const std::size_t source_itemsize = known->source_itemsize;

  // empty()'s bound, checked here to name the file: bytes and strides cannot overflow.
  ELLIPSE_CHECK(addressable(*shape), "npy '{}': the shape {} has too many elements", name, to_string(*shape));
  const std::int64_t count = numel(*shape);
  const auto expected = static_cast<std::uint64_t>(count) * source_itemsize;
  ELLIPSE_CHECK(data.size() == expected, "npy '{}': {} of shape {} needs {} data bytes, but the file holds {}", name,
                *descr, to_string(*shape), expected, data.size());

  Tensor t = empty(*shape, target);
  if (source_itemsize == 4 && target == DType::i64) {
    auto* out = static_cast<std::int64_t*>(t.raw_data());
    for (std::int64_t i = 0; i < count; ++i) {
      std::int32_t value = 0;
      std::memcpy(&value, data.data() + i * 4, 4);
      out[i] = value;
    }
  } else if (expected > 0) {
    std::memcpy(t.raw_data(), data.data(), data.size());
  }
  return t;
}

Tensor load_npy(const std::string& path) {
  return from_npy(read_file(path, std::numeric_limits<std::uint64_t>::max()), path);
}

}  // namespace ellipse::io
