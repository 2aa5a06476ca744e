#pragma once
// A cache of sampled negatives: m completions per prompt drawn from the reference model, with
// their log π_ref(y'|x), so that a fine-tuning run samples them once and a restart reuses them.
// Sampling may be interrupted: the file holds the negatives of the first `filled` prompts and a
// restarted run samples on from there.
//
// The file is keyed by a Fingerprint, named parts (the model's weights, the data, the sampling
// options, ...) each hashed with FNV-1a-64. Loading with a fingerprint that differs in any part is
// a dftune::error naming the part: negatives of another model or temperature would silently bias
// the objective, so they are never reused; the caller deletes the file or picks another path.
//
// Container: io/format.hpp (kind negatives; checksummed, bounded against the file and against
// what the data set can hold, written atomically). Payload (kind 19):
//   u64 K, then K × (u64 name length, name bytes, u64 hash)        the fingerprint
//   u64 prompts P · u64 m · u64 max_new · u64 filled F (F <= P)
//   [u64 F·m + 1, offsets i64]  [u64 T, tokens i32]  [u64 F·m, log π_ref f64]
// Negative j of prompt p is tokens[offsets[p·m + j], offsets[p·m + j + 1]), 1..max_new tokens.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/io/format.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace io {

// What the cached negatives depend on (the reference model's weights, the data, the sampling
// options, the seed), as named FNV-1a hashes: a cache whose fingerprint differs from this run's is
// refused, naming the first part that differs. Example:
//
//     io::Fingerprint f;
//     f.add_file("weights", "ref.dftw").add_file("data", "train.jsonl").add_value("temperature", 0.7);
class Fingerprint {
 public:
  static constexpr std::size_t max_parts = 64;  // parts per fingerprint
  static constexpr std::size_t max_name = 256;  // bytes of a part's name
  // One named hash.
  struct Part {
    std::string name;    // what was hashed ("weights")
    std::uint64_t hash;  // FNV-1a-64 of it
    bool operator==(const Part&) const = default;  // same name and hash
  };

  // Adds part `name`: the hash of `bytes`. Names are 1 to 256 bytes and distinct, at most 64 parts
  // (dftune::argument_error otherwise). Returns *this, to chain.
  Fingerprint& add_bytes(std::string_view name, std::span<const std::byte> bytes) { return add(name, fnv1a64(bytes)); }
  // Adds part `name`: the hash of `text`'s bytes.
  Fingerprint& add_text(std::string_view name, std::string_view text) { return add_bytes(name, std::as_bytes(std::span(text))); }
  // An arithmetic value, by its bit pattern (0.7 and 0.7000000000000001 differ, as they should).
  template <class T>
    requires std::is_arithmetic_v<T>
  Fingerprint& add_value(std::string_view name, T v) {
    return add_bytes(name, std::as_bytes(std::span<const T, 1>(&v, 1)));
  }
  // A file's contents, streamed (a model's weights).
  Fingerprint& add_file(std::string_view name, const std::filesystem::path& path) {
    FileSource in(path);
    std::vector<std::byte> buf(std::size_t{1} << 20);
    std::uint64_t h = fnv1a64({});
    while (const std::size_t n = in.read(buf)) h = fnv1a64(std::span<const std::byte>(buf).first(n), h);
    return add(name, h);
  }

  const std::vector<Part>& parts() const { return parts_; }  // in the order added
  bool operator==(const Fingerprint&) const = default;      // the same parts in the same order

 private:
  Fingerprint& add(std::string_view name, std::uint64_t hash) {
    if (name.empty() || name.size() > max_name) dftune::detail::fail("fingerprint part name", "\"" + std::string(name) + "\"", "1 to 256 bytes");
    if (parts_.size() >= max_parts) dftune::detail::fail("fingerprint", std::to_string(parts_.size() + 1) + " parts", "at most 64");
    for (const Part& p : parts_)
      if (p.name == name) dftune::detail::fail("fingerprint part name", "\"" + std::string(name) + "\" twice", "distinct names");
    parts_.push_back({std::string(name), hash});
    return *this;
  }
  std::vector<Part> parts_;
};

// What a cache must fit: the data set's prompt count, m, the longest completion and the vocabulary.
struct NegativesShape {
  std::size_t prompts = 0;  // examples in the data set
  std::size_t m = 0;        // negatives per prompt
  std::size_t max_new = 0;  // the longest completion, in tokens
  std::size_t vocab = 0;    // every token is in [0, vocab)
};

