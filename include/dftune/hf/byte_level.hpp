#pragma once
// GPT-2's byte-level alphabet (openai/gpt-2 encoder.py, bytes_to_unicode): every byte b gets one
// printable code point, so a vocabulary of byte strings can be written as JSON text. The 188
// printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68, in increasing
// order, get U+0100, U+0101, ... (space, 0x20, is U+0120 'Ġ'). Keys of a byte-level tokenizer.json's
// vocabulary and merges are written in this alphabet; the tokenizer works on raw bytes and converts
// only at load (to_bytes) and for display (to_unicode).
#include <dftune/config.hpp>
#include <dftune/hf/utf8.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

namespace hf::byte_level {

// The code point that stands for byte b.
constexpr std::array<char32_t, 256> byte_to_code_point = [] {
  std::array<char32_t, 256> m{};
  char32_t next = 256;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    m[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return m;
}();

// The byte a code point stands for, or nothing if it is not in the alphabet (all of them lie
// below U+0144).
inline std::optional<std::uint8_t> code_point_to_byte(char32_t c) {
  static const std::array<std::int16_t, 0x144> inverse = [] {
    std::array<std::int16_t, 0x144> m{};
    m.fill(-1);
    for (unsigned b = 0; b < 256; ++b) m[byte_to_code_point[b]] = static_cast<std::int16_t>(b);
    return m;
  }();
  if (c >= inverse.size() || inverse[c] < 0) return std::nullopt;
  return static_cast<std::uint8_t>(inverse[c]);
}

// Raw bytes as byte-level text (UTF-8).
inline std::string to_unicode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) utf8::append(out, byte_to_code_point[b]);
  return out;
}

// Byte-level text (UTF-8) back to raw bytes; nothing if it is not valid UTF-8 or holds a code point
// outside the alphabet.
inline std::optional<std::string> to_bytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    const auto c = utf8::decode(text, pos);
    if (!c) return std::nullopt;
    const auto b = code_point_to_byte(*c);
    if (!b) return std::nullopt;
    out.push_back(static_cast<char>(*b));
  }
  return out;
}

}  // namespace hf::byte_level

DFTUNE_NAMESPACE_END
