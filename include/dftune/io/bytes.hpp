#pragma once
// The byte streams under dftune's file formats (io/format.hpp) and atomic files (io/atomic_file.hpp):
// sinks and sources, the pass-through hashing ones, and the FNV-1a-64 hash the container's checksum
// uses.
#include <dftune/config.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

DFTUNE_NAMESPACE_BEGIN

namespace io {

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
  // Takes every byte of `bytes`, or throws (dftune::io_error from a file).
  virtual void write(std::span<const std::byte> bytes) = 0;

 protected:
  ~ByteSink() = default;
};

// Where a Reader's bytes come from.
class ByteSource {
 public:
  // Fills the start of `out`; returns how many bytes it placed, 0 at the end (or throws).
  virtual std::size_t read(std::span<std::byte> out) = 0;

 protected:
  ~ByteSource() = default;
};

// Counts what it is given: the first pass of write_checkpoint.
class CountingSink final : public ByteSink {
 public:
  void write(std::span<const std::byte> bytes) override { n_ += bytes.size(); }  // counts them
  std::uint64_t size() const { return n_; }  // bytes given so far

 private:
  std::uint64_t n_ = 0;
};

// Hashes what passes through, then hands it on.
class HashingSink final : public ByteSink {
 public:
  // Hands bytes on to `next` (which must outlive it), starting the FNV-1a hash at `hash`.
  HashingSink(ByteSink& next, std::uint64_t hash) : next_(next), hash_(hash) {}
  // Hashes `bytes`, then writes them to next.
  void write(std::span<const std::byte> bytes) override {
    hash_ = fnv1a64(bytes, hash_);
    n_ += bytes.size();
    next_.write(bytes);
  }
  std::uint64_t hash() const { return hash_; }  // FNV-1a of every byte written so far
  std::uint64_t size() const { return n_; }     // bytes written so far

 private:
  ByteSink& next_;
  std::uint64_t hash_;
  std::uint64_t n_ = 0;
};

// Hashes what is read through it (the checksum of a checkpoint's payload while it is parsed).
class HashingSource final : public ByteSource {
 public:
  // Reads from `from` (which must outlive it), starting the FNV-1a hash at `hash`.
  HashingSource(ByteSource& from, std::uint64_t hash) : from_(from), hash_(hash) {}
  // Reads from the source and hashes what it got.
  std::size_t read(std::span<std::byte> out) override {
    const std::size_t n = from_.read(out);
    hash_ = fnv1a64(out.first(n), hash_);
    return n;
  }
  std::uint64_t hash() const { return hash_; }  // FNV-1a of every byte read so far

 private:
  ByteSource& from_;
  std::uint64_t hash_;
};

// Reads a buffer in memory (decode_checkpoint's source).
class SpanSource final : public ByteSource {
 public:
  // Reads `data`, which must outlive it.
  explicit SpanSource(std::span<const std::byte> data) : data_(data) {}
  // Copies the next bytes of the buffer.
  std::size_t read(std::span<std::byte> out) override {
    const std::size_t n = out.size() < data_.size() ? out.size() : data_.size();
    if (n != 0) std::memcpy(out.data(), data_.data(), n);
    data_ = data_.subspan(n);
    return n;
  }

 private:
  std::span<const std::byte> data_;
};

}  // namespace io

DFTUNE_NAMESPACE_END
