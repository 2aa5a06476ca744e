#pragma once
// UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates (U+D800..U+DFFF), nothing above
// U+10FFFF. The tokenizer's regexes run with PCRE2's UTF check turned off (it would rescan every
// piece), so its input is checked once, here, with the offset of the first bad byte for the error.
#include <dftune/config.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

DFTUNE_NAMESPACE_BEGIN

namespace hf::utf8 {

// Appends code point c (< 0x110000) to `out` as UTF-8.
inline void append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// The code point at text[pos], advancing pos past it; nothing (pos unchanged) if the bytes there
// are not a valid UTF-8 sequence.
inline std::optional<char32_t> decode(std::string_view text, std::size_t& pos) {
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(text[pos + k]); };
  const std::size_t left = text.size() - pos;
  if (left == 0) return std::nullopt;
  const unsigned char b0 = at(0);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  std::size_t n = 0;
  char32_t c = 0, min = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) n = 2, c = b0 & 0x1F, min = 0x80;
  else if (b0 >= 0xE0 && b0 <= 0xEF) n = 3, c = b0 & 0x0F, min = 0x800;
  else if (b0 >= 0xF0 && b0 <= 0xF4) n = 4, c = b0 & 0x07, min = 0x10000;
  else return std::nullopt;
  if (left < n) return std::nullopt;
  for (std::size_t k = 1; k < n; ++k) {
    if ((at(k) & 0xC0) != 0x80) return std::nullopt;
    c = (c << 6) | (at(k) & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return std::nullopt;
  pos += n;
  return c;
}

// The offset of the first byte that does not start a valid sequence, or npos if `text` is valid.
inline std::size_t first_invalid(std::string_view text) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {  // the common case, without the decoder
      ++pos;
      continue;
    }
    if (!decode(text, pos)) return pos;
  }
  return std::string_view::npos;
}

}  // namespace hf::utf8

DFTUNE_NAMESPACE_END
