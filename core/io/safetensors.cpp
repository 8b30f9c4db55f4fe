#include "core/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>
#include <iterator>
#include <limits>
#include <set>

#include "core/error.hpp"
#include "core/io/file.hpp"

namespace ellipse::io {
namespace {

// Tensor bytes are copied verbatim, so the host must share the format's byte order.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using Json = nlohmann::ordered_json;

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the limit the reference implementation uses
constexpr std::size_t kMaxRank = 64;                     // far beyond any real tensor; bounds hostile shapes
constexpr int kMaxJsonDepth = 8;                         // a valid header nests 3 deep
constexpr std::string_view kMetadataKey = "__metadata__";

std::string_view format_dtype(DType dtype, IntegerFormat integers) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i64: return integers == IntegerFormat::i32 ? "I32" : "I64";
  }
  return "?";
}

bool narrowed(const Tensor& t, IntegerFormat integers) {
  return t.dtype() == DType::i64 && integers == IntegerFormat::i32;
}

// Bytes per element in the file.
std::size_t stored_itemsize(const Tensor& t, IntegerFormat integers) {
  return narrowed(t, integers) ? sizeof(std::int32_t) : itemsize(t.dtype());
}

void check_fits_i32(const std::string& name, const Tensor& host) {
  const std::int64_t* values = host.data<std::int64_t>();
  for (std::int64_t i = 0; i < host.numel(); ++i)
    ELLIPSE_CHECK(values[i] >= std::numeric_limits<std::int32_t>::min() &&
                      values[i] <= std::numeric_limits<std::int32_t>::max(),
                  "to_safetensors: tensor \"{}\" holds {} at flat index {}, which does not fit the requested I32", name,
                  values[i], i);
}

void append_data(std::string& out, const Tensor& host, IntegerFormat integers) {
  if (narrowed(host, integers)) {
    const std::int64_t* values = host.data<std::int64_t>();
    const std::size_t start = out.size();
    out.resize(start + static_cast<std::size_t>(host.numel()) * sizeof(std::int32_t));
    for (std::int64_t i = 0; i < host.numel(); ++i) {
      const auto value = static_cast<std::int32_t>(values[i]);  // in range: check_fits_i32 ran first
      std::memcpy(out.data() + start + static_cast<std::size_t>(i) * sizeof value, &value, sizeof value);
    }
    return;
  }
  const auto bytes = static_cast<std::size_t>(host.numel()) * itemsize(host.dtype());
  if (bytes > 0) out.append(static_cast<const char*>(host.raw_data()), bytes);
}

std::uint64_t read_u64_le(std::string_view bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  return value;
}

void append_u64_le(std::string& out, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// Parses the header, rejecting duplicate keys (nlohmann would silently keep the last) and deep nesting (so a
// hostile header cannot exhaust the stack or hide work in ignored fields).
Json parse_header(std::string_view text, const std::string& name) {
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        ELLIPSE_CHECK(depth < kMaxJsonDepth, "safetensors '{}': the header nests deeper than {} levels", name,
                      kMaxJsonDepth);
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::array_start:
        ELLIPSE_CHECK(depth < kMaxJsonDepth, "safetensors '{}': the header nests deeper than {} levels", name,
                      kMaxJsonDepth);
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        ELLIPSE_CHECK(open_objects.back().insert(key).second, "safetensors '{}': the header repeats the key \"{}\"",
                      name, key);
        break;
      }
      default: break;
    }
    return true;
  };
  // nlohmann's lexer stops at a NUL byte as if the input ended, which would let garbage hide behind one; valid
  // JSON never holds a raw NUL.
  const auto nul = text.find('\0');
  ELLIPSE_CHECK(nul == std::string_view::npos, "safetensors '{}': the header holds a NUL byte at offset {}", name,
                nul);
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::exception& e) {
    fail("safetensors '{}': the header is not valid JSON: {}", name, e.what());
  }
}

