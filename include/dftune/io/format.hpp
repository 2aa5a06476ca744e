#pragma once
// The binary container of every dftune checkpoint, and the file operations around it.
//
// Layout (all integers and floats little-endian, floats as their IEEE-754 bit patterns):
//
//   offset  size  field
//        0     8  magic "DFTUNECK"
//        8     4  u32 format version (checkpoint_version; a reader refuses any other)
//       12     4  u32 kind (CheckpointKind: what the payload holds)
//       16     8  u64 payload size P in bytes
//       24     8  u64 checksum: FNV-1a-64 over bytes [0, 24) followed by the payload
//       32     P  payload (see checkpoint.hpp)
//
// The version is checked before the checksum, so a file from a future format gets "version"
// rather than "corrupted" as its error. A file is written whole to a temporary file beside the
// target, flushed to disk, then renamed over the target: a crash leaves the old file or the new
// one, never half of one.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <array>
#include <bit>
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
#include <type_traits>
#include <vector>

#if __has_include(<unistd.h>) && __has_include(<fcntl.h>)
#include <fcntl.h>
#include <unistd.h>
#define DFTUNE_IO_POSIX 1
#else
#define DFTUNE_IO_POSIX 0
#endif

DFTUNE_NAMESPACE_BEGIN

namespace io {

inline constexpr std::array<char, 8> checkpoint_magic{'D', 'F', 'T', 'U', 'N', 'E', 'C', 'K'};
inline constexpr std::uint32_t checkpoint_version = 1;
inline constexpr std::size_t checkpoint_header_size = 32;

enum class CheckpointKind : std::uint32_t {
  estimator = 1,  // an Estimator's log u state
  training = 2,   // a DftOptimizer: estimator, model parameters, step, inner rule, schedule
  // A sharded checkpoint of a data-parallel run (io/sharded_checkpoint.hpp):
  sharded_optimizer = 16,  // rank 0's file: model parameters, step, inner rule, schedule
  estimator_shard = 17,    // one rank's estimator shard
  manifest = 18,           // the list of a set's files, written last: it commits the set
};

inline const char* kind_name(std::uint32_t kind) {
  switch (kind) {
    case static_cast<std::uint32_t>(CheckpointKind::estimator): return "estimator";
    case static_cast<std::uint32_t>(CheckpointKind::training): return "training";
    case static_cast<std::uint32_t>(CheckpointKind::sharded_optimizer): return "sharded optimizer";
    case static_cast<std::uint32_t>(CheckpointKind::estimator_shard): return "estimator shard";
    case static_cast<std::uint32_t>(CheckpointKind::manifest): return "manifest";
    default: return "unknown";
  }
}

// FNV-1a, 64-bit (Fowler/Noll/Vo); `h` continues a previous call.
inline std::uint64_t fnv1a64(std::span<const std::byte> data, std::uint64_t h = 14695981039346656037ull) {
  for (std::byte b : data) {
    h ^= static_cast<std::uint64_t>(b);
    h *= 1099511628211ull;
  }
  return h;
}

// Serialises to a growing byte buffer, little-endian whatever the host.
class Writer {
 public:
  void u8(std::uint8_t v) { buf_.push_back(static_cast<std::byte>(v)); }
  void u32(std::uint32_t v) { put_le(v); }
  void u64(std::uint64_t v) { put_le(v); }
  void f64(double v) { put_le(std::bit_cast<std::uint64_t>(v)); }
  template <class T>
  void scalar(T v) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8);
    if constexpr (sizeof(T) == 4) put_le(std::bit_cast<std::uint32_t>(v));
    else put_le(std::bit_cast<std::uint64_t>(v));
  }
  // u64 count, then the elements.
  template <class T>
  void array(std::span<const T> x) {
    u64(x.size());
    if constexpr (std::endian::native == std::endian::little && (std::is_floating_point_v<T> || std::is_integral_v<T>)) {
      const auto* p = reinterpret_cast<const std::byte*>(x.data());
      buf_.insert(buf_.end(), p, p + x.size_bytes());
    } else {
      for (const T& v : x) {
        if constexpr (std::is_floating_point_v<T>) scalar(v);
        else put_le(static_cast<std::make_unsigned_t<T>>(v));
      }
    }
  }
  std::vector<std::byte>& bytes() { return buf_; }

 private:
  template <class U>
  void put_le(U v) {
    for (std::size_t k = 0; k < sizeof(U); ++k) buf_.push_back(static_cast<std::byte>((v >> (8 * k)) & 0xFFu));
  }
  std::vector<std::byte> buf_;
};

