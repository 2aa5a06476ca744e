#pragma once
// The binary container of every dftune checkpoint and weights file, and the file operations around
// it. Everything streams: saving and loading need memory for the state itself, never for a copy of
// the file.
//
// Layout (all integers and floats little-endian, floats as their IEEE-754 bit patterns):
//
//   offset  size  field
//        0     8  magic "DFTUNECK"
//        8     4  u32 format version (checkpoint_version; a reader refuses any other)
//       12     4  u32 kind (CheckpointKind: what the payload holds)
//       16     8  u64 payload size P in bytes
//       24     8  u64 checksum: FNV-1a-64 over bytes [0, 24) followed by the payload
//       32     P  payload (checkpoint.hpp, model/weights_io.hpp)
//
// Writing (write_checkpoint): a first pass of the payload writer only counts bytes (so the header,
// which the checksum covers, knows P before anything is written); the second streams the header
// and payload into a temporary file beside the target while hashing, patches the checksum in,
// flushes the file to disk and renames it over the target. A crash leaves the old file or the new
// one, never half of one; the temporary of a killed process is removed by the next save or load of
// the same path (AtomicFile).
//
// Reading (read_checkpoint) checks, in this order and each before anything costlier: the header
// (magic, version, kind), the declared payload size against the file's size (truncated, trailing
// bytes) and against the most the object being loaded into can take (max_payload) — so a huge or
// sparse file fails after reading at most max_payload bytes, in bounded memory — then streams the
// payload through the caller's parser while hashing it. A corrupted file is reported as "checksum"
// even when the parser stopped first at the damaged field: on a parse error the rest of the
// payload (at most max_payload bytes) is hashed before the error is chosen. Nothing the parser
// builds is returned unless the checksum matches.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if __has_include(<unistd.h>) && __has_include(<fcntl.h>) && __has_include(<sys/stat.h>) && __has_include(<signal.h>)
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#define DFTUNE_IO_POSIX 1
#else
#define DFTUNE_IO_POSIX 0
#endif

DFTUNE_NAMESPACE_BEGIN

