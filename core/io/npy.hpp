#pragma once
// NumPy's .npy format: the magic "\x93NUMPY", a version, a little-endian header length, an ASCII Python dict
// literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded with spaces and a newline, then the
// raw array data.
#include <string>
#include <string_view>

#include "../tensor.hpp"

namespace ellipse::io {

// Writes version 1.0 with '<f4', '<f8' or '<i8', C order, the preamble padded to a multiple of 64 bytes.
// Any device and strides; at most 64 dimensions (the reader's limit). Replaces `path` atomically.
void save_npy(const std::string& path, const Tensor& t);
std::string to_npy(const Tensor& t);  // the bytes save_npy writes

// Reads versions 1.0 and 2.0 in C order with '<f4', '<f8', '<i8' or '<i4' (widened to i64) into a CPU
// tensor, with at most 64 dimensions. Anything else, or any inconsistency, is an ellipse::Error naming
// `name_for_errors` / the path.
Tensor from_npy(std::string_view bytes, const std::string& name_for_errors);
Tensor load_npy(const std::string& path);

}  // namespace ellipse::io
