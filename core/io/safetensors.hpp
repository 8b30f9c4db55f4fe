#pragma once
// The Hugging Face safetensors format: an 8-byte little-endian header length N, N bytes of JSON describing
// each tensor (dtype, shape, byte range in the data buffer) plus optional string metadata, then the buffer.
// Reading validates everything before touching the data, so a hostile file can only produce an ellipse::Error.
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../tensor.hpp"

namespace ellipse::io {

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in the order of their data offsets
  std::map<std::string, std::string> metadata;          // the "__metadata__" entry
};

// How i64 tensors are stored: as I64, or as I32 for readers that expect 32-bit ids or indices (every value
// must then fit in 32 bits, else writing fails naming the tensor and the value).
enum class IntegerFormat { i64, i32 };

// Serialises `tensors` (any device, any strides; written as host contiguous data) in the given order.
// f32 and f64 map to F32 and F64; i64 to I64 or, with IntegerFormat::i32, I32. Names must be non-empty,
// distinct and not "__metadata__"; at most 64 dimensions (the reader's limit).
std::string to_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const std::map<std::string, std::string>& metadata = {},
                           IntegerFormat integers = IntegerFormat::i64);
// to_safetensors, then an atomic replace of `path` (see write_file_atomic).
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      IntegerFormat integers = IntegerFormat::i64);

// Parses a whole file's bytes into CPU tensors. Reads F32, F64, I64, I32 (widened to i64), and F16 and BF16
// (widened to f32); other dtypes are an error, and so are more than 64 dimensions. `name_for_errors` is used in every error message
// (normally the path).
SafetensorsFile from_safetensors(std::string_view bytes, const std::string& name_for_errors);
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace ellipse::io
