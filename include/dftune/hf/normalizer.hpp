#pragma once
// The one normalizer byte-level tokenizers use: Unicode NFC (Qwen2's tokenizer.json), so that "é"
// typed as e + U+0301 tokenizes as the precomposed U+00E9 does. It needs ICU's normalization
// tables: dftune::hf defines DFTUNE_HF_ICU and links ICU where it is found (Debian: libicu-dev);
// without it a tokenizer.json that asks for NFC is refused when it is loaded.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#if defined(DFTUNE_HF_ICU)
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#endif

DFTUNE_NAMESPACE_BEGIN

namespace hf {

// Whether this build normalises to NFC (built with ICU: DFTUNE_HF_ICU); without it a tokenizer
// whose normalizer needs NFC is refused when loaded.
inline constexpr bool has_nfc =
#if defined(DFTUNE_HF_ICU)
    true;
#else
    false;
#endif

// The NFC form of valid UTF-8 `text`, or nothing where `text` is already in NFC (most text: ICU's
// quick check decides without building a copy).
inline std::optional<std::string> nfc(std::string_view text) {
#if defined(DFTUNE_HF_ICU)
  if (text.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    dftune::detail::fail("text", std::to_string(text.size()) + " bytes", "at most 2^31 - 1 bytes per call (ICU's lengths are int32)");
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(err);
  const icu::StringPiece piece(text.data(), static_cast<std::int32_t>(text.size()));
  if (U_SUCCESS(err) && n->isNormalizedUTF8(piece, err) && U_SUCCESS(err)) return std::nullopt;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<std::int32_t>(text.size()));
  err = U_ZERO_ERROR;
  if (n != nullptr) n->normalizeUTF8(0, piece, sink, nullptr, err);
  if (n == nullptr || U_FAILURE(err)) dftune::detail::fail("text", u_errorName(err), "text ICU's NFC normalizer accepts");
  return out;
#else
  (void)text;
  dftune::detail::fail("normalizer", "NFC", "a build with ICU (DFTUNE_HF_ICU; Debian: libicu-dev)");
#endif
}

}  // namespace hf

DFTUNE_NAMESPACE_END
