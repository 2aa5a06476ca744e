// libFuzzer target: checkpoints. Input = one mode byte, then the rest.
// Mode bit 3 clear: the rest is a file image for the loader. Bit 0 asks the target to repair the
// header checksum first (so that mutations reach the payload checks), bits 1–2 pick what is
// loaded: an Estimator<double>, a DftOptimizer<double> with AdamW + cosine, or a
// DftOptimizer<float> with SGD + constant. Properties:
//   - no crash, no sanitizer report, no exception other than dftune::error;
//   - a refused file leaves every object bit-identical;
//   - an accepted file re-encodes to exactly the bytes that were loaded.
// Mode bit 3 set: the rest drives a training run (scalar type, rule, objective options — extreme
// log_u0, lr, weight decay, clipping included — and a few batches). Properties, for every state
// the run reaches ("whatever save accepts, load accepts"):
//   - it saves (encode never throws on a reachable state);
//   - what it saved loads into a freshly built twin and re-encodes to the same bytes;
//   - a step that throws leaves the saved bytes unchanged.
// DFTUNE_FUZZ_WRITE_SEEDS=<dir> writes a valid seed per mode into <dir> at start-up.
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include "fuzz_input.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <utility>
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
      opt.step({.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = 2});
  }
  std::vector<std::byte> state() { return io::encode(opt); }
};

using Adamw = Setup<double, AdamW<double>, CosineSchedule>;
using SgdF = Setup<float, Sgd<float>, ConstantSchedule>;
Adamw make_adamw() { return Adamw(AdamW<double>(AdamOptions{.weight_decay = 0.01}), CosineSchedule{.base_lr = 0.1, .warmup_steps = 2, .total_steps = 10}); }
SgdF make_sgd() { return SgdF(Sgd<float>(SgdOptions{.momentum = 0.5}), ConstantSchedule{.base_lr = 0.05}); }

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

// ---- reachable states save and load --------------------------------------------------------

template <class T>
std::vector<std::byte> must_encode(const auto& opt) {
  try {
    return io::encode(opt);
  } catch (const dftune::error& e) {
    std::fprintf(stderr, "a reachable state does not save: %s\n", e.what());
    std::abort();
  }
}

template <class T, class Rule>
void reachable_run(fuzz::Input& in, const DftOptions& o, Rule rule, double rate, const StepOptions& so) {
  const ConstantSchedule schedule{.base_lr = rate};
  std::optional<Estimator<T>> est, twin_est;
  try {
    est.emplace(kExamples, o);
    twin_est.emplace(kExamples, o);
  } catch (const dftune::error&) {
    return;  // options refused at construction
  }
  CategoricalPolicy<T> model(kContexts, kVocab), twin_model(kContexts, kVocab);
  using Opt = DftOptimizer<CategoricalPolicy<T>, Rule, ConstantSchedule>;
  std::optional<Opt> opt, twin;
  try {
    opt.emplace(model, *est, o, rule, schedule, so);
    twin.emplace(twin_model, *twin_est, o, rule, schedule, so);
  } catch (const dftune::error&) {
    return;
  }
  // Small runs (the input checks of oversized batches are fuzz_objectives' surface): at most 6
  // steps of at most 3 prompts with 3 negatives.
  const std::size_t steps = 1 + in.byte() % 6;
  for (std::size_t t = 0; t < steps && !in.empty(); ++t) {
    const std::size_t B = 1 + in.byte() % 3, m = 1 + in.byte() % 3;
    std::vector<std::int64_t> ids;
    Sequences pos, neg;
    std::vector<T> ref;
    for (std::size_t i = 0; i < B; ++i) {
      ids.push_back(in.id(static_cast<std::int64_t>(kExamples)));
      const token_t c = static_cast<token_t>(in.byte() % kContexts);
      std::vector<token_t> y(1 + in.byte() % 3);
      for (token_t& x : y) x = static_cast<token_t>(in.byte() % kVocab);
      pos.push(std::vector<token_t>{c}, y);
      for (std::size_t j = 0; j < m; ++j) {
        std::vector<token_t> z(1 + in.byte() % 3);
        for (token_t& x : z) x = static_cast<token_t>(in.byte() % kVocab);
        neg.push(std::vector<token_t>{c}, z);
        ref.push_back(in.number<T>(20.0));
      }
    }
    const std::vector<std::byte> before = must_encode<T>(*opt);
    try {
      opt->step({.ids = ids, .positives = pos.view(), .negatives = neg.view(), .ref_neg_logp = ref, .num_negatives = m});
    } catch (const dftune::error&) {
      FUZZ_CHECK(must_encode<T>(*opt) == before);
      continue;
    }
    const std::vector<std::byte> now = must_encode<T>(*opt);
    try {
      io::decode(std::span<const std::byte>(now), *twin);
    } catch (const dftune::error& e) {
      std::fprintf(stderr, "a saved state does not load: %s\n", e.what());
      std::abort();
    }
    FUZZ_CHECK(must_encode<T>(*twin) == now);
  }
}

