// libFuzzer target: TinyLm weight files (model/weights_io.hpp). Input = one mode byte + a file
// image. Mode bit 0 asks the target to repair the header checksum first (so that mutations reach
// the configuration and size checks behind it); bit 1 loads as double instead of float.
// Properties:
//   - no crash, no sanitizer report, no exception other than dftune::error (a forged size must be
//     refused before TinyLm allocates: the fuzzer's memory limit catches one that is not);
//   - an accepted file re-encodes to exactly the bytes that were loaded.
// DFTUNE_FUZZ_WRITE_SEEDS=<dir> writes a valid seed per mode into <dir> at start-up.
#include <dftune/model/weights_io.hpp>

#include "fuzz_input.hpp"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

using namespace dftune;

namespace {

const tiny_lm::Config kSeedConfig{.vocab = 5, .max_len = 4, .d_model = 4, .n_heads = 2, .n_layers = 1, .d_ff = 4};

void write_weights_seed(const std::string& dir, std::uint8_t mode, const std::vector<std::byte>& image) {
  std::ofstream out(dir + "/seed_" + std::to_string(mode), std::ios::binary);
  out.put(static_cast<char>(mode));
  out.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
}

void fix_weights_checksum(std::vector<std::byte>& b) {
  if (b.size() < io::checkpoint_header_size) return;
  const std::span<const std::byte> all(b);
  const std::uint64_t sum = io::fnv1a64(all.subspan(32), io::fnv1a64(all.first(24)));
  for (std::size_t k = 0; k < 8; ++k) b[24 + k] = static_cast<std::byte>((sum >> (8 * k)) & 0xFF);
}

template <class T>
void load_weights_image(const std::vector<std::byte>& image) {
  try {
    const TinyLm<T> m = decode_weights<T>(image);
    FUZZ_CHECK(encode_weights(m) == image);
  } catch (const dftune::error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("DFTUNE_FUZZ_WRITE_SEEDS")) {
    write_weights_seed(dir, 0, encode_weights(TinyLm<float>(kSeedConfig, 1)));
    write_weights_seed(dir, 3, encode_weights(TinyLm<double>(kSeedConfig, 2)));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  std::vector<std::byte> image(size - 1);
  if (size > 1) std::memcpy(image.data(), data + 1, size - 1);
  if (mode & 1) fix_weights_checksum(image);
  if (mode & 2) load_weights_image<double>(image);
  else load_weights_image<float>(image);
  return 0;
}