// The negatives of the first filled prompts: negative i (= p·m + j, negative j of prompt p) is
// completion(i), sampled from π_ref, with its log π_ref(completion | prompt) in logp_ref[i].
struct Negatives {
  std::vector<std::int64_t> offsets{0};  // [filled·m + 1]
  std::vector<token_t> tokens;           // every completion's tokens, one after the other
  std::vector<double> logp_ref;  // [filled·m]

  std::size_t count() const { return logp_ref.size(); }  // negatives held
  // Prompts whose m negatives are all here.
  std::size_t filled(std::size_t m) const { return m == 0 ? 0 : count() / m; }
  // Negative i's tokens (i < count(); not checked).
  std::span<const token_t> completion(std::size_t i) const {
    return std::span<const token_t>(tokens).subspan(static_cast<std::size_t>(offsets[i]),
                                                     static_cast<std::size_t>(offsets[i + 1] - offsets[i]));
  }
  // Negative j of prompt p.
  std::span<const token_t> completion(std::size_t p, std::size_t j, std::size_t m) const { return completion(p * m + j); }
  // Appends one negative and its log π_ref.
  void push(std::span<const token_t> completion, double logp) {
    tokens.insert(tokens.end(), completion.begin(), completion.end());
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
    logp_ref.push_back(logp);
  }
};