// A JSON integer in [0, limit], else an error naming `what`.
std::uint64_t get_count(const Json& value, std::uint64_t limit, const std::string& name, std::string_view what) {
  ELLIPSE_CHECK(value.is_number_integer(), "safetensors '{}': {} must be an integer, got {}", name, what,
                value.dump());
  std::uint64_t count = 0;
  if (value.is_number_unsigned()) {
    count = value.get<std::uint64_t>();
  } else {
    const auto signed_value = value.get<std::int64_t>();
    ELLIPSE_CHECK(signed_value >= 0, "safetensors '{}': {} must not be negative, got {}", name, what, signed_value);
    count = static_cast<std::uint64_t>(signed_value);
  }
  ELLIPSE_CHECK(count <= limit, "safetensors '{}': {} is {}, larger than {}", name, what, count, limit);
  return count;
}

struct Entry {
  std::string name;
  std::string_view dtype;  // points into the parsed header, which outlives the entries
  DType target = DType::f32;
  std::size_t source_itemsize = 4;
  Shape shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

Entry parse_entry(const std::string& tensor, const Json& info, std::uint64_t buffer_size, const std::string& name) {
  ELLIPSE_CHECK(info.is_object(), "safetensors '{}': the entry for tensor \"{}\" is not an object", name, tensor);
  Entry entry;
  entry.name = tensor;

  const auto dtype = info.find("dtype");
  ELLIPSE_CHECK(dtype != info.end(), "safetensors '{}': tensor \"{}\" has no dtype", name, tensor);
  ELLIPSE_CHECK(dtype->is_string(), "safetensors '{}': tensor \"{}\" has a dtype that is not a string: {}", name,
                tensor, dtype->dump());
  entry.dtype = dtype->get_ref<const std::string&>();
  struct Known {
    std::string_view tag;
    DType target;
    std::size_t source_itemsize;
  };
  static constexpr Known kKnown[] = {{"F32", DType::f32, 4}, {"F64", DType::f64, 8}, {"I64", DType::i64, 8},
                                     {"I32", DType::i64, 4}, {"F16", DType::f32, 2},  {"BF16", DType::f32, 2}};
  const auto known = std::find_if(std::begin(kKnown), std::end(kKnown),
                                  [&](const Known& k) { return k.tag == entry.dtype; });
  ELLIPSE_CHECK(known != std::end(kKnown),
                "safetensors '{}': tensor \"{}\" has dtype {}, which is not supported "
                "(F32, F64, I64, I32, F16, BF16 are)",
                name, tensor, dtype->dump());
  entry.target = known->target;
  entry.source_itemsize = known->source_itemsize;

  const auto shape = info.find("shape");
  ELLIPSE_CHECK(shape != info.end(), "safetensors '{}': tensor \"{}\" has no shape", name, tensor);
  ELLIPSE_CHECK(shape->is_array(), "safetensors '{}': tensor \"{}\" has a shape that is not an array: {}", name,
                tensor, shape->dump());
  ELLIPSE_CHECK(shape->size() <= kMaxRank, "safetensors '{}': tensor \"{}\" has {} dimensions, more than {}", name,
                tensor, shape->size(), kMaxRank);
  // empty()'s bound, checked here to name the file and tensor, so creating the tensor cannot fail later.
  const auto element_limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max() / 8);
  for (const auto& dim : *shape)
    entry.shape.push_back(static_cast<std::int64_t>(
        get_count(dim, element_limit, name, fmt::format("a dimension of tensor \"{}\"", tensor))));
  ELLIPSE_CHECK(addressable(entry.shape), "safetensors '{}': the shape {} of tensor \"{}\" has too many elements",
                name, shape->dump(), tensor);
  const auto count = static_cast<std::uint64_t>(numel(entry.shape));

