#pragma once
// Files written whole or not at all, on POSIX (and a portable fallback): AtomicFile writes a
// temporary beside its target, flushes it to disk and renames it over the target, so a crash
// leaves the old file or the new one, never half of one; the temporaries of killed processes are
// removed by the next save or load of the same path. FileSource reads a regular file. Every
// failure of the operating system is a dftune::io_error naming the path and the system's reason.
// The container format written through them is io/format.hpp.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/io/bytes.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#if __has_include(<unistd.h>) && __has_include(<fcntl.h>) && __has_include(<sys/stat.h>) && __has_include(<signal.h>)
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
// 1 where POSIX file calls exist (write, fsync, rename, directory fsync: crash-safe replacement),
// 0 elsewhere (standard streams only; a crash may then leave a partial temporary).
#define DFTUNE_IO_POSIX 1
#else
// (0: no POSIX file calls on this platform.)
#define DFTUNE_IO_POSIX 0
#endif

DFTUNE_NAMESPACE_BEGIN

namespace io {

namespace detail {

inline std::string errno_text(int e) {
  return e == 0 ? std::string("unknown error") : std::string(std::strerror(e));
}

[[noreturn]] inline void fail_file(const std::filesystem::path& path, std::string_view what, int e) {
  dftune::detail::fail<io_error>("path", path, std::string(what) + " (" + errno_text(e) + ")");
}

// Runs f(); rethrows a dftune::error with `name: ` in front, so every message says which file.
template <class F>
decltype(auto) named(std::string_view name, F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const dftune::error& e) {
    dftune::detail::throw_error(e.kind(), std::string(name) + ": " + e.what());
  }
}

// 8 hex digits naming this machine, so that a temporary left on a shared file system is only ever
// judged (dead or alive) by a process of the machine that wrote it.
inline std::string host_tag() {
  char name[256] = {};
#if DFTUNE_IO_POSIX
  if (::gethostname(name, sizeof name - 1) != 0) name[0] = '\0';
#endif
  const std::uint64_t h = fnv1a64(std::as_bytes(std::span<const char>(name, std::strlen(name))));
  char out[9];
  std::snprintf(out, sizeof out, "%08x", static_cast<unsigned>(h & 0xFFFFFFFFu));
  return out;
}

inline long process_id() {
#if DFTUNE_IO_POSIX
  return static_cast<long>(::getpid());
#else
  return 0;
#endif
}

// False only when the process is known to be gone.
inline bool process_alive(long pid) {
#if DFTUNE_IO_POSIX
  if (pid <= 0 || pid > std::numeric_limits<::pid_t>::max()) return true;
  return ::kill(static_cast<::pid_t>(pid), 0) == 0 || errno != ESRCH;
#else
  (void)pid;
  return true;
#endif
}

}  // namespace detail

// The file a save to `path` replaces: `path` with every symlink in its last component followed,
// so that saving through a link rewrites the file it points to (atomically, beside that file) and
// leaves the link in place. A dangling link names the file to create.
inline std::filesystem::path resolve_target(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  fs::path p = path;
  for (int hops = 0;; ++hops) {
    std::error_code ec;
    const fs::file_status st = fs::symlink_status(p, ec);
    if (ec || !fs::is_symlink(st)) return p;
    if (hops == 40) dftune::detail::fail("path", path, "a chain of at most 40 symlinks (a loop?)");
    const fs::path to = fs::read_symlink(p, ec);
    if (ec) dftune::detail::fail<io_error>("path", path, "a readable symlink (" + ec.message() + ")");
    p = to.is_absolute() ? to : p.parent_path() / to;
  }
}

// Temporaries are named <file>.tmp-<host>-<pid>-<random>: found by their prefix, and removable
// once their writer is known to be dead.
inline std::string temporary_prefix(const std::filesystem::path& target) {
  return target.filename().string() + ".tmp-";
}

// Removes the temporaries that processes of this machine, now dead (kill -9, a crash), left
// beside `target` (a resolved path). A live writer's temporary, another machine's, and anything
// not named like a temporary are left alone; failures are ignored (the next call tries again).
inline void remove_stale_temporaries(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string prefix = temporary_prefix(target) + detail::host_tag() + "-";
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  std::vector<fs::path> stale;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = name.substr(prefix.size());  // <pid>-<random>
    const std::size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || dash > 18) continue;
    long pid = 0;
    bool digits = true;
    for (std::size_t k = 0; k < dash; ++k) {
      if (rest[k] < '0' || rest[k] > '9') digits = false;
      else pid = pid * 10 + (rest[k] - '0');
    }
    if (!digits || pid == detail::process_id() || detail::process_alive(pid)) continue;
    stale.push_back(it->path());
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
}

