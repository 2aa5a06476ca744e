// libFuzzer target: the checkpoint loader. Input = one mode byte + a file image. Mode bit 0 asks
// the target to repair the header checksum first (so that mutations reach the payload checks),
// bits 1–2 pick what is loaded: an Estimator<double>, a DftOptimizer<double> with AdamW + cosine,
// or a DftOptimizer<float> with SGD + constant. Properties:
//   - no crash, no sanitizer report, no exception other than dftune::error;
//   - a refused file leaves every object bit-identical;
//   - an accepted file re-encodes to exactly the bytes that were loaded.
// DFTUNE_FUZZ_WRITE_SEEDS=<dir> writes a valid seed per mode into <dir> at start-up.
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include "fuzz_input.hpp"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

using namespace dftune;

namespace {

constexpr std::size_t kExamples = 5, kContexts = 2, kVocab = 4;
const DftOptions kOpt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};

template <class T, class Rule, class Schedule>
struct Setup {
  CategoricalPolicy<T> model{kContexts, kVocab};
  Estimator<T> est{kExamples, kOpt};
  DftOptimizer<CategoricalPolicy<T>, Rule, Schedule> opt;
  Setup(Rule r, Schedule s) : opt(model, est, kOpt, std::move(r), s) {}
  // Some state of its own: a few real steps.
  void train(std::size_t steps) {
    Sequences pos, neg;
    std::vector<std::int64_t> ids{0, 3};
    for (token_t c = 0; c < 2; ++c) {
      pos.push(std::vector<token_t>{c}, std::vector<token_t>{1, 2});
      neg.push(std::vector<token_t>{c}, std::vector<token_t>{3});
      neg.push(std::vector<token_t>{c}, std::vector<token_t>{0, 0, 1});
    }
    std::vector<T> ref{T(-1), T(-2.5), T(-1.5), T(-3)};
    for (std::size_t t = 0; t < steps; ++t)
      opt.step({.ids = ids, .positives = pos.view(), .negatives = neg.view(), .num_negatives = 2, .ref_neg_logp = ref});
  }
  std::vector<std::byte> state() { return io::encode(opt); }
};

using Adamw = Setup<double, AdamW<double>, CosineSchedule>;
using SgdF = Setup<float, Sgd<float>, ConstantSchedule>;
Adamw make_adamw() { return Adamw(AdamW<double>(AdamOptions{.weight_decay = 0.01}), CosineSchedule{.base_lr = 0.1, .warmup_steps = 2, .total_steps = 10}); }
SgdF make_sgd() { return SgdF(Sgd<float>(SgdOptions{.momentum = 0.5}), ConstantSchedule{.rate = 0.05}); }

void write_seed(const std::string& dir, std::uint8_t mode, const std::vector<std::byte>& image) {
  std::ofstream out(dir + "/seed_" + std::to_string(mode), std::ios::binary);
  out.put(static_cast<char>(mode));
  out.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
}

void fix_checksum(std::vector<std::byte>& b) {
  if (b.size() < io::checkpoint_header_size) return;
  const std::span<const std::byte> all(b);
  const std::uint64_t sum = io::fnv1a64(all.subspan(32), io::fnv1a64(all.first(24)));
  for (std::size_t k = 0; k < 8; ++k) b[24 + k] = static_cast<std::byte>((sum >> (8 * k)) & 0xFF);
}

template <class S>
void load_one(S& s, const std::vector<std::byte>& image) {
  const std::vector<std::byte> before = s.state();
  try {
    io::decode(std::span<const std::byte>(image), s.opt);
  } catch (const dftune::error&) {
    FUZZ_CHECK(s.state() == before);
    return;
  }
  FUZZ_CHECK(s.state() == image);
  try {  // a loaded state must be usable: a step either runs or refuses cleanly
    s.train(1);
  } catch (const dftune::error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("DFTUNE_FUZZ_WRITE_SEEDS")) {
    Estimator<double> est(kExamples, kOpt);
    auto a = make_adamw();
    a.train(3);
    auto s = make_sgd();
    s.train(2);
    write_seed(dir, 1, io::encode(a.est));
    write_seed(dir, 3, io::encode(a.opt));
    write_seed(dir, 5, io::encode(s.opt));
    write_seed(dir, 2, io::encode(est));
    auto fresh = make_adamw();
    write_seed(dir, 7, io::encode(fresh.opt));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  std::vector<std::byte> image(size - 1);
  if (size > 1) std::memcpy(image.data(), data + 1, size - 1);
  if (mode & 1) fix_checksum(image);
  switch ((mode >> 1) & 3) {
    case 0: {
      Estimator<double> est(kExamples, kOpt);
      est.set(std::vector<std::int64_t>{1}, std::vector<double>{-0.25});
      const std::vector<double> u(est.raw_log_u().begin(), est.raw_log_u().end());
      const std::vector<unsigned char> seen(est.raw_seen().begin(), est.raw_seen().end());
      try {
        io::decode(std::span<const std::byte>(image), est);
      } catch (const dftune::error&) {
        FUZZ_CHECK(fuzz::bit_equal<double>(est.raw_log_u(), u));
        FUZZ_CHECK(std::equal(seen.begin(), seen.end(), est.raw_seen().begin()));
        return 0;
      }
      FUZZ_CHECK(io::encode(est) == image);
      return 0;
    }
    case 1:
    case 3: {
      auto s = make_adamw();
      s.train(1);
      load_one(s, image);
      return 0;
    }
    default: {
      auto s = make_sgd();
      s.train(1);
      load_one(s, image);
      return 0;
    }
  }
}