  const auto offsets = info.find("data_offsets");
  ELLIPSE_CHECK(offsets != info.end(), "safetensors '{}': tensor \"{}\" has no data_offsets", name, tensor);
  ELLIPSE_CHECK(offsets->is_array() && offsets->size() == 2,
                "safetensors '{}': tensor \"{}\" has data_offsets {}, expected [begin, end]", name, tensor,
                offsets->dump());
  const auto what = fmt::format("a data offset of tensor \"{}\" (the buffer holds {} bytes)", tensor, buffer_size);
  entry.begin = get_count((*offsets)[0], buffer_size, name, what);
  entry.end = get_count((*offsets)[1], buffer_size, name, what);
  ELLIPSE_CHECK(entry.begin <= entry.end, "safetensors '{}': tensor \"{}\" has data_offsets [{}, {}] out of order",
                name, tensor, entry.begin, entry.end);
  // count * itemsize cannot overflow: count <= INT64_MAX / 8.
  const std::uint64_t expected = count * entry.source_itemsize;
  ELLIPSE_CHECK(entry.end - entry.begin == expected,
                "safetensors '{}': tensor \"{}\" ({} of shape {}) needs {} bytes, but data_offsets [{}, {}] hold {}",
                name, tensor, entry.dtype, shape->dump(), expected, entry.begin, entry.end, entry.end - entry.begin);
  return entry;
}

// IEEE binary16 to binary32, exactly (every half is a float): subnormals, infinities and NaNs included.
float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign != 0 ? -magnitude : magnitude;
  }
  const std::uint32_t bits = exponent == 0x1f ? sign | 0x7f800000u | (mantissa << 13)
                                              : sign | ((exponent + 112) << 23) | (mantissa << 13);
  return std::bit_cast<float>(bits);
}

Tensor make_tensor(const Entry& entry, std::string_view buffer) {
  Tensor t = empty(entry.shape, entry.target);
  const char* source = buffer.data() + entry.begin;
  const std::size_t count = static_cast<std::size_t>(entry.end - entry.begin) / entry.source_itemsize;
  if (entry.dtype == "I32") {
    auto* out = static_cast<std::int64_t*>(t.raw_data());
    for (std::size_t i = 0; i < count; ++i) {
      std::int32_t value = 0;
      std::memcpy(&value, source + i * 4, 4);
      out[i] = value;
    }
  } else if (entry.dtype == "F16" || entry.dtype == "BF16") {
    // Half-precision checkpoints (PyTorch's .half() and .bfloat16()) widen to f32, the working type.
    const bool brain = entry.dtype == "BF16";
    auto* out = static_cast<float*>(t.raw_data());
    for (std::size_t i = 0; i < count; ++i) {
      std::uint16_t value = 0;
      std::memcpy(&value, source + i * 2, 2);
      out[i] = brain ? std::bit_cast<float>(static_cast<std::uint32_t>(value) << 16) : half_to_float(value);
    }
  } else if (count > 0) {
    std::memcpy(t.raw_data(), source, count * entry.source_itemsize);
  }
  return t;
}

}  // namespace

std::string to_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const std::map<std::string, std::string>& metadata, IntegerFormat integers) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[std::string(kMetadataKey)] = std::move(meta);
  }
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  std::set<std::string_view> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    ELLIPSE_CHECK(!name.empty(), "to_safetensors: a tensor has an empty name");
    ELLIPSE_CHECK(name != kMetadataKey, "to_safetensors: \"{}\" is reserved and cannot name a tensor", kMetadataKey);
    ELLIPSE_CHECK(seen.insert(name).second, "to_safetensors: the name \"{}\" appears twice", name);
    ELLIPSE_CHECK(tensor.defined(), "to_safetensors: tensor \"{}\" is undefined", name);
    // Never write what from_safetensors would refuse.
    ELLIPSE_CHECK(tensor.shape().size() <= kMaxRank, "to_safetensors: tensor \"{}\" has {} dimensions, more than {}",
                  name, tensor.dim(), kMaxRank);
    Tensor contiguous_host = tensor.to(Device::cpu()).contiguous();
    if (narrowed(contiguous_host, integers)) check_fits_i32(name, contiguous_host);
    const auto bytes = static_cast<std::uint64_t>(contiguous_host.numel()) * stored_itemsize(tensor, integers);
    Json entry = Json::object();
    entry["dtype"] = format_dtype(tensor.dtype(), integers);
    entry["shape"] = tensor.shape();
    entry["data_offsets"] = {offset, offset + bytes};
    header[name] = std::move(entry);
    offset += bytes;
    host.push_back(std::move(contiguous_host));
  }

  std::string text;
  try {
    text = header.dump();  // strict: a name or metadata string that is not valid UTF-8 throws
  } catch (const Json::exception& e) {
    fail("to_safetensors: cannot encode the header: {}", e.what());
  }
  // Pads with spaces so the data buffer starts 8-byte aligned, which lets readers map it in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  ELLIPSE_CHECK(text.size() <= kMaxHeaderBytes, "to_safetensors: the header would be {} bytes, over the {} limit",
                text.size(), kMaxHeaderBytes);

  std::string out;
  out.reserve(8 + text.size() + static_cast<std::size_t>(offset));
  append_u64_le(out, text.size());
  out += text;
  for (const auto& t : host) append_data(out, t, integers);
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata, IntegerFormat integers) {
  // Serialise fully before touching the file, so a bad input leaves the old file alone.
  std::string bytes;
  try {
    bytes = to_safetensors(tensors, metadata, integers);
  } catch (const Error& e) {
    fail("save_safetensors '{}': {}", path, e.what());
  }
  write_file_atomic(path, bytes);
}