// A file written whole to a temporary beside its target, then renamed over it by commit(). The
// destructor of an uncommitted AtomicFile removes the temporary, so an error (a full disk, an
// exception from the code writing it) leaves the target as it was, byte for byte. Creating one
// first removes the temporaries dead processes left for the same target. Write errors throw
// dftune::error naming the path and the system's reason.
class AtomicFile final : public ByteSink {
 public:
  // Creates the temporary beside `path` (symlinks followed): dftune::io_error when it cannot.
  explicit AtomicFile(const std::filesystem::path& path) : path_(path), target_(resolve_target(path)) {
    remove_stale_temporaries(target_);
    std::random_device rd;
    std::ostringstream name;
    name << temporary_prefix(target_) << detail::host_tag() << '-' << detail::process_id() << '-' << std::hex
         << ((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
    tmp_ = target_.has_parent_path() ? target_.parent_path() / name.str() : std::filesystem::path(name.str());
#if DFTUNE_IO_POSIX
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) detail::fail_file(path_, "a writable location: cannot create its temporary file", errno);
#else
    out_.open(tmp_, std::ios::binary | std::ios::in | std::ios::out | std::ios::trunc);
    if (!out_) detail::fail_file(path_, "a writable location: cannot create its temporary file", errno);
#endif
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (committed_) return;
    close_quietly();
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }

  // Appends bytes to the temporary; dftune::io_error naming the path and errno's text (ENOSPC …).
  void write(std::span<const std::byte> bytes) override {
#if DFTUNE_IO_POSIX
    while (!bytes.empty()) {
      const ::ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) detail::fail_file(path_, "a writable location: writing its temporary file failed", errno);
      bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
#else
    out_.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out_) detail::fail_file(path_, "a writable location: writing its temporary file failed", errno);
#endif
  }
  // Overwrites bytes already written (a checksum known only at the end).
  void write_at(std::uint64_t offset, std::span<const std::byte> bytes) {
#if DFTUNE_IO_POSIX
    while (!bytes.empty()) {
      const ::ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<::off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) detail::fail_file(path_, "a writable location: writing its temporary file failed", errno);
      bytes = bytes.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
#else
    const auto end = out_.tellp();
    out_.seekp(static_cast<std::streamoff>(offset));
    out_.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out_.seekp(end);
    if (!out_) detail::fail_file(path_, "a writable location: writing its temporary file failed", errno);
#endif
  }
  // Flushes the temporary to disk and renames it over the target; then the rename itself is made
  // durable (best effort: some file systems refuse fsync on a directory).
  void commit() {
#if DFTUNE_IO_POSIX
    const int fd = fd_;
    fd_ = -1;
    if (::fsync(fd) != 0) {
      const int e = errno;
      ::close(fd);
      detail::fail_file(path_, "a writable location: flushing its temporary file failed", e);
    }
    if (::close(fd) != 0) detail::fail_file(path_, "a writable location: closing its temporary file failed", errno);
#else
    out_.close();
    if (!out_) detail::fail_file(path_, "a writable location: flushing its temporary file failed", errno);
#endif
    std::error_code ec;
    std::filesystem::rename(tmp_, target_, ec);
    if (ec) dftune::detail::fail<io_error>("path", path_, "a location the temporary file can be renamed to (" + ec.message() + ")");
    committed_ = true;
#if DFTUNE_IO_POSIX
    const std::filesystem::path dir = target_.has_parent_path() ? target_.parent_path() : std::filesystem::path(".");
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
#endif
  }
  // The file commit() replaces (the path with its symlinks followed), and the temporary.
  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& temporary() const { return tmp_; }  // the temporary being written

 private:
  void close_quietly() {
#if DFTUNE_IO_POSIX
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
#else
    out_.close();
#endif
  }
  std::filesystem::path path_, target_, tmp_;
  bool committed_ = false;
#if DFTUNE_IO_POSIX
  int fd_ = -1;
#else
  std::fstream out_;
#endif
};

// A regular file opened for reading, with its size.
class FileSource final : public ByteSource {
 public:
  // Opens `path` for reading: dftune::io_error when the system refuses it (missing, unreadable),
  // dftune::argument_error when it is not a regular file.
  explicit FileSource(const std::filesystem::path& path) : path_(path) {
#if DFTUNE_IO_POSIX
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) detail::fail_file(path, "a readable checkpoint file", errno);
    struct ::stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int e = errno;
      ::close(fd_);
      detail::fail_file(path, "a readable checkpoint file: cannot tell its size", e);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      dftune::detail::fail("path", path, "a regular file (a checkpoint)");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
#else
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      dftune::detail::fail("path", path, ec ? "a readable checkpoint file (" + ec.message() + ")"
                                            : std::string("a regular file (a checkpoint)"));
    size_ = std::filesystem::file_size(path, ec);
    if (ec) dftune::detail::fail<io_error>("path", path, "a readable checkpoint file (" + ec.message() + ")");
    in_.open(path, std::ios::binary);
    if (!in_) detail::fail_file(path, "a readable checkpoint file", errno);
#endif
  }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  ~FileSource() {
#if DFTUNE_IO_POSIX
    ::close(fd_);
#endif
  }
  // Reads the next bytes of the file (0 at its end); dftune::io_error on a read error.
  std::size_t read(std::span<std::byte> out) override {
#if DFTUNE_IO_POSIX
    for (;;) {
      const ::ssize_t n = ::read(fd_, out.data(), out.size());
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR) detail::fail_file(path_, "a readable checkpoint file: reading it failed", errno);
    }
#else
    in_.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (in_.bad()) detail::fail_file(path_, "a readable checkpoint file: reading it failed", errno);
    return static_cast<std::size_t>(in_.gcount());
#endif
  }
  // The file's size when it was opened.
  std::uint64_t size() const { return size_; }

 private:
  std::filesystem::path path_;
  std::uint64_t size_ = 0;
#if DFTUNE_IO_POSIX
  int fd_ = -1;
#else
  std::ifstream in_;
#endif
};

// Writes `bytes` to `path` atomically (an AtomicFile).
inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace io

DFTUNE_NAMESPACE_END
