#pragma once
// Turns a fuzzer's bytes into sizes, ids and floats (NaN, ±inf, subnormals and huge values
// included), and a check that aborts loudly: a fuzz finding must crash the target.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

namespace fuzz {

#define FUZZ_CHECK(cond)                                                               \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v |= static_cast<std::uint64_t>(byte()) << (8 * k);
    return v;
  }
  // A small count in [lo, hi], usually, and now and then a value outside it.
  std::size_t count(std::size_t lo, std::size_t hi) {
    const std::uint8_t b = byte();
    if (b == 255) return hi + 1 + byte();
    return lo + b % (hi - lo + 1);
  }
  std::int64_t id(std::int64_t n) {
    const std::uint8_t b = byte();
    if (b >= 250) return b == 250 ? -1 : b == 251 ? n : b == 252 ? std::numeric_limits<std::int64_t>::min() : n + b;
    return static_cast<std::int64_t>(b) % (n > 0 ? n : 1);
  }
  // Mostly moderate numbers, sometimes special ones.
  template <class T>
  T number(double scale = 10.0) {
    const std::uint8_t b = byte();
    switch (b) {
      case 255: return std::numeric_limits<T>::quiet_NaN();
      case 254: return std::numeric_limits<T>::infinity();
      case 253: return -std::numeric_limits<T>::infinity();
      case 252: return std::numeric_limits<T>::max();
      case 251: return std::numeric_limits<T>::lowest();
      case 250: return std::numeric_limits<T>::denorm_min();
      case 249: {  // raw bits
        T v;
        std::uint64_t bits = u64();
        std::memcpy(&v, &bits, sizeof(T));
        return v;
      }
      default: {
        const auto r = static_cast<std::int16_t>(static_cast<std::uint16_t>(byte()) << 8 | byte());
        return static_cast<T>(scale * (static_cast<double>(r) / 32768.0) + (b % 7 == 0 ? -1e3 : 0.0));
      }
    }
  }
  bool empty() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

template <class T>
bool bit_equal(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

}  // namespace fuzz