SafetensorsFile from_safetensors(std::string_view bytes, const std::string& name) {
  ELLIPSE_CHECK(bytes.size() >= 8, "safetensors '{}': the file is {} bytes, too short for the 8-byte header length",
                name, bytes.size());
  const std::uint64_t header_size = read_u64_le(bytes);
  ELLIPSE_CHECK(header_size <= bytes.size() - 8,
                "safetensors '{}': the header length {} exceeds the {} bytes that follow it", name, header_size,
                bytes.size() - 8);
  ELLIPSE_CHECK(header_size <= kMaxHeaderBytes, "safetensors '{}': the header length {} is over the {} limit", name,
                header_size, kMaxHeaderBytes);
  const std::string_view header_text = bytes.substr(8, static_cast<std::size_t>(header_size));
  const std::string_view buffer = bytes.substr(8 + static_cast<std::size_t>(header_size));

  const Json header = parse_header(header_text, name);
  ELLIPSE_CHECK(header.is_object(), "safetensors '{}': the header is not a JSON object", name);

  SafetensorsFile result;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (value.is_null()) continue;  // the reference implementation accepts a null metadata entry
      ELLIPSE_CHECK(value.is_object(), "safetensors '{}': \"{}\" is not an object", name, kMetadataKey);
      for (const auto& [meta_key, meta_value] : value.items()) {
        ELLIPSE_CHECK(meta_value.is_string(), "safetensors '{}': metadata \"{}\" is not a string: {}", name,
                      meta_key, meta_value.dump());
        result.metadata.emplace(meta_key, meta_value.get<std::string>());
      }
      continue;
    }
    ELLIPSE_CHECK(!key.empty(), "safetensors '{}': a tensor has an empty name", name);
    entries.push_back(parse_entry(key, value, buffer.size(), name));
  }

  // The tensors must tile the buffer exactly: no overlap, no gap, nothing after the last one.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const auto& entry : entries) {
    if (entry.begin < covered) {
      fail("safetensors '{}': tensor \"{}\" at bytes [{}, {}) overlaps tensor \"{}\" at [{}, {})", name, entry.name,
           entry.begin, entry.end, previous->name, previous->begin, previous->end);
    }
    ELLIPSE_CHECK(entry.begin == covered, "safetensors '{}': bytes [{}, {}) of the data buffer belong to no tensor",
                  name, covered, entry.begin);
    covered = entry.end;
    previous = &entry;
  }
  ELLIPSE_CHECK(covered == buffer.size(),
                "safetensors '{}': {} trailing bytes after the last tensor (the data buffer holds {} bytes)", name,
                buffer.size() - covered, buffer.size());

  result.tensors.reserve(entries.size());
  for (const auto& entry : entries) result.tensors.emplace_back(entry.name, make_tensor(entry, buffer));
  return result;
}

SafetensorsFile load_safetensors(const std::string& path) {
  const std::string bytes = read_file(path, std::numeric_limits<std::uint64_t>::max());
  return from_safetensors(bytes, path);
}

}  // namespace ellipse::io
