#pragma once
// Save and load the weights of a TinyLm. The file is versioned and self-describing:
//   "DFTUNELM"  magic (8 bytes)
//   u32 format version (1)        u32 bytes per scalar (4: float, 8: double)
//   u64 × 6  config: vocab, max_len, d_model, n_heads, n_layers, d_ff
//   u64 parameter count, then the parameters (native byte order, layout of tiny_lm::make_layout)
//   u64 FNV-1a hash of the parameter bytes
// Loading checks each field in that order and throws dftune::error naming what is wrong: not a
// weights file, another version, another scalar type, a truncated or corrupted file.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/model/tiny_lm/tiny_lm.hpp>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace weights_io {

inline constexpr char kMagic[8] = {'D', 'F', 'T', 'U', 'N', 'E', 'L', 'M'};
inline constexpr std::uint32_t kVersion = 1;

inline std::uint64_t fnv1a(std::span<const unsigned char> bytes) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char b : bytes) h = (h ^ b) * 0x100000001b3ull;
  return h;
}

// Reads exactly `size` bytes or throws, saying where the file ended.
class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) detail::fail("path", path, "a readable TinyLm weights file");
  }
  void read(void* out, std::size_t size, const char* what) {
    in_.read(static_cast<char*>(out), static_cast<std::streamsize>(size));
    const auto got = static_cast<std::size_t>(in_.gcount());
    pos_ += got;
    if (got != size)
      detail::fail(path_, "a file that ends after " + std::to_string(pos_) + " bytes, inside the " + what,
                   "a complete TinyLm weights file (truncated?)");
  }
  template <class U>
  U value(const char* what) {
    U v{};
    read(&v, sizeof v, what);
    return v;
  }
  bool at_end() { return in_.peek() == std::char_traits<char>::eof(); }

 private:
  std::string path_;
  std::ifstream in_;
  std::size_t pos_ = 0;
};

}  // namespace weights_io

template <class T>
void save_weights(const std::string& path, const TinyLm<T>& model) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) detail::fail("path", path, "a writable file");
  auto put = [&](const auto& v) { out.write(reinterpret_cast<const char*>(&v), sizeof v); };
  out.write(weights_io::kMagic, sizeof weights_io::kMagic);
  put(weights_io::kVersion);
  put(static_cast<std::uint32_t>(sizeof(T)));
  const auto& c = model.config();
  for (std::size_t v : {c.vocab, c.max_len, c.d_model, c.n_heads, c.n_layers, c.d_ff}) put(static_cast<std::uint64_t>(v));
  const auto p = model.parameters();
  put(static_cast<std::uint64_t>(p.size()));
  const auto bytes = std::as_bytes(p);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  put(weights_io::fnv1a({reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()}));
  if (!out.flush()) detail::fail("path", path, "a file that accepts " + std::to_string(bytes.size()) + " bytes of weights");
}

// A model with the file's configuration and weights.
template <class T>
TinyLm<T> load_weights(const std::string& path) {
  weights_io::Reader in(path);
  char magic[8];
  in.read(magic, sizeof magic, "magic");
  if (std::memcmp(magic, weights_io::kMagic, sizeof magic) != 0)
    detail::fail(path, "a file without the DFTUNELM magic", "a TinyLm weights file written by dftune::save_weights");
  const auto version = in.value<std::uint32_t>("version");
  if (version != weights_io::kVersion) detail::fail(path + ": format version", version, "version " + std::to_string(weights_io::kVersion));
  const auto scalar = in.value<std::uint32_t>("scalar size");
  if (scalar != sizeof(T))
    detail::fail(path + ": scalar size", scalar, std::to_string(sizeof(T)) + " bytes (load_weights<" +
                                                      (sizeof(T) == 4 ? "float" : "double") + "> of a file saved from another type)");
  tiny_lm::Config c;
  for (std::size_t* f : {&c.vocab, &c.max_len, &c.d_model, &c.n_heads, &c.n_layers, &c.d_ff})
    *f = static_cast<std::size_t>(in.value<std::uint64_t>("configuration"));
  TinyLm<T> model(c);  // validates the configuration
  const auto count = in.value<std::uint64_t>("parameter count");
  auto p = model.parameters();
  if (count != p.size())
    detail::fail(path + ": parameter count", count, std::to_string(p.size()) + " (what the stored configuration needs)");
  std::vector<T> buf(p.size());
  in.read(buf.data(), buf.size() * sizeof(T), "parameters");
  const auto hash = in.value<std::uint64_t>("checksum");
  if (hash != weights_io::fnv1a({reinterpret_cast<const unsigned char*>(buf.data()), buf.size() * sizeof(T)}))
    detail::fail(path + ": checksum", hash, "the FNV-1a hash of the stored parameters (the file is corrupted)");
  if (!in.at_end()) detail::fail(path, "bytes after the checksum", "a file that ends after the checksum");
  std::copy(buf.begin(), buf.end(), p.begin());
  return model;
}

DFTUNE_NAMESPACE_END