// Reads what Writer wrote; every read is bounds-checked and an overrun throws dftune::error naming
// the field and the offset, so a truncated or forged payload can never read past its end or
// allocate more than the bytes it has left.
class Reader {
 public:
  Reader(std::span<const std::byte> data, std::size_t base_offset = 0) : data_(data), base_(base_offset) {}

  std::uint8_t u8(std::string_view field) { return static_cast<std::uint8_t>(get_le<std::uint8_t>(field)); }
  std::uint32_t u32(std::string_view field) { return get_le<std::uint32_t>(field); }
  std::uint64_t u64(std::string_view field) { return get_le<std::uint64_t>(field); }
  double f64(std::string_view field) { return std::bit_cast<double>(get_le<std::uint64_t>(field)); }
  template <class T>
  T scalar(std::string_view field) {
    if constexpr (sizeof(T) == 4) return std::bit_cast<T>(get_le<std::uint32_t>(field));
    else return std::bit_cast<T>(get_le<std::uint64_t>(field));
  }
  // u64 count (must equal `expected` unless it is npos), then the elements.
  template <class T>
  std::vector<T> array(std::string_view field, std::size_t expected = npos) {
    const std::uint64_t n = u64(field);
    if (expected != npos && n != expected)
      detail::fail(field, "size " + std::to_string(n) + " in the file", "size " + std::to_string(expected));
    if (n > remaining() / sizeof(T)) overrun(field, n * sizeof(T));  // checked before allocating
    std::vector<T> out(static_cast<std::size_t>(n));
    if constexpr (std::endian::native == std::endian::little && (std::is_floating_point_v<T> || std::is_integral_v<T>)) {
      if (n != 0) std::memcpy(out.data(), data_.data() + pos_, out.size() * sizeof(T));
      pos_ += out.size() * sizeof(T);
    } else {
      for (T& v : out) {
        if constexpr (std::is_floating_point_v<T>) v = scalar<T>(field);
        else v = static_cast<T>(get_le<std::make_unsigned_t<T>>(field));
      }
    }
    return out;
  }
  std::size_t remaining() const { return data_.size() - pos_; }
  void expect_end() const {
    if (remaining() != 0)
      detail::fail("payload", std::to_string(remaining()) + " unread bytes at offset " + std::to_string(base_ + pos_),
                   "the payload to end after its last field");
  }

  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

 private:
  [[noreturn]] void overrun(std::string_view field, std::uint64_t want) const {
    detail::fail(field,
                 "a field of " + std::to_string(want) + " bytes at offset " + std::to_string(base_ + pos_) + " with " +
                     std::to_string(remaining()) + " left",
                 "a complete payload (the file is truncated or corrupted)");
  }
  template <class U>
  U get_le(std::string_view field) {
    if (remaining() < sizeof(U)) overrun(field, sizeof(U));
    U v = 0;
    for (std::size_t k = 0; k < sizeof(U); ++k)
      v = static_cast<U>(v | (static_cast<U>(std::to_integer<unsigned>(data_[pos_ + k])) << (8 * k)));
    pos_ += sizeof(U);
    return v;
  }
  std::span<const std::byte> data_;
  std::size_t base_;
  std::size_t pos_ = 0;
};

