#include "core/io/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/error.hpp"

namespace ellipse::io {
namespace {

std::string errno_text(int code) { return std::strerror(code); }

// Closes a descriptor on scope exit unless it was released (closed explicitly) first.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and returns the errno of a failed close (0 on success): with NFS and friends, a write error
  // may only surface here.
  int close_now() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

std::string directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Unique per process and per call, so concurrent writers (threads or processes) never share a temp file.
std::string temp_path_for(const std::string& path) {
  static std::atomic<std::uint64_t> counter{0};
  return fmt::format("{}.tmp.{}.{}", path, static_cast<long>(::getpid()), counter.fetch_add(1));
}

}  // namespace

std::string read_file(const std::string& path, std::uint64_t max_bytes) {
  int fd = -1;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int code = errno;
    fail("read_file: cannot open '{}': {}", path, errno_text(code));
  }
  FileDescriptor file(fd);
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int code = errno;
    fail("read_file: cannot stat '{}': {}", path, errno_text(code));
  }
  ELLIPSE_CHECK(S_ISREG(info.st_mode), "read_file: '{}' is not a regular file", path);
  const auto reported = static_cast<std::uint64_t>(info.st_size);
  ELLIPSE_CHECK(reported <= max_bytes, "read_file: '{}' is {} bytes, larger than the limit of {} bytes", path,
                reported, max_bytes);

  std::string bytes;
  bytes.resize(static_cast<std::size_t>(reported));
  std::size_t filled = 0;
  for (;;) {
    if (filled == bytes.size()) {
      // The file may have grown since fstat: keep reading, in modest steps, until EOF or the limit.
      if (filled > max_bytes) break;
      // Room for one byte past the limit, so that reaching it is detected; never more than 64 KiB at once.
      const std::uint64_t room = std::min<std::uint64_t>(max_bytes - filled, std::uint64_t{1} << 16) + 1;
      bytes.resize(filled + static_cast<std::size_t>(room));
    }
    const ssize_t got = ::read(fd, bytes.data() + filled, bytes.size() - filled);
    if (got < 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      fail("read_file: cannot read '{}': {}", path, errno_text(code));
    }
    if (got == 0) break;
    filled += static_cast<std::size_t>(got);
  }
  ELLIPSE_CHECK(filled <= max_bytes, "read_file: '{}' is larger than the limit of {} bytes", path, max_bytes);
  bytes.resize(filled);
  return bytes;
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  ELLIPSE_CHECK(!path.empty(), "write_file_atomic: the path is empty");
  const std::string temp = temp_path_for(path);
  int fd = -1;
  do {
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int code = errno;
    fail("write_file_atomic: cannot create a temporary file next to '{}' ('{}'): {}", path, temp,
         errno_text(code));
  }
  FileDescriptor file(fd);
  // From here on every failure must remove the temporary file before throwing.
  auto give_up = [&](std::string_view what, int code) {
    if (file.get() >= 0) file.close_now();
    ::unlink(temp.c_str());
    fail("write_file_atomic: cannot write '{}': {} failed: {}", path, what, errno_text(code));
  };

  // Keep the permissions of the file being replaced (a private 0600 file must not turn world-readable).
  struct stat existing {};
  if (::stat(path.c_str(), &existing) == 0 && S_ISREG(existing.st_mode) &&
      ::fchmod(fd, existing.st_mode & 07777) != 0) {
    give_up("fchmod", errno);
  }

  std::size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t put = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (put < 0) {
      if (errno == EINTR) continue;
      give_up("write", errno);
    }
    written += static_cast<std::size_t>(put);
  }
  if (::fsync(fd) != 0) give_up("fsync", errno);
  if (const int code = file.close_now(); code != 0) give_up("close", code);
  if (::rename(temp.c_str(), path.c_str()) != 0) give_up("rename", errno);

  // Makes the rename itself durable. Some filesystems cannot fsync a directory (EINVAL); that is no error.
  const std::string directory = directory_of(path);
  const int dir_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    const int code = errno;
    fail("write_file_atomic: '{}' was replaced, but its directory '{}' could not be opened to fsync it: {}", path,
         directory, errno_text(code));
  }
  FileDescriptor dir(dir_fd);
  if (::fsync(dir_fd) != 0 && errno != EINVAL) {
    const int code = errno;
    fail("write_file_atomic: '{}' was replaced, but fsync of its directory '{}' failed: {}", path, directory,
         errno_text(code));
  }
}

}  // namespace ellipse::io