namespace io {

inline constexpr std::array<char, 8> checkpoint_magic{'D', 'F', 'T', 'U', 'N', 'E', 'C', 'K'};
// 2: the training payload holds StepOptions (max_grad_norm); weights files joined the container.
inline constexpr std::uint32_t checkpoint_version = 2;
inline constexpr std::size_t checkpoint_header_size = 32;

enum class CheckpointKind : std::uint32_t {
  estimator = 1,  // an Estimator's log u state
  training = 2,   // a DftOptimizer: estimator, model parameters, step, inner rule, schedule
  weights = 3,    // a model's configuration and parameters (model/weights_io.hpp)
  // A sharded checkpoint of a data-parallel run (io/sharded_checkpoint.hpp):
  sharded_optimizer = 16,  // rank 0's file: model parameters, step, inner rule, schedule
  estimator_shard = 17,    // one rank's estimator shard
  manifest = 18,           // the list of a set's files, written last: it commits the set
  negatives = 19,          // sampled negatives and their log π_ref (io/negatives_cache.hpp)
};

inline const char* kind_name(std::uint32_t kind) {
  switch (kind) {
    case static_cast<std::uint32_t>(CheckpointKind::estimator): return "estimator";
    case static_cast<std::uint32_t>(CheckpointKind::training): return "training";
    case static_cast<std::uint32_t>(CheckpointKind::weights): return "weights";
    case static_cast<std::uint32_t>(CheckpointKind::sharded_optimizer): return "sharded optimizer";
    case static_cast<std::uint32_t>(CheckpointKind::estimator_shard): return "estimator shard";
    case static_cast<std::uint32_t>(CheckpointKind::manifest): return "manifest";
    case static_cast<std::uint32_t>(CheckpointKind::negatives): return "negatives";
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

// ---- byte sinks and sources ---------------------------------------------------------------------
// Where a Writer's bytes go, and where a Reader's come from. write() takes every byte or throws;
// read() returns how many bytes it placed (0: the end), or throws.
class ByteSink {
 public:
  virtual void write(std::span<const std::byte> bytes) = 0;

 protected:
  ~ByteSink() = default;
};

class ByteSource {
 public:
  virtual std::size_t read(std::span<std::byte> out) = 0;

 protected:
  ~ByteSource() = default;
};

// Counts what it is given: the first pass of write_checkpoint.
class CountingSink final : public ByteSink {
 public:
  void write(std::span<const std::byte> bytes) override { n_ += bytes.size(); }
  std::uint64_t size() const { return n_; }

 private:
  std::uint64_t n_ = 0;
};

// Hashes what passes through, then hands it on.
class HashingSink final : public ByteSink {
 public:
  HashingSink(ByteSink& next, std::uint64_t hash) : next_(next), hash_(hash) {}
  void write(std::span<const std::byte> bytes) override {
    hash_ = fnv1a64(bytes, hash_);
    n_ += bytes.size();
    next_.write(bytes);
  }
  std::uint64_t hash() const { return hash_; }
  std::uint64_t size() const { return n_; }

 private:
  ByteSink& next_;
  std::uint64_t hash_;
  std::uint64_t n_ = 0;
};

class HashingSource final : public ByteSource {
 public:
  HashingSource(ByteSource& from, std::uint64_t hash) : from_(from), hash_(hash) {}
  std::size_t read(std::span<std::byte> out) override {
    const std::size_t n = from_.read(out);
    hash_ = fnv1a64(out.first(n), hash_);
    return n;
  }
  std::uint64_t hash() const { return hash_; }

 private:
  ByteSource& from_;
  std::uint64_t hash_;
};

class SpanSource final : public ByteSource {
 public:
  explicit SpanSource(std::span<const std::byte> data) : data_(data) {}
  std::size_t read(std::span<std::byte> out) override {
    const std::size_t n = out.size() < data_.size() ? out.size() : data_.size();
    if (n != 0) std::memcpy(out.data(), data_.data(), n);
    data_ = data_.subspan(n);
    return n;
  }

 private:
  std::span<const std::byte> data_;
};

// ---- Writer ---------------------------------------------------------------------------------
// Serialises little-endian whatever the host. In memory (default constructor: bytes() holds
// everything written) or streaming into a ByteSink in chunks (large arrays go to the sink as they
// are, without a copy).
class Writer {
 public:
  static constexpr std::size_t chunk = std::size_t{1} << 16;

  Writer() = default;
  explicit Writer(ByteSink& sink) : sink_(&sink) { buf_.reserve(chunk); }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void u8(std::uint8_t v) {
    buf_.push_back(static_cast<std::byte>(v));
    spill();
  }
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
    ++arrays_;
    if constexpr (std::endian::native == std::endian::little && (std::is_floating_point_v<T> || std::is_integral_v<T>)) {
      raw(std::as_bytes(x));
    } else {
      for (const T& v : x) {
        if constexpr (std::is_floating_point_v<T>) scalar(v);
        else put_le(static_cast<std::make_unsigned_t<T>>(v));
      }
    }
  }
  // Bytes as they are.
  void raw(std::span<const std::byte> b) {
    if (sink_ != nullptr && b.size() >= chunk) {
      flush();
      sink_->write(b);
      flushed_ += b.size();
      return;
    }
    buf_.insert(buf_.end(), b.begin(), b.end());
    spill();
  }
  // Hands buffered bytes to the sink (a no-op in memory).
  void flush() {
    if (sink_ == nullptr || buf_.empty()) return;
    sink_->write(buf_);
    flushed_ += buf_.size();
    buf_.clear();
  }
  // Bytes written so far, and how many arrays among them.
  std::uint64_t size() const { return flushed_ + buf_.size(); }
  std::uint64_t arrays() const { return arrays_; }
  // In memory: everything written. Streaming: what is not flushed yet.
  std::vector<std::byte>& bytes() { return buf_; }

 private:
  template <class U>
  void put_le(U v) {
    for (std::size_t k = 0; k < sizeof(U); ++k) buf_.push_back(static_cast<std::byte>((v >> (8 * k)) & 0xFFu));
    spill();
  }
  void spill() {
    if (sink_ != nullptr && buf_.size() >= chunk) flush();
  }
  ByteSink* sink_ = nullptr;
  std::vector<std::byte> buf_;
  std::uint64_t flushed_ = 0;
  std::uint64_t arrays_ = 0;
};

// ---- Reader ---------------------------------------------------------------------------------
// Reads what Writer wrote, from memory or streamed from a ByteSource through a small buffer. Every
// read is bounds-checked against the payload's declared size: an overrun throws dftune::error
// naming the field and the offset, so a truncated or forged payload can never read past its end
// or allocate more than the bytes it has left.
class Reader {
 public:
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

  // In memory: the payload is `data`; offsets in messages start at base_offset.
  explicit Reader(std::span<const std::byte> data, std::uint64_t base_offset = 0)
      : win_(data), size_(data.size()), fetched_(data.size()), base_(base_offset) {}
  // Streaming: the payload is the next `size` bytes of `source`, which must have them.
  Reader(ByteSource& source, std::uint64_t size, std::uint64_t base_offset = 0)
      : src_(&source), buf_(std::size_t{1} << 16), size_(size), base_(base_offset) {}
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::uint8_t u8(std::string_view field) { return get_le<std::uint8_t>(field); }
  std::uint32_t u32(std::string_view field) { return get_le<std::uint32_t>(field); }
  std::uint64_t u64(std::string_view field) { return get_le<std::uint64_t>(field); }
  double f64(std::string_view field) { return std::bit_cast<double>(get_le<std::uint64_t>(field)); }
  template <class T>
  T scalar(std::string_view field) {
    if constexpr (sizeof(T) == 4) return std::bit_cast<T>(get_le<std::uint32_t>(field));
    else return std::bit_cast<T>(get_le<std::uint64_t>(field));
  }

  // u64 count (must equal `expected` unless it is npos; without an expected size it must respect
  // limit_arrays), then the elements. The count is checked against the bytes left before
  // allocating.
  template <class T>
  std::vector<T> array(std::string_view field, std::size_t expected = npos) {
    const std::uint64_t n = u64(field);
    if (expected != npos && n != expected)
      detail::fail(field, "size " + std::to_string(n) + " in the file", "size " + std::to_string(expected));
    if (expected == npos && n > limit_)
      detail::fail(field, "size " + std::to_string(n) + " in the file",
                   "at most " + std::to_string(limit_) + " elements (" + limit_reason_ + ")");
    if (n > remaining() / sizeof(T)) overrun(field, n * sizeof(T));
    std::vector<T> out(static_cast<std::size_t>(n));
    if constexpr (std::endian::native == std::endian::little && (std::is_floating_point_v<T> || std::is_integral_v<T>)) {
      bytes(std::as_writable_bytes(std::span<T>(out)), field);
    } else {
      for (T& v : out) {
        if constexpr (std::is_floating_point_v<T>) v = scalar<T>(field);
        else v = static_cast<T>(get_le<std::make_unsigned_t<T>>(field));
      }
    }
    return out;
  }

  // The next out.size() bytes as they are.
  void bytes(std::span<std::byte> out, std::string_view field) {
    if (out.size() > remaining()) overrun(field, out.size());
    const std::size_t from_window = out.size() < win_.size() ? out.size() : win_.size();
    if (from_window != 0) std::memcpy(out.data(), win_.data(), from_window);
    win_ = win_.subspan(from_window);
    pos_ += from_window;
    std::span<std::byte> rest = out.subspan(from_window);
    while (!rest.empty()) {  // straight from the source, no copy through the buffer
      const std::size_t n = pull(rest);
      rest = rest.subspan(n);
      pos_ += n;
    }
  }

  // Arrays read without an expected size hold at most max_elements (reason: for the message):
  // a rule's moments, say, are no longer than the model's parameters. limit_arrays() lifts it.
  void limit_arrays(std::uint64_t max_elements, std::string reason) {
    limit_ = max_elements;
    limit_reason_ = std::move(reason);
  }
  void limit_arrays() { limit_ = std::numeric_limits<std::uint64_t>::max(); }

  std::uint64_t remaining() const { return size_ - pos_; }
  std::uint64_t offset() const { return base_ + pos_; }
  void expect_end() const {
    if (remaining() != 0)
      detail::fail("payload", std::to_string(remaining()) + " unread bytes at offset " + std::to_string(offset()),
                   "the payload to end after its last field");
  }
  // A size check that makes reading on pointless (the payload cannot be what its fields say):
  // throws, and tells read_checkpoint not to hash the rest before reporting it (give_up).
  void expect_remaining(std::uint64_t n, std::string_view field, std::string_view what) {
    if (remaining() == n) return;
    give_up();
    detail::fail(field, std::to_string(remaining()) + " bytes left in the payload",
                 std::to_string(n) + " (" + std::string(what) + "; the file is corrupted or truncated)");
  }
  // Marks the error the parser is about to throw as final: read_checkpoint reports it without
  // hashing the rest of the payload first (which could be large) to check for corruption.
  void give_up() { gave_up_ = true; }
  bool gave_up() const { return gave_up_; }
  // Consumes what is left (through a HashingSource: hashes it).
  void skip_rest() {
    pos_ += win_.size();
    win_ = {};
    while (pos_ < size_) {
      const std::uint64_t left = size_ - pos_;
      const std::size_t n = pull(std::span<std::byte>(buf_).first(left < buf_.size() ? left : buf_.size()));
      pos_ += n;
    }
  }

 private:
  [[noreturn]] void overrun(std::string_view field, std::uint64_t want) const {
    detail::fail(field,
                 "a field of " + std::to_string(want) + " bytes at offset " + std::to_string(offset()) + " with " +
                     std::to_string(remaining()) + " left",
                 "a complete payload (the file is truncated or corrupted)");
  }
  // Reads up to out.size() (> 0) bytes of the payload from the source; never 0.
  std::size_t pull(std::span<std::byte> out) {
    const std::size_t n = src_ == nullptr ? 0 : src_->read(out);
    if (n == 0)
      detail::fail("payload", "the end of the data after " + std::to_string(base_ + fetched_) + " bytes",
                   std::to_string(base_ + size_) + " bytes (the file shrank while it was read)");
    fetched_ += n;
    return n;
  }
  // Makes the next n (<= 8) bytes contiguous in the window.
  const std::byte* take(std::size_t n, std::string_view field) {
    if (n > remaining()) overrun(field, n);
    if (win_.size() < n) {
      const std::size_t have = win_.size();
      if (have != 0) std::memmove(buf_.data(), win_.data(), have);
      std::size_t filled = have;
      const std::uint64_t unfetched = size_ - fetched_;
      const std::size_t want = static_cast<std::size_t>(
          unfetched < buf_.size() - have ? unfetched : static_cast<std::uint64_t>(buf_.size() - have));
      while (filled < have + want && filled < n) filled += pull(std::span<std::byte>(buf_).subspan(filled, have + want - filled));
      win_ = std::span<const std::byte>(buf_).first(filled);
    }
    const std::byte* p = win_.data();
    win_ = win_.subspan(n);
    pos_ += n;
    return p;
  }
  template <class U>
  U get_le(std::string_view field) {
    const std::byte* p = take(sizeof(U), field);
    U v = 0;
    for (std::size_t k = 0; k < sizeof(U); ++k) v = static_cast<U>(v | (static_cast<U>(std::to_integer<unsigned>(p[k])) << (8 * k)));
    return v;
  }

  ByteSource* src_ = nullptr;
  std::vector<std::byte> buf_;
  std::span<const std::byte> win_;  // fetched, not yet consumed
  std::uint64_t size_ = 0, pos_ = 0, fetched_ = 0, base_ = 0;
  std::uint64_t limit_ = std::numeric_limits<std::uint64_t>::max();
  std::string limit_reason_;
  bool gave_up_ = false;
};

// ---- the header -----------------------------------------------------------------------------
struct CheckpointHeader {
  std::uint32_t version = checkpoint_version;
  CheckpointKind kind = CheckpointKind::estimator;
  std::uint64_t payload_size = 0;
  std::uint64_t checksum = 0;
};

inline std::array<std::byte, checkpoint_header_size> encode_header(const CheckpointHeader& h) {
  Writer w;
  for (char c : checkpoint_magic) w.u8(static_cast<std::uint8_t>(c));
  w.u32(h.version);
  w.u32(static_cast<std::uint32_t>(h.kind));
  w.u64(h.payload_size);
  w.u64(h.checksum);
  std::array<std::byte, checkpoint_header_size> out{};
  std::memcpy(out.data(), w.bytes().data(), out.size());
  return out;
}

// Checks a header against the kind expected and the size of the whole file, before any payload is
// read. Errors, in the order checked: a file shorter than the header, wrong magic, wrong version,
// wrong kind, truncated payload, trailing bytes.
inline CheckpointHeader check_header(std::span<const std::byte, checkpoint_header_size> bytes, CheckpointKind kind,
                                     std::uint64_t file_size) {
  if (file_size < checkpoint_header_size)
    detail::fail("checkpoint", "a file of " + std::to_string(file_size) + " bytes",
                 "at least the " + std::to_string(checkpoint_header_size) + "-byte header (the file is truncated)");
  Reader h{std::span<const std::byte>(bytes)};
  for (std::size_t k = 0; k < checkpoint_magic.size(); ++k)
    if (h.u8("magic") != static_cast<std::uint8_t>(checkpoint_magic[k]))
      detail::fail("magic", "other bytes", "\"DFTUNECK\" (this is not a dftune checkpoint)");
  CheckpointHeader out;
  out.version = h.u32("version");
  if (out.version != checkpoint_version)
    detail::fail("version", out.version,
                 std::to_string(checkpoint_version) + " (the only checkpoint format this build of dftune reads)");
  const std::uint32_t k = h.u32("kind");
  if (k != static_cast<std::uint32_t>(kind))
    detail::fail("kind", std::to_string(k) + " (" + kind_name(k) + ")",
                 std::to_string(static_cast<std::uint32_t>(kind)) + " (" + kind_name(static_cast<std::uint32_t>(kind)) +
                     ")");
  out.kind = kind;
  out.payload_size = h.u64("payload size");
  const std::uint64_t have = file_size - checkpoint_header_size;
  if (out.payload_size > have)
    detail::fail("payload size", out.payload_size,
                 "at most the " + std::to_string(have) + " bytes that follow the header (the file is truncated)");
  if (out.payload_size < have)
    detail::fail("payload size", out.payload_size,
                 std::to_string(have) + ", the bytes that follow the header (the file has trailing bytes)");
  out.checksum = h.u64("checksum");
  return out;
}

inline void check_checksum(std::uint64_t stored, std::uint64_t computed) {
  if (stored == computed) return;
  std::ostringstream got, want;
  got << std::hex << "0x" << stored << " in the header";
  want << std::hex << "0x" << computed << ", the FNV-1a-64 of the contents (the file is corrupted)";
  detail::fail("checksum", got.str(), want.str());
}

// Reads one checkpoint of `kind` from `source`, whose total size is `file_size`: the checks of the
// header comment, then parse(Reader&) over the streamed payload, which returns what it read (and
// must not touch the objects being loaded into: the checksum is verified after it returns). The
// payload must end where the parser stops.
template <class Parse>
auto read_checkpoint(ByteSource& source, std::uint64_t file_size, CheckpointKind kind, std::uint64_t max_payload,
                     Parse&& parse) {
  if (file_size < checkpoint_header_size)
    detail::fail("checkpoint", "a file of " + std::to_string(file_size) + " bytes",
                 "at least the " + std::to_string(checkpoint_header_size) + "-byte header (the file is truncated)");
  std::array<std::byte, checkpoint_header_size> hb{};
  {
    Reader whole(source, checkpoint_header_size);
    whole.bytes(hb, "header");
  }
  const CheckpointHeader h = check_header(hb, kind, file_size);
  HashingSource hashed(source, fnv1a64(std::span<const std::byte>(hb).first(24)));
  if (h.payload_size > max_payload) {
    // More than the object can take. Hashing it all to tell corruption from another configuration
    // could take minutes (a 40 GiB sparse file): the parser reads at most max_payload bytes, which
    // is all a valid payload for this object would have, and names the first field that differs
    // (usually more telling: "scalar size", "num_examples"); if none does, the size is the error.
    std::string error_text;
    try {
      Reader in(hashed, max_payload, checkpoint_header_size);
      (void)parse(in);
    } catch (const dftune::error& e) {
      error_text = e.what();
    }
    const std::string size = std::to_string(h.payload_size), most = std::to_string(max_payload);
    if (!error_text.empty())
      throw dftune::error(error_text + " (the payload of " + size + " bytes is larger than the " + most +
                          " this object can take, so the checksum was not verified)");
    detail::fail("payload size", h.payload_size,
                 "at most " + most +
                     " bytes, the most the object being loaded into can take (a checkpoint of a larger "
                     "configuration, or a corrupted header)");
  }
  Reader in(hashed, h.payload_size, checkpoint_header_size);
  using Result = std::decay_t<decltype(parse(in))>;
  std::optional<Result> result;
  std::exception_ptr parse_error;
  try {
    result.emplace(parse(in));
    in.expect_end();
  } catch (const dftune::error&) {
    if (in.gave_up()) throw;  // the sizes already say the file is broken: do not read on
    parse_error = std::current_exception();
    in.skip_rest();
  }
  check_checksum(h.checksum, hashed.hash());  // corruption first: a damaged field fails the parse too
  if (parse_error) std::rethrow_exception(parse_error);
  return std::move(*result);
}

// The same over a file image in memory.
template <class Parse>
auto decode_checkpoint(std::span<const std::byte> file, CheckpointKind kind, std::uint64_t max_payload, Parse&& parse) {
  SpanSource source(file);
  return read_checkpoint(source, file.size(), kind, max_payload, std::forward<Parse>(parse));
}

// A file image in memory: the header, then what payload(Writer&) writes.
template <class Payload>
std::vector<std::byte> encode_checkpoint(CheckpointKind kind, Payload&& payload) {
  Writer w;
  w.raw(std::array<std::byte, checkpoint_header_size>{});
  payload(w);
  std::vector<std::byte> out = std::move(w.bytes());
  CheckpointHeader h{.kind = kind, .payload_size = out.size() - checkpoint_header_size};
  const auto provisional = encode_header(h);
  h.checksum = fnv1a64(std::span<const std::byte>(out).subspan(checkpoint_header_size),
                       fnv1a64(std::span<const std::byte>(provisional).first(24)));
  const auto header = encode_header(h);
  std::memcpy(out.data(), header.data(), header.size());
  return out;
}

// ---- files ------------------------------------------------------------------------------------
namespace internal {

inline std::string errno_text(int e) {
  return e == 0 ? std::string("unknown error") : std::string(std::strerror(e));
}

[[noreturn]] inline void fail_file(const std::filesystem::path& path, std::string_view what, int e) {
  dftune::detail::fail("path", path, std::string(what) + " (" + errno_text(e) + ")");
}

// Runs f(); rethrows a dftune::error with `name: ` in front, so every message says which file.
template <class F>
decltype(auto) named(std::string_view name, F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const dftune::error& e) {
    throw dftune::error(std::string(name) + ": " + e.what());
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

}  // namespace internal

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
    if (ec) dftune::detail::fail("path", path, "a readable symlink (" + ec.message() + ")");
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
  const std::string prefix = temporary_prefix(target) + internal::host_tag() + "-";
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
    if (!digits || pid == internal::process_id() || internal::process_alive(pid)) continue;
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
  explicit AtomicFile(const std::filesystem::path& path) : path_(path), target_(resolve_target(path)) {
    remove_stale_temporaries(target_);
    std::random_device rd;
    std::ostringstream name;
    name << temporary_prefix(target_) << internal::host_tag() << '-' << internal::process_id() << '-' << std::hex
         << ((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
    tmp_ = target_.has_parent_path() ? target_.parent_path() / name.str() : std::filesystem::path(name.str());
#if DFTUNE_IO_POSIX
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) internal::fail_file(path_, "a writable location: cannot create its temporary file", errno);
#else
    out_.open(tmp_, std::ios::binary | std::ios::in | std::ios::out | std::ios::trunc);
    if (!out_) internal::fail_file(path_, "a writable location: cannot create its temporary file", errno);
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

  void write(std::span<const std::byte> bytes) override {
#if DFTUNE_IO_POSIX
    while (!bytes.empty()) {
      const ::ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) internal::fail_file(path_, "a writable location: writing its temporary file failed", errno);
      bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
#else
    out_.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out_) internal::fail_file(path_, "a writable location: writing its temporary file failed", errno);
#endif
  }
  // Overwrites bytes already written (a checksum known only at the end).
  void write_at(std::uint64_t offset, std::span<const std::byte> bytes) {
#if DFTUNE_IO_POSIX
    while (!bytes.empty()) {
      const ::ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<::off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) internal::fail_file(path_, "a writable location: writing its temporary file failed", errno);
      bytes = bytes.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
#else
    const auto end = out_.tellp();
    out_.seekp(static_cast<std::streamoff>(offset));
    out_.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out_.seekp(end);
    if (!out_) internal::fail_file(path_, "a writable location: writing its temporary file failed", errno);
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
      internal::fail_file(path_, "a writable location: flushing its temporary file failed", e);
    }
    if (::close(fd) != 0) internal::fail_file(path_, "a writable location: closing its temporary file failed", errno);
#else
    out_.close();
    if (!out_) internal::fail_file(path_, "a writable location: flushing its temporary file failed", errno);
#endif
    std::error_code ec;
    std::filesystem::rename(tmp_, target_, ec);
    if (ec) dftune::detail::fail("path", path_, "a location the temporary file can be renamed to (" + ec.message() + ")");
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
  const std::filesystem::path& temporary() const { return tmp_; }

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
  explicit FileSource(const std::filesystem::path& path) : path_(path) {
#if DFTUNE_IO_POSIX
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) internal::fail_file(path, "a readable checkpoint file", errno);
    struct ::stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int e = errno;
      ::close(fd_);
      internal::fail_file(path, "a readable checkpoint file: cannot tell its size", e);
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
    if (ec) dftune::detail::fail("path", path, "a readable checkpoint file (" + ec.message() + ")");
    in_.open(path, std::ios::binary);
    if (!in_) internal::fail_file(path, "a readable checkpoint file", errno);
#endif
  }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  ~FileSource() {
#if DFTUNE_IO_POSIX
    ::close(fd_);
#endif
  }
  std::size_t read(std::span<std::byte> out) override {
#if DFTUNE_IO_POSIX
    for (;;) {
      const ::ssize_t n = ::read(fd_, out.data(), out.size());
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR) internal::fail_file(path_, "a readable checkpoint file: reading it failed", errno);
    }
#else
    in_.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (in_.bad()) internal::fail_file(path_, "a readable checkpoint file: reading it failed", errno);
    return static_cast<std::size_t>(in_.gcount());
#endif
  }
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

// Streams a checkpoint of `kind` to `path` atomically; payload(Writer&) is called twice (count,
// then write) and must write the same bytes both times. An exception from it, or any write error,
// leaves `path` as it was. Returns the header written (a sharded checkpoint's manifest lists it).
template <class Payload>
CheckpointHeader write_checkpoint(const std::filesystem::path& path, CheckpointKind kind, Payload&& payload) {
  CountingSink counter;
  {
    Writer w(counter);
    payload(w);
    w.flush();
  }
  CheckpointHeader h{.kind = kind, .payload_size = counter.size()};
  const auto provisional = encode_header(h);
  AtomicFile file(path);
  file.write(provisional);
  HashingSink hashed(file, fnv1a64(std::span<const std::byte>(provisional).first(24)));
  {
    Writer w(hashed);
    payload(w);
    w.flush();
  }
  if (hashed.size() != h.payload_size)
    dftune::detail::fail("payload", std::to_string(hashed.size()) + " bytes on the writing pass",
                         std::to_string(h.payload_size) + ", the bytes counted first (the state changed while saving)");
  h.checksum = hashed.hash();
  const auto header = encode_header(h);
  file.write_at(24, std::span<const std::byte>(header).subspan(24));
  file.commit();
  return h;
}

// Opens `path` (removing the stale temporaries of earlier saves beside it) and reads it as
// read_checkpoint above.
template <class Parse>
auto read_checkpoint(const std::filesystem::path& path, CheckpointKind kind, std::uint64_t max_payload, Parse&& parse) {
  remove_stale_temporaries(resolve_target(path));
  FileSource source(path);
  return read_checkpoint(source, source.size(), kind, max_payload, std::forward<Parse>(parse));
}

// Writes `bytes` to `path` atomically (an AtomicFile).
inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

// The whole file in memory (tests, tools). Loading never needs it: read_checkpoint streams.
inline std::vector<std::byte> read_file(const std::filesystem::path& path) {
  FileSource source(path);
  if (source.size() > std::numeric_limits<std::size_t>::max())
    dftune::detail::fail("path", path, "a file that fits in memory");
  std::vector<std::byte> out(static_cast<std::size_t>(source.size()));
  Reader in(source, out.size());
  in.bytes(out, "file");
  return out;
}

}  // namespace io

DFTUNE_NAMESPACE_END
