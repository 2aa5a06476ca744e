#pragma once
// One JSON object per line (JSON Lines, https://jsonlines.org) for per-step metrics, readable by
// jq, pandas.read_json(lines=True) or any JSON parser without a schema:
//
//   JsonRecord rec;
//   rec.add("step", 12).add("loss", 0.25).add("method", "DFT");
//   out << rec.str() << '\n';                  // {"step": 12, "loss": 0.25, "method": "DFT"}
//
// Numbers are written in the shortest form that reads back to the same double (std::to_chars);
// JSON has no NaN or infinity, so a non-finite number is written as null. Keys and strings are
// escaped (quote, backslash, control characters); a key given twice is an error.
#include <dftune/config.hpp>
#include <dftune/error.hpp>

#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

// One JSON object, built key by key, for a JSON Lines log (one object per training step).
class JsonRecord {
 public:
  // Adds key: value; a NaN or infinite value is written as null.
  JsonRecord& add(std::string_view key, double value) {
    begin(key);
    if (!std::isfinite(value)) {
      body_ += "null";
      return *this;
    }
    char buf[32];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
    if (ec != std::errc()) detail::fail("value", value, "a number std::to_chars can write");  // unreachable: 32 chars always fit
    body_.append(buf, end);
    return *this;
  }
  // Adds key: an integer value.
  template <std::integral I>
    requires(!std::same_as<I, bool>)
  JsonRecord& add(std::string_view key, I value) {
    begin(key);
    body_ += std::to_string(value);
    return *this;
  }
  // Adds key: true or false.
  JsonRecord& add(std::string_view key, bool value) {
    begin(key);
    body_ += value ? "true" : "false";
    return *this;
  }
  // Adds key: a string value, escaped as JSON requires.
  JsonRecord& add(std::string_view key, std::string_view value) {
    begin(key);
    quote(value);
    return *this;
  }
  // Adds key: a string value, escaped as JSON requires.
  JsonRecord& add(std::string_view key, const char* value) { return add(key, std::string_view(value)); }

  // Whether key has been added.
  bool contains(std::string_view key) const {
    for (const std::string& k : keys_)
      if (k == key) return true;
    return false;
  }
  // The number of keys added.
  std::size_t size() const { return keys_.size(); }
  // The object on one line, without the newline.
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void begin(std::string_view key) {
    if (contains(key)) detail::fail("key", std::string(key), "a key not yet in the record");
    if (!keys_.empty()) body_ += ", ";
    keys_.emplace_back(key);
    quote(key);
    body_ += ": ";
  }
  void quote(std::string_view s) {
    body_ += '"';
    for (const char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      switch (c) {
        case '"': body_ += "\\\""; break;
        case '\\': body_ += "\\\\"; break;
        case '\n': body_ += "\\n"; break;
        case '\r': body_ += "\\r"; break;
        case '\t': body_ += "\\t"; break;
        default:
          if (c < 0x20) {
            static constexpr char hex[] = "0123456789abcdef";
            body_ += "\\u00";
            body_ += hex[c >> 4];
            body_ += hex[c & 15];
          } else {
            body_ += ch;  // UTF-8 passes through unchanged
          }
      }
    }
    body_ += '"';
  }

  std::string body_;
  std::vector<std::string> keys_;
};

DFTUNE_NAMESPACE_END
