#pragma once
// Whole-file reads and crash-safe whole-file writes. Every failure is an ellipse::Error naming the path.
#include <cstdint>
#include <string>
#include <string_view>

namespace ellipse::io {

// Reads the whole file. Throws when it is missing, unreadable, not a regular file, or larger than
// `max_bytes` (checked while reading, so a file that grows meanwhile is still caught).
std::string read_file(const std::string& path, std::uint64_t max_bytes);

// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one, never a mix:
// the bytes go to a fresh temporary file in the same directory, which is fsynced and renamed over `path`,
// and then the directory is fsynced. On failure the temporary file is removed and `path` is untouched,
// except when only the final directory fsync fails: the new file is then in place but perhaps not durable,
// and the error says so.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace ellipse::io
