#pragma once
// Save and load the weights of a TinyLm, in the checkpoint container of io/format.hpp (kind
// weights), with a checkpoint's guarantees: the configuration is under the checksum with the
// parameters; every size is bounded against the file before anything is allocated — the
// configuration's parameter count is computed without overflow and must match the bytes the file
// holds before TinyLm is built, so a forged header is a named error, never an allocation of
// gigabytes or a write past a buffer; files are replaced atomically (temporary + fsync + rename)
// and streamed both ways.
//
// Payload (kind 3):
//   u32 bytes per scalar (4: float, 8: double) · f64 init_std
//   u64 × 6  config: vocab, max_len, d_model, n_heads, n_layers, d_ff
//   [u64 P, P × T parameters]   (native little-endian, the layout of tiny_lm::make_layout)
// Format 1 (magic "DFTUNELM", its header outside the checksum) is refused with a message that
// says to save the model again.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/io/format.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace detail::weights_io {

// make_layout(c).total in closed form, every product and sum checked (checked_size.hpp), so that
// a configuration read from a file can be held against the file's size before anything is built.
// The one definition is tiny_lm::parameter_count (tiny_lm/config.hpp), which validate() also uses;
// tests/test_tiny_lm_weights.cpp holds it against make_layout.
using tiny_lm::parameter_count;

template <class T>
void check_scalar() {
  static_assert((std::is_same_v<T, float> || std::is_same_v<T, double>) && std::numeric_limits<T>::is_iec559,
                "dftune weights files hold float or double parameters");
}

template <class T>
void check_savable(const TinyLm<T>& model) {
  const auto p = model.parameters();
  for (std::size_t k = 0; k < p.size(); ++k)
    if (!std::isfinite(p[k])) detail::fail_at("parameters", k, p[k], "a finite number");
}

template <class T>
void write(io::Writer& w, const TinyLm<T>& model) {
  const tiny_lm::Config& c = model.config();
  w.u32(sizeof(T));
  w.f64(c.init_std);
  for (std::size_t v : {c.vocab, c.max_len, c.d_model, c.n_heads, c.n_layers, c.d_ff}) w.u64(v);
  w.array(model.parameters());
}

template <class T>
TinyLm<T> read(io::Reader& in) {
  const std::uint32_t scalar = in.u32("scalar size");
  if (scalar != sizeof(T))
    detail::fail("scalar size", scalar,
                 std::to_string(sizeof(T)) + " bytes (load_weights<" + (sizeof(T) == 4 ? "float" : "double") +
                     "> of a file saved from another type)");
  tiny_lm::Config c;
  c.init_std = in.f64("config.init_std");
  for (std::size_t* f : {&c.vocab, &c.max_len, &c.d_model, &c.n_heads, &c.n_layers, &c.d_ff}) {
    const std::uint64_t v = in.u64("config");
    if (v > std::numeric_limits<std::size_t>::max()) detail::fail("config", v, "a size that fits in size_t");
    *f = static_cast<std::size_t>(v);
  }
  tiny_lm::validate(c);
  const std::size_t count = parameter_count(c);
  // The parameters' bytes must be in the file before the model that holds them is built.
  const std::size_t bytes = detail::checked_add("parameters", 8, detail::checked_mul("parameters", count, sizeof(T)));
  in.expect_remaining(bytes, "parameters",
                      std::to_string(count) + " parameters of " + std::to_string(sizeof(T)) +
                          " bytes and their count, what the stored configuration needs");
  const std::uint64_t stored = in.u64("parameter count");
  if (stored != count)
    detail::fail("parameter count", stored, std::to_string(count) + " (what the stored configuration needs)");
  std::optional<TinyLm<T>> built;
  try {  // the bytes are in the file; memory for them may still be missing
    built.emplace(c);
  } catch (const std::bad_alloc&) {
    in.give_up();
    detail::fail("config", std::to_string(count) + " parameters", "a model that fits in memory");
  } catch (const std::length_error&) {
    in.give_up();
    detail::fail("config", std::to_string(count) + " parameters", "a model that fits in memory");
  }
  TinyLm<T> model = std::move(*built);
  const std::span<T> p = model.parameters();
  if constexpr (std::endian::native == std::endian::little) in.bytes(std::as_writable_bytes(p), "parameters");
  else
    for (T& x : p) x = in.scalar<T>("parameters");
  for (std::size_t k = 0; k < p.size(); ++k)
    if (!std::isfinite(p[k])) detail::fail_at("parameters", k, p[k], "a finite number");
  return model;
}

inline void refuse_format_1(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  if (in.read(magic, sizeof magic) && std::memcmp(magic, "DFTUNELM", 8) == 0)
    detail::fail("magic", "\"DFTUNELM\" (a TinyLm weights file of format 1, whose header was outside the checksum)",
                 "a weights file of the current format: load it with the dftune that wrote it and save it again");
}

}  // namespace detail::weights_io

// The file image save_weights writes, in memory (T is float or double). Throws
// dftune::argument_error "weights: parameters[k]: ..." for a non-finite parameter.
template <class T>
std::vector<std::byte> encode_weights(const TinyLm<T>& model) {
  detail::weights_io::check_scalar<T>();
  io::detail::named("weights", [&] { detail::weights_io::check_savable(model); });
  return io::encode_checkpoint(io::CheckpointKind::weights, [&](io::Writer& w) { detail::weights_io::write(w, model); });
}

// A model with the configuration and weights of a file image made by encode_weights; the same
// errors as load_weights, the file's name replaced by "weights".
template <class T>
TinyLm<T> decode_weights(std::span<const std::byte> file) {
  detail::weights_io::check_scalar<T>();
  return io::detail::named("weights", [&] {
    return io::decode_checkpoint(file, io::CheckpointKind::weights, std::numeric_limits<std::uint64_t>::max(),
                                 [](io::Reader& in) { return detail::weights_io::read<T>(in); });
  });
}

// Writes `model`'s configuration and parameters to `path`, replacing it atomically (a crash
// leaves the old file or the new one, never a mix). Refuses (writing nothing) a model with a
// non-finite parameter, so that what saves, loads: dftune::argument_error naming the parameter;
// dftune::io_error when the operating system refuses the write (a full disk). Example:
//
//     TinyLm<float> model(tiny_lm::Config{.vocab = 32}, /*seed=*/1);
//     save_weights("model.dftw", model);
//     TinyLm<float> same = load_weights<float>("model.dftw");   // bit-identical parameters
template <class T>
void save_weights(const std::filesystem::path& path, const TinyLm<T>& model) {
  detail::weights_io::check_scalar<T>();
  io::detail::named("weights " + path.string(), [&] {
    detail::weights_io::check_savable(model);
    io::write_checkpoint(path, io::CheckpointKind::weights, [&](io::Writer& w) { detail::weights_io::write(w, model); });
  });
}

// A model with the file's configuration and weights. Errors name the file and what is wrong: not
// a weights file, another version or scalar type, a configuration TinyLm refuses or whose size the
// file does not hold, truncated, corrupted.
template <class T>
TinyLm<T> load_weights(const std::filesystem::path& path) {
  detail::weights_io::check_scalar<T>();
  return io::detail::named("weights " + path.string(), [&] {
    detail::weights_io::refuse_format_1(path);
    return io::read_checkpoint(path, io::CheckpointKind::weights, std::numeric_limits<std::uint64_t>::max(),
                               [](io::Reader& in) { return detail::weights_io::read<T>(in); });
  });
}

DFTUNE_NAMESPACE_END