template <class T>
void reachable(fuzz::Input& in) {
  DftOptions o;
  o.variant = in.byte() % 2 ? Variant::dft2 : Variant::dft;
  o.init = static_cast<EstimatorInit>(in.byte() % 3);
  o.log_u0 = in.byte() % 2 ? -80.0 : in.number<double>(100.0);
  o.tau = in.byte() % 2 ? 1.0 : in.number<double>(2.0);
  o.gamma = in.byte() % 2 ? 0.85 : in.number<double>(1.0);
  const double rate = in.byte() % 2 ? 1e-3 : in.number<double>(1e3);
  const double wd = in.byte() % 2 ? 0.0 : in.number<double>(10.0);
  const StepOptions so{.max_grad_norm = in.byte() % 2 ? std::numeric_limits<double>::infinity() : in.number<double>(2.0)};
  std::optional<Sgd<T>> sgd;
  std::optional<AdamUpdate<T, CoupledWeightDecay>> adam;
  std::optional<AdamUpdate<T, DecoupledWeightDecay>> adamw;
  const std::uint8_t kind = in.byte() % 3;
  try {
    if (kind == 0) sgd.emplace(SgdOptions{.momentum = in.byte() % 2 ? 0.9 : 0.0, .weight_decay = wd});
    else if (kind == 1) adam.emplace(AdamOptions{.weight_decay = wd});
    else adamw.emplace(AdamOptions{.weight_decay = wd});
  } catch (const dftune::error&) {
    return;
  }
  if (sgd) reachable_run<T>(in, o, *sgd, rate, so);
  if (adam) reachable_run<T>(in, o, *adam, rate, so);
  if (adamw) reachable_run<T>(in, o, *adamw, rate, so);
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
    // Training runs (bytes as reachable() and reachable_run() read them). One batch: B = 2, m = 2;
    // per prompt: id, context, completion length − 1, tokens, then per negative: length − 1,
    // tokens, log π_ref as a number (1, hi, lo: 20·int16(hi lo)/32768).
    const std::vector<std::uint8_t> batch{1, 1,                                          // B = 2, m = 2
                                          0, 0, 1, 1, 2, 0, 3, 1, 0xC0, 0, 1, 0, 1, 1, 0xA0, 0,
                                          3, 1, 0, 2, 2, 1, 1, 0, 1, 0xD0, 0, 0, 3, 1, 0xB0, 0};
    // The AdamW<float> checkpoint: DFT, fixed log u0 = −80, lr 1e-3, 4 steps; its batch has
    // log π_ref near −1, so the weights exp(d + 80) ~ 1e34 reach the model's gradient and g²
    // passes float's range in Adam's second moment (refused: the state stays savable).
    const std::vector<std::uint8_t> near{1, 1,
                                         0, 0, 1, 1, 2, 0, 3, 1, 0xFC, 0, 1, 0, 1, 1, 0xF8, 0,
                                         3, 1, 0, 2, 2, 1, 1, 0, 1, 0xFA, 0, 0, 3, 1, 0xF0, 0};
    std::vector<std::uint8_t> run_f{0, 2, 1, 1, 1, 1, 1, 1, 2, 3};
    // DFT2 in double: τ 0.25, lr ≈ 0.98, λ ≈ 0.02, clipped at 0.5, SGD with momentum 0.9, 3 steps.
    std::vector<std::uint8_t> run_d{1, 0, 1, 0, 1, 0x10, 0, 1, 0, 1, 0, 0x20, 0, 1, 0, 0x40, 0, 1, 0x20, 0, 0, 1, 2};
    for (int t = 0; t < 4; ++t) run_f.insert(run_f.end(), near.begin(), near.end());
    for (int t = 0; t < 3; ++t) run_d.insert(run_d.end(), batch.begin(), batch.end());
    for (const auto& [mode, run] : {std::pair{std::uint8_t{8}, run_f}, std::pair{std::uint8_t{9}, run_d}}) {
      std::vector<std::byte> image(run.size());
      std::memcpy(image.data(), run.data(), run.size());
      write_seed(dir, mode, image);
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  if (mode & 8) {  // a training run: bit 0 picks the scalar type
    fuzz::Input in(data + 1, size - 1);
    if (mode & 1) reachable<double>(in);
    else reachable<float>(in);
    return 0;
  }
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
