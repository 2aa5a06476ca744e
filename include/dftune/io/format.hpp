#pragma once
// The binary container of every dftune checkpoint and weights file, and the two calls that stream
// it to and from a path. Everything streams: saving and loading need memory for the state itself, never for a copy of
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
//
// The byte streams are io/bytes.hpp; the atomic file and the file reader, io/atomic_file.hpp.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/io/atomic_file.hpp>
#include <dftune/io/bytes.hpp>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace io {

// The first 8 bytes of every dftune checkpoint: "DFTUNECK".
inline constexpr std::array<char, 8> checkpoint_magic{'D', 'F', 'T', 'U', 'N', 'E', 'C', 'K'};
// 2: the training payload holds StepOptions (max_grad_norm); weights files joined the container.
inline constexpr std::uint32_t checkpoint_version = 2;
// magic (8) · u32 version · u32 kind · u64 payload size · u64 checksum.
inline constexpr std::size_t checkpoint_header_size = 32;

// What a checkpoint holds (the header's kind): a loader refuses a file of another kind by name.
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

// The kind's name for messages ("training"), "unknown" for a number no kind has.
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

// ---- Writer ---------------------------------------------------------------------------------
// Serialises little-endian whatever the host. In memory (default constructor: bytes() holds
// everything written) or streaming into a ByteSink in chunks (large arrays go to the sink as they
// are, without a copy).
class Writer {
 public:
  static constexpr std::size_t chunk = std::size_t{1} << 16;  // bytes buffered before the sink gets them

  Writer() = default;  // in memory
  // Streaming into `sink`, which must outlive the writer (call flush() at the end).
  explicit Writer(ByteSink& sink) : sink_(&sink) { buf_.reserve(chunk); }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // One byte.
  void u8(std::uint8_t v) {
    buf_.push_back(static_cast<std::byte>(v));
    spill();
  }
  void u32(std::uint32_t v) { put_le(v); }                      // 4 bytes, little-endian
  void u64(std::uint64_t v) { put_le(v); }                      // 8 bytes, little-endian
  void f64(double v) { put_le(std::bit_cast<std::uint64_t>(v)); }  // the IEEE bits, little-endian
  // A float (4 bytes) or double (8), bit-exact.
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
  std::uint64_t arrays() const { return arrays_; }  // the number of array() calls so far
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
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();  // array(): no expected size