// Header + payload: the complete file image.
inline std::vector<std::byte> frame(CheckpointKind kind, std::span<const std::byte> payload) {
  Writer w;
  for (char c : checkpoint_magic) w.u8(static_cast<std::uint8_t>(c));
  w.u32(checkpoint_version);
  w.u32(static_cast<std::uint32_t>(kind));
  w.u64(payload.size());
  const std::uint64_t sum = fnv1a64(payload, fnv1a64(w.bytes()));
  w.u64(sum);
  std::vector<std::byte> out = std::move(w.bytes());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// Checks the header and the checksum of a file image and returns its payload. Errors, in the order
// checked: truncated header, wrong magic, wrong version, wrong kind, truncated payload, trailing
// bytes, checksum mismatch.
inline std::span<const std::byte> unframe(std::span<const std::byte> file, CheckpointKind kind) {
  if (file.size() < checkpoint_header_size)
    detail::fail("checkpoint", "a file of " + std::to_string(file.size()) + " bytes",
                 "at least the " + std::to_string(checkpoint_header_size) + "-byte header (the file is truncated)");
  Reader h(file.first(checkpoint_header_size));
  for (std::size_t k = 0; k < checkpoint_magic.size(); ++k)
    if (h.u8("magic") != static_cast<std::uint8_t>(checkpoint_magic[k]))
      detail::fail("magic", "other bytes", "\"DFTUNECK\" (this is not a dftune checkpoint)");
  const std::uint32_t version = h.u32("version");
  if (version != checkpoint_version)
    detail::fail("version", version,
                 std::to_string(checkpoint_version) + " (the only checkpoint format this build of dftune reads)");
  const std::uint32_t k = h.u32("kind");
  if (k != static_cast<std::uint32_t>(kind))
    detail::fail("kind", std::to_string(k) + " (" + kind_name(k) + ")",
                 std::to_string(static_cast<std::uint32_t>(kind)) + " (" + kind_name(static_cast<std::uint32_t>(kind)) +
                     ")");
  const std::uint64_t size = h.u64("payload size");
  const std::uint64_t have = file.size() - checkpoint_header_size;
  if (size > have)
    detail::fail("payload size", size,
                 "at most the " + std::to_string(have) + " bytes that follow the header (the file is truncated)");
  if (size < have)
    detail::fail("payload size", size,
                 std::to_string(have) + ", the bytes that follow the header (the file has trailing bytes)");
  const std::uint64_t stored = h.u64("checksum");
  const auto payload = file.subspan(checkpoint_header_size);
  const std::uint64_t sum = fnv1a64(payload, fnv1a64(file.first(24)));
  if (sum != stored) {
    std::ostringstream got, want;
    got << std::hex << "0x" << stored << " in the header";
    want << std::hex << "0x" << sum << ", the FNV-1a-64 of the contents (the file is corrupted)";
    detail::fail("checksum", got.str(), want.str());
  }
  return payload;
}

namespace internal {

inline std::string errno_text(int e) {
  return e == 0 ? std::string("unknown error") : std::string(std::strerror(e));
}

[[noreturn]] inline void fail_file(const std::filesystem::path& path, std::string_view what, int e) {
  dftune::detail::fail("path", path, std::string(what) + " (" + errno_text(e) + ")");
}

}  // namespace internal

// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to disk,
// renamed over `path`. On any error the temporary is removed, `path` is as it was, and
// dftune::error names the path and the system's reason.
inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  namespace fs = std::filesystem;
  std::random_device rd;
  std::ostringstream suffix;
  suffix << ".tmp-" << std::hex << ((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
  fs::path tmp = path;
  tmp += suffix.str();
  std::error_code ec;
#if DFTUNE_IO_POSIX
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) internal::fail_file(path, "a writable location: cannot create its temporary file", errno);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ::ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      fs::remove(tmp, ec);
      internal::fail_file(path, "a writable location: writing its temporary file failed", e);
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int e = errno;
    fs::remove(tmp, ec);
    internal::fail_file(path, "a writable location: flushing its temporary file failed", e);
  }
#else
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out) out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      const int e = errno;
      fs::remove(tmp, ec);
      internal::fail_file(path, "a writable location: writing its temporary file failed", e);
    }
  }
#endif
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    dftune::detail::fail("path", path, "a location the temporary file can be renamed to (" + ec.message() + ")");
  }
#if DFTUNE_IO_POSIX
  // Make the rename itself durable; best effort (some file systems refuse fsync on a directory).
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
#endif
}

inline std::vector<std::byte> read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    dftune::detail::fail("path", path, ec ? "a readable checkpoint file (" + ec.message() + ")"
                                          : std::string("a regular file (a checkpoint)"));
  std::ifstream in(path, std::ios::binary);
  if (!in) internal::fail_file(path, "a readable checkpoint file", errno);
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) internal::fail_file(path, "a readable checkpoint file: cannot tell its size", errno);
  in.seekg(0, std::ios::beg);
  std::vector<std::byte> out(static_cast<std::size_t>(size));
  if (size > 0) in.read(reinterpret_cast<char*>(out.data()), size);
  if (!in) internal::fail_file(path, "a readable checkpoint file: reading it failed", errno);
  return out;
}

}  // namespace io

DFTUNE_NAMESPACE_END