namespace detail {

inline void validate(const NegativesShape& s) {
  if (s.prompts == 0) dftune::detail::fail("prompts", 0, "at least 1");
  if (s.m == 0) dftune::detail::fail("m", 0, "at least 1 negative per prompt");
  if (s.max_new == 0) dftune::detail::fail("max_new", 0, "at least 1 token per negative");
  if (s.vocab == 0) dftune::detail::fail("vocab", 0, "at least 1");
  (void)dftune::detail::checked_product("prompts·m·max_new", s.prompts, s.m, s.max_new);
}

// The negatives of whole prompts, each 1..max_new tokens in [0, vocab), finite log-probs.
inline void validate(const Negatives& n, const NegativesShape& s) {
  const std::size_t count = n.count();
  if (count % s.m != 0) dftune::detail::fail("logp_ref", "size " + std::to_string(count), "a multiple of m = " + std::to_string(s.m) + " (whole prompts)");
  if (count / s.m > s.prompts) dftune::detail::fail("logp_ref", "negatives of " + std::to_string(count / s.m) + " prompts", "at most prompts = " + std::to_string(s.prompts));
  dftune::detail::check_size("offsets", n.offsets.size(), count + 1);
  if (n.offsets[0] != 0) dftune::detail::fail_at("offsets", 0, n.offsets[0], "0");
  if (n.offsets[count] != static_cast<std::int64_t>(n.tokens.size()))
    dftune::detail::fail_at("offsets", count, n.offsets[count], "tokens.size() = " + std::to_string(n.tokens.size()));
  for (std::size_t i = 0; i < count; ++i) {
    const std::int64_t len = n.offsets[i + 1] - n.offsets[i];
    if (len < 1 || static_cast<std::uint64_t>(len) > s.max_new)
      dftune::detail::fail_at("offsets", i + 1, n.offsets[i + 1], "a completion of 1 to max_new = " + std::to_string(s.max_new) + " tokens");
    if (!std::isfinite(n.logp_ref[i])) dftune::detail::fail_at("logp_ref", i, n.logp_ref[i], "a finite log-probability");
  }
  for (std::size_t t = 0; t < n.tokens.size(); ++t)
    if (n.tokens[t] < 0 || static_cast<std::size_t>(n.tokens[t]) >= s.vocab)
      dftune::detail::fail_at("tokens", t, n.tokens[t], "in [0, vocab = " + std::to_string(s.vocab) + ")");
}

inline void write(Writer& w, const Fingerprint& f, const NegativesShape& s, const Negatives& n) {
  w.u64(f.parts().size());
  for (const auto& p : f.parts()) {
    w.u64(p.name.size());
    w.raw(std::as_bytes(std::span(p.name)));
    w.u64(p.hash);
  }
  for (std::size_t v : {s.prompts, s.m, s.max_new, n.filled(s.m)}) w.u64(v);
  w.array(std::span<const std::int64_t>(n.offsets));
  w.array(std::span<const token_t>(n.tokens));
  w.array(std::span<const double>(n.logp_ref));
}

// The most a file for `s` can hold: how much read_checkpoint may read.
inline std::uint64_t max_payload(const NegativesShape& s) {
  const std::size_t most = dftune::detail::checked_product("prompts·m", s.prompts, s.m);
  std::size_t bytes = 8 + Fingerprint::max_parts * (16 + Fingerprint::max_name) + 32;
  bytes = dftune::detail::checked_add("payload", bytes, dftune::detail::checked_mul("payload", most + 1, 8) + 8);
  bytes = dftune::detail::checked_add("payload", bytes, dftune::detail::checked_mul("payload", dftune::detail::checked_mul("payload", most, s.max_new), sizeof(token_t)) + 8);
  return dftune::detail::checked_add("payload", bytes, dftune::detail::checked_mul("payload", most, 8) + 8);
}

inline Negatives read(Reader& in, const Fingerprint& expected, const NegativesShape& s) {
  const std::uint64_t k = in.u64("fingerprint parts");
  if (k > Fingerprint::max_parts) dftune::detail::fail("fingerprint parts", k, "at most 64");
  std::vector<Fingerprint::Part> parts;
  for (std::uint64_t i = 0; i < k; ++i) {
    const std::uint64_t len = in.u64("fingerprint part name");
    if (len == 0 || len > Fingerprint::max_name) dftune::detail::fail("fingerprint part name", "a name of " + std::to_string(len) + " bytes", "1 to 256 bytes");
    std::string name(static_cast<std::size_t>(len), '\0');
    in.bytes(std::as_writable_bytes(std::span(name)), "fingerprint part name");
    parts.push_back({std::move(name), in.u64("fingerprint part hash")});
  }
  // The fingerprint first: a cache of another model or sampling is refused by name, whatever else it holds.
  const auto& want = expected.parts();
  for (std::size_t i = 0; i < parts.size() || i < want.size(); ++i) {
    if (i >= parts.size() || i >= want.size() || parts[i].name != want[i].name)
      dftune::detail::fail("fingerprint part " + std::to_string(i), i < parts.size() ? "\"" + parts[i].name + "\"" : "nothing",
                   (i < want.size() ? "\"" + want[i].name + "\"" : "nothing") + " (the cache was written by another program or version)");
    if (parts[i].hash != want[i].hash) {
      in.give_up();  // a well-formed cache of something else: no need to hash the rest first
      dftune::detail::fail("fingerprint part \"" + parts[i].name + "\"", "another hash in the file",
                   "the hash of this run's " + parts[i].name +
                       " (the negatives were sampled with a different one: delete the cache or choose another path to sample again)");
    }
  }
  const auto check = [&](const char* field, std::uint64_t got, std::size_t want_v) {
    if (got != want_v) dftune::detail::fail(field, got, std::to_string(want_v) + " (this run's)");
  };
  check("prompts", in.u64("prompts"), s.prompts);
  check("m", in.u64("m"), s.m);
  check("max_new", in.u64("max_new"), s.max_new);
  const std::uint64_t filled = in.u64("filled");
  if (filled > s.prompts) dftune::detail::fail("filled", filled, "at most prompts = " + std::to_string(s.prompts));
  const auto count = static_cast<std::size_t>(filled) * s.m;  // <= prompts·m, checked in validate(shape)
  Negatives n;
  n.offsets = in.array<std::int64_t>("offsets", count + 1);
  in.limit_arrays(count * s.max_new, "filled·m·max_new");
  n.tokens = in.array<token_t>("tokens");
  n.logp_ref = in.array<double>("logp_ref", count);
  validate(n, s);
  return n;
}

}  // namespace detail

// Writes the cache atomically (the old file, if any, stays until the new one is complete).
inline void save_negatives(const std::filesystem::path& path, const Fingerprint& f, const NegativesShape& s, const Negatives& n) {
  detail::named("negatives cache " + path.string(), [&] {
    detail::validate(s);
    detail::validate(n, s);
    write_checkpoint(path, CheckpointKind::negatives, [&](Writer& w) { detail::write(w, f, s, n); });
  });
}

// The cached negatives for this fingerprint and shape; nothing if `path` does not exist. A file
// for another fingerprint or shape, or a damaged one, is a dftune::error naming the file.
inline std::optional<Negatives> load_negatives(const std::filesystem::path& path, const Fingerprint& f, const NegativesShape& s) {
  return detail::named("negatives cache " + path.string(), [&]() -> std::optional<Negatives> {
    detail::validate(s);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return std::nullopt;
    return read_checkpoint(path, CheckpointKind::negatives, detail::max_payload(s),
                           [&](Reader& in) { return detail::read(in, f, s); });
  });
}

}  // namespace io

DFTUNE_NAMESPACE_END
