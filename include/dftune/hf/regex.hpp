#pragma once
// The pre-tokenizers' split patterns, run by PCRE2 in UTF mode with Unicode properties (PCRE2_UCP:
// `\s`, `\d`, `\w` and `\p{L}`, `\p{N}` follow the Unicode tables, as the Oniguruma engine of Hugging Face's
// tokenizers does), JIT-compiled where the platform allows. Needs libpcre2-8 (target dftune::hf).
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <string_view>

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// A compiled PCRE2 pattern with the pre-tokenizers' Split behaviour "Isolated" (split()).
class Regex {
 public:
  static constexpr std::size_t max_pattern = 1 << 16;  // bytes; a longer pattern is refused

  // Compiles `pattern`; a bad one is a dftune::error naming `field` and PCRE2's reason.
  Regex(std::string_view pattern, std::string_view field) : pattern_(pattern) {
    if (pattern.size() > max_pattern)
      dftune::detail::fail(field, "a pattern of " + std::to_string(pattern.size()) + " bytes",
                   "at most " + std::to_string(max_pattern) + " bytes");
    int code = 0;
    PCRE2_SIZE at = 0;
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                  &code, &at, nullptr);
    if (c == nullptr)
      dftune::detail::fail(field, "\"" + std::string(pattern) + "\"",
                   "a regular expression PCRE2 compiles (" + message(code) + " at offset " + std::to_string(at) + ")");
    code_.reset(c, pcre2_code_free);
    (void)pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // without JIT, pcre2_match interprets: slower, same result
  }

  // The pattern's text.
  const std::string& pattern() const { return pattern_; }

  // Splits valid UTF-8 `text` the way the "Isolated" behaviour does: every match is a piece and so
  // is every non-empty stretch between matches. Calls piece(begin, end) (byte offsets) in order.
  template <class Piece>
  void split(std::string_view text, Piece&& piece) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    if (!md) throw std::bad_alloc();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t pos = 0, emitted = 0;
    while (pos <= text.size()) {
      // The input was checked once (utf8::first_invalid); checking each call would rescan the rest.
      const int rc = pcre2_match(code_.get(), subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) dftune::detail::fail("regex \"" + pattern_ + "\"", message(rc), "a successful match (PCRE2 failed)");
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const std::size_t b = ov[0], e = ov[1];
      if (e > b) {
        if (b > emitted) piece(emitted, b);
        piece(b, e);
        emitted = e;
        pos = e;
      } else {  // an empty match: step over one character
        if (b >= text.size()) break;
        pos = b + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
    if (emitted < text.size()) piece(emitted, text.size());
  }

 private:
  static std::string message(int code) {
    PCRE2_UCHAR buf[256];
    const int n = pcre2_get_error_message(code, buf, sizeof buf);
    return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(n));
  }

  std::string pattern_;
  std::shared_ptr<pcre2_code> code_;
};

}  // namespace hf

DFTUNE_NAMESPACE_END