  // In memory: the payload is `data`; offsets in messages start at base_offset.
  explicit Reader(std::span<const std::byte> data, std::uint64_t base_offset = 0)
      : win_(data), size_(data.size()), fetched_(data.size()), base_(base_offset) {}
  // Streaming: the payload is the next `size` bytes of `source`, which must have them.
  Reader(ByteSource& source, std::uint64_t size, std::uint64_t base_offset = 0)
      : src_(&source), buf_(std::size_t{1} << 16), size_(size), base_(base_offset) {}
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // The next byte; `field` names it in the error if the payload has ended.
  std::uint8_t u8(std::string_view field) { return get_le<std::uint8_t>(field); }
  std::uint32_t u32(std::string_view field) { return get_le<std::uint32_t>(field); }  // as u8, 4 bytes
  std::uint64_t u64(std::string_view field) { return get_le<std::uint64_t>(field); }  // as u8, 8 bytes
  double f64(std::string_view field) { return std::bit_cast<double>(get_le<std::uint64_t>(field)); }  // Writer::f64's
  // A float or double as Writer::scalar wrote it.
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
      dftune::detail::fail(field, "size " + std::to_string(n) + " in the file", "size " + std::to_string(expected));
    if (expected == npos && n > limit_)
      dftune::detail::fail(field, "size " + std::to_string(n) + " in the file",
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
  void limit_arrays() { limit_ = std::numeric_limits<std::uint64_t>::max(); }  // no limit

  std::uint64_t remaining() const { return size_ - pos_; }  // payload bytes not read yet
  std::uint64_t offset() const { return base_ + pos_; }     // where the next read starts, in the file
  // Throws dftune::argument_error unless the whole payload was read (trailing bytes are an error).
  void expect_end() const {
    if (remaining() != 0)
      dftune::detail::fail("payload", std::to_string(remaining()) + " unread bytes at offset " + std::to_string(offset()),
                   "the payload to end after its last field");
  }
  // A size check that makes reading on pointless (the payload cannot be what its fields say):
  // throws, and tells read_checkpoint not to hash the rest before reporting it (give_up).
  void expect_remaining(std::uint64_t n, std::string_view field, std::string_view what) {
    if (remaining() == n) return;
    give_up();
    dftune::detail::fail(field, std::to_string(remaining()) + " bytes left in the payload",
                 std::to_string(n) + " (" + std::string(what) + "; the file is corrupted or truncated)");
  }
  // Marks the error the parser is about to throw as final: read_checkpoint reports it without
  // hashing the rest of the payload first (which could be large) to check for corruption.
  void give_up() { gave_up_ = true; }
  bool gave_up() const { return gave_up_; }  // whether give_up() was called
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
    dftune::detail::fail(field,
                 "a field of " + std::to_string(want) + " bytes at offset " + std::to_string(offset()) + " with " +
                     std::to_string(remaining()) + " left",
                 "a complete payload (the file is truncated or corrupted)");
  }
  // Reads up to out.size() (> 0) bytes of the payload from the source; never 0.
  std::size_t pull(std::span<std::byte> out) {
    const std::size_t n = src_ == nullptr ? 0 : src_->read(out);
    if (n == 0)
      dftune::detail::fail("payload", "the end of the data after " + std::to_string(base_ + fetched_) + " bytes",
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
// The 32 bytes before every payload.
struct CheckpointHeader {
  std::uint32_t version = checkpoint_version;       // the format; a reader takes only its own
  CheckpointKind kind = CheckpointKind::estimator;  // what the payload holds
  std::uint64_t payload_size = 0;                   // bytes after the header: the rest of the file
  std::uint64_t checksum = 0;                       // FNV-1a-64 of the payload
};

// The header's bytes, magic first.
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
    dftune::detail::fail("checkpoint", "a file of " + std::to_string(file_size) + " bytes",
                 "at least the " + std::to_string(checkpoint_header_size) + "-byte header (the file is truncated)");
  Reader h{std::span<const std::byte>(bytes)};
  for (std::size_t k = 0; k < checkpoint_magic.size(); ++k)
    if (h.u8("magic") != static_cast<std::uint8_t>(checkpoint_magic[k]))
      dftune::detail::fail("magic", "other bytes", "\"DFTUNECK\" (this is not a dftune checkpoint)");
  CheckpointHeader out;
  out.version = h.u32("version");
  if (out.version != checkpoint_version)
    dftune::detail::fail("version", out.version,
                 std::to_string(checkpoint_version) + " (the only checkpoint format this build of dftune reads)");
  const std::uint32_t k = h.u32("kind");
  if (k != static_cast<std::uint32_t>(kind))
    dftune::detail::fail("kind", std::to_string(k) + " (" + kind_name(k) + ")",
                 std::to_string(static_cast<std::uint32_t>(kind)) + " (" + kind_name(static_cast<std::uint32_t>(kind)) +
                     ")");
  out.kind = kind;
  out.payload_size = h.u64("payload size");
  const std::uint64_t have = file_size - checkpoint_header_size;
  if (out.payload_size > have)
    dftune::detail::fail("payload size", out.payload_size,
                 "at most the " + std::to_string(have) + " bytes that follow the header (the file is truncated)");
  if (out.payload_size < have)
    dftune::detail::fail("payload size", out.payload_size,
                 std::to_string(have) + ", the bytes that follow the header (the file has trailing bytes)");
  out.checksum = h.u64("checksum");
  return out;
}

// Throws dftune::argument_error "checksum: got 0x… in the header, expected 0x…, the FNV-1a-64 of
// the contents (the file is corrupted)" unless they are equal.
inline void check_checksum(std::uint64_t stored, std::uint64_t computed) {
  if (stored == computed) return;
  std::ostringstream got, want;
  got << std::hex << "0x" << stored << " in the header";
  want << std::hex << "0x" << computed << ", the FNV-1a-64 of the contents (the file is corrupted)";
  dftune::detail::fail("checksum", got.str(), want.str());
}

// Reads one checkpoint of `kind` from `source`, whose total size is `file_size`: the checks of the
// header comment, then parse(Reader&) over the streamed payload, which returns what it read (and
// must not touch the objects being loaded into: the checksum is verified after it returns). The
// payload must end where the parser stops.
template <class Parse>
auto read_checkpoint(ByteSource& source, std::uint64_t file_size, CheckpointKind kind, std::uint64_t max_payload,
                     Parse&& parse) {
  if (file_size < checkpoint_header_size)
    dftune::detail::fail("checkpoint", "a file of " + std::to_string(file_size) + " bytes",
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
    error_kind kind = error_kind::argument;
    try {
      Reader in(hashed, max_payload, checkpoint_header_size);
      (void)parse(in);
    } catch (const dftune::error& e) {
      error_text = e.what();
      kind = e.kind();
    }
    const std::string size = std::to_string(h.payload_size), most = std::to_string(max_payload);
    if (!error_text.empty())
      dftune::detail::throw_error(kind, error_text + " (the payload of " + size + " bytes is larger than the " +
                                            most + " this object can take, so the checksum was not verified)");
    dftune::detail::fail("payload size", h.payload_size,
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

// ---- files (io/atomic_file.hpp) -------------------------------------------------------------
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
