// Checkpoints (include/dftune/io/): a resumed run equals the straight run bit for bit; every
// broken file (wrong magic, version, kind, truncated, corrupted, trailing bytes, another
// configuration, another number of examples) is refused with an error that names it, and leaves
// the objects being loaded into bit-identical; files are replaced atomically.
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace dftune;
namespace fs = std::filesystem;

namespace {

template <class T>
bool bit_equal(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}
template <class T>
std::vector<T> copy(std::span<T> s) {
  return {s.begin(), s.end()};
}

// A fresh directory per test case.
struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& name) {
    dir = fs::temp_directory_path() / ("dftune_test_checkpoint_" + name + "_" + std::to_string(std::random_device{}()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path operator/(const std::string& f) const { return dir / f; }
};

// The batch of step t depends on t alone, so a resumed run can regenerate batches k..N−1.
struct Batch {
  std::vector<std::int64_t> ids;
  Sequences pos, neg;
  std::vector<double> ref;
};

constexpr std::size_t kContexts = 3, kVocab = 6, kExamples = 10, kBatch = 4, kNeg = 3;

Batch make_batch(CategoricalPolicy<double>& ref_model, std::size_t t) {
  std::mt19937_64 rng(1000 + t);
  Batch b;
  std::vector<std::int64_t> all(kExamples);
  for (std::size_t i = 0; i < kExamples; ++i) all[i] = static_cast<std::int64_t>(i);
  std::shuffle(all.begin(), all.end(), rng);
  std::uniform_int_distribution<std::size_t> len(1, 4);
  for (std::size_t i = 0; i < kBatch; ++i) {
    const std::int64_t id = all[i];
    b.ids.push_back(id);
    const token_t c = static_cast<token_t>(static_cast<std::size_t>(id) % kContexts);
    const std::vector<token_t> prompt{c};
    b.pos.push(prompt, std::vector<token_t>(len(rng), static_cast<token_t>((c + 2) % static_cast<token_t>(kVocab))));
    for (std::size_t j = 0; j < kNeg; ++j) b.neg.push(prompt, ref_model.sample(static_cast<std::size_t>(c), len(rng), rng, {.temperature = 0.7}));
  }
  b.ref.resize(b.neg.size());
  ref_model.sequence_logp(b.neg.view(), b.ref);
  return b;
}

CategoricalPolicy<double> make_ref() {
  CategoricalPolicy<double> ref(kContexts, kVocab);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n(0, 1);
  for (double& x : ref.parameters()) x = n(rng);
  return ref;
}

const DftOptions kOpt{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85};
const CosineSchedule kSchedule{.base_lr = 0.05, .min_lr = 0.001, .warmup_steps = 3, .total_steps = 20};
const AdamOptions kAdam{.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01};

// A complete training setup whose objects live together.
struct Run {
  CategoricalPolicy<double> ref = make_ref();
  CategoricalPolicy<double> model{kContexts, kVocab};
  Estimator<double> est;
  DftOptimizer<CategoricalPolicy<double>, AdamW<double>, CosineSchedule> opt;
  explicit Run(const DftOptions& o = kOpt, const AdamOptions& a = kAdam, const CosineSchedule& s = kSchedule,
               std::size_t examples = kExamples)
      : est(examples, o), opt(model, est, o, AdamW<double>(a), s) {
    std::copy(ref.parameters().begin(), ref.parameters().end(), model.parameters().begin());
  }
  void step(std::size_t t) {
    const Batch b = make_batch(ref, t);
    opt.step({.ids = b.ids, .positives = b.pos.view(), .negatives = b.neg.view(),
              .ref_neg_logp = b.ref, .num_negatives = kNeg});
  }
};

// Everything a checkpoint restores, as raw copies for bit comparisons.
struct Snapshot {
  std::vector<double> params, log_u, m, v;
  std::vector<unsigned char> seen;
  std::size_t steps = 0, rule_steps = 0;
  explicit Snapshot(Run& r)
      : params(copy(r.model.parameters())),
        log_u(r.est.raw_log_u().begin(), r.est.raw_log_u().end()),
        m(r.opt.rule().first_moment().begin(), r.opt.rule().first_moment().end()),
        v(r.opt.rule().second_moment().begin(), r.opt.rule().second_moment().end()),
        seen(r.est.raw_seen().begin(), r.est.raw_seen().end()),
        steps(r.opt.steps()),
        rule_steps(r.opt.rule().steps()) {}
  bool operator==(const Snapshot& o) const {
    return bit_equal<double>(params, o.params) && bit_equal<double>(log_u, o.log_u) && bit_equal<double>(m, o.m) &&
           bit_equal<double>(v, o.v) && seen == o.seen && steps == o.steps && rule_steps == o.rule_steps;
  }
};

std::vector<std::byte> read_bytes(const fs::path& p) { return io::read_file(p); }
void write_bytes(const fs::path& p, const std::vector<std::byte>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
// Rewrites the header checksum so that an edit reaches the checks behind it.
void fix_checksum(std::vector<std::byte>& b) {
  const std::uint64_t sum = io::fnv1a64(std::span<const std::byte>(b).subspan(32),
                                        io::fnv1a64(std::span<const std::byte>(b).first(24)));
  for (std::size_t k = 0; k < 8; ++k) b[24 + k] = static_cast<std::byte>((sum >> (8 * k)) & 0xFF);
}

}  // namespace

TEST_CASE("resume: N steps straight equal k steps, save, load into fresh objects, N − k steps, bit for bit") {
  TempDir tmp("resume");
  constexpr std::size_t N = 14;
  for (std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{5}, std::size_t{13}}) {
    CAPTURE(k);
    Run straight;
    for (std::size_t t = 0; t < N; ++t) straight.step(t);

    Run first;
    for (std::size_t t = 0; t < k; ++t) first.step(t);
    io::save(tmp / "run.ckpt", first.opt);

    Run resumed;  // a fresh process would build exactly this
    io::load(tmp / "run.ckpt", resumed.opt);
    CHECK(Snapshot(resumed) == Snapshot(first));
    for (std::size_t t = k; t < N; ++t) resumed.step(t);
    CHECK(resumed.opt.steps() == N);
    CHECK(Snapshot(resumed) == Snapshot(straight));
    // The run really moved: a resumed run that had lost its state would differ.
    CHECK_FALSE(bit_equal<double>(straight.model.parameters(), straight.ref.parameters()));
  }
}

TEST_CASE("resume with SGD + momentum and a constant schedule, DFT2, float") {
  TempDir tmp("sgd");
  const DftOptions o{.variant = Variant::dft2, .tau = 0.3, .gamma = 0.9};
  auto make = [&](CategoricalPolicy<float>& model, Estimator<float>& est) {
    return DftOptimizer(model, est, o, Sgd<float>(SgdOptions{.momentum = 0.9, .nesterov = true}),
                        ConstantSchedule{.base_lr = 0.1});
  };
  CategoricalPolicy<double> ref = make_ref();
  auto run = [&](auto& opt, std::size_t from, std::size_t to) {
    for (std::size_t t = from; t < to; ++t) {
      const Batch b = make_batch(ref, t);
      std::vector<float> unused(b.ref.begin(), b.ref.end());
      opt.step({.ids = b.ids, .positives = b.pos.view(), .negatives = b.neg.view(),
                .ref_neg_logp = unused, .num_negatives = kNeg});
    }
  };
  CategoricalPolicy<float> m1(kContexts, kVocab), m2(kContexts, kVocab);
  Estimator<float> e1(kExamples, o), e2(kExamples, o);
  auto o1 = make(m1, e1);
  auto o2 = make(m2, e2);
  run(o1, 0, 4);
  io::save(tmp / "a.ckpt", o1);
  run(o1, 4, 9);
  io::load(tmp / "a.ckpt", o2);
  run(o2, 4, 9);
  CHECK(bit_equal<float>(m1.parameters(), m2.parameters()));
  CHECK(bit_equal<float>(o1.rule().momentum_buffer(), o2.rule().momentum_buffer()));
  CHECK(bit_equal<float>(e1.raw_log_u(), e2.raw_log_u()));
  CHECK(o2.steps() == 9);
}

TEST_CASE("estimator checkpoints round-trip, including unseen examples, and overwrite atomically") {
  TempDir tmp("estimator");
  for (EstimatorInit init : {EstimatorInit::first_visit, EstimatorInit::constant}) {
    Run r({.variant = Variant::dft, .tau = 1.0, .gamma = 0.85, .init = init, .log_u0 = -0.5});
    r.step(0);
    io::save(tmp / "u.ckpt", r.est);
    Estimator<double> e(kExamples, {.init = init, .log_u0 = -0.5});
    io::load(tmp / "u.ckpt", e);
    CHECK(bit_equal<double>(e.raw_log_u(), r.est.raw_log_u()));
    CHECK(std::equal(e.raw_seen().begin(), e.raw_seen().end(), r.est.raw_seen().begin()));
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(kExamples); ++i) CHECK(e.prior(i) == r.est.prior(i));
  }
  // A second save replaces the file whole and leaves no temporary beside it.
  Run r;
  r.step(0);
  io::save(tmp / "u.ckpt", r.est);
  r.step(1);
  io::save(tmp / "u.ckpt", r.est);
  Estimator<double> e(kExamples, kOpt);
  io::load(tmp / "u.ckpt", e);
  CHECK(bit_equal<double>(e.raw_log_u(), r.est.raw_log_u()));
  std::size_t files = 0;
  for (const auto& entry : fs::directory_iterator(tmp.dir)) {
    ++files;
    CHECK(entry.path().filename() == "u.ckpt");
  }
  CHECK(files == 1);
}

TEST_CASE("the header: magic, version 2, kind, payload size and the FNV-1a-64 checksum") {
  CHECK(io::fnv1a64({}) == 14695981039346656037ull);
  const char a = 'a';
  CHECK(io::fnv1a64(std::as_bytes(std::span<const char>(&a, 1))) == 0xaf63dc4c8601ec8cull);  // published test vector
  Run r;
  const auto b = io::encode(r.est);
  REQUIRE(b.size() >= 32);
  CHECK(std::memcmp(b.data(), "DFTUNECK", 8) == 0);
  CHECK(std::to_integer<int>(b[8]) == 2);
  CHECK(std::to_integer<int>(b[12]) == 1);
  CHECK(std::to_integer<int>(io::encode(r.opt)[12]) == 2);
}

TEST_CASE("a broken training checkpoint is refused with a clear error and loads nothing") {
  TempDir tmp("broken");
  Run saved;
  for (std::size_t t = 0; t < 3; ++t) saved.step(t);
  const fs::path good = tmp / "good.ckpt";
  io::save(good, saved.opt);
  const std::vector<std::byte> bytes = read_bytes(good);

  Run target;  // has state of its own, which every failed load must leave alone
  for (std::size_t t = 0; t < 5; ++t) target.step(10 + t);
  const Snapshot before(target);

  auto refuse = [&](const std::vector<std::byte>& file, const std::string& message) {
    const fs::path p = tmp / "bad.ckpt";
    write_bytes(p, file);
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(io::load(p, target.opt), doctest::Contains(message.c_str()), error);
    CHECK_THROWS_WITH_AS(io::load(p, target.opt), doctest::Contains("bad.ckpt"), error);
    CHECK(Snapshot(target) == before);
  };

  {  // not a checkpoint
    auto b = bytes;
    b[0] = std::byte{'X'};
    refuse(b, "magic");
  }
  {  // a future format, and the format before StepOptions
    for (int v : {3, 1}) {
      auto b = bytes;
      b[8] = std::byte(v);
      const std::string message = "version: got " + std::to_string(v) + ", expected 2";
      refuse(b, message);
      fix_checksum(b);
      refuse(b, message);
    }
  }
  {  // an estimator checkpoint where a training one is expected
    refuse(io::encode(saved.est), "kind: got 1 (estimator), expected 2 (training)");
  }
  {  // truncated: inside the header, and at every 37th byte of the payload
    refuse(std::vector<std::byte>(bytes.begin(), bytes.begin() + 20), "truncated");
    refuse({}, "truncated");
    for (std::size_t n = 32; n < bytes.size(); n += 37) refuse(std::vector<std::byte>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)), "truncated");
  }
  {  // trailing bytes
    auto b = bytes;
    b.push_back(std::byte{0});
    refuse(b, "trailing bytes");
  }
  {  // corrupted: one flipped bit anywhere in the payload, or in the header's checksum
    for (std::size_t k = 32; k < bytes.size(); k += 11) {
      auto b = bytes;
      b[k] ^= std::byte{0x10};
      refuse(b, "checksum");
    }
    auto b = bytes;
    b[30] ^= std::byte{1};
    refuse(b, "checksum");
  }
  {  // a missing file, a directory
    CHECK_THROWS_WITH_AS(io::load(tmp / "missing.ckpt", target.opt), doctest::Contains("missing.ckpt"), error);
    CHECK_THROWS_WITH_AS(io::load(tmp.dir, target.opt), doctest::Contains("a regular file"), error);
    CHECK(Snapshot(target) == before);
  }
  // Forged payloads with a valid checksum reach the checks of the contents.
  {  // a non-finite parameter
    auto b = bytes;
    // Find the parameters by value: the first 8 bytes equal to the first parameter's bit pattern.
    const double first = saved.model.parameters()[0];
    std::size_t at = 0;
    for (std::size_t k = 32; k + 8 <= b.size(); ++k)
      if (std::memcmp(b.data() + k, &first, 8) == 0) {
        at = k;
        break;
      }
    REQUIRE(at != 0);
    const double nan = std::nan("");
    std::memcpy(b.data() + at, &nan, 8);
    fix_checksum(b);
    refuse(b, "parameters[0]: got nan");
  }
}

TEST_CASE("a checkpoint of another configuration is refused, naming the field") {
  TempDir tmp("config");
  Run saved;
  saved.step(0);
  io::save(tmp / "a.ckpt", saved.opt);
  io::save(tmp / "u.ckpt", saved.est);

  auto refuse = [&](Run& target, const std::string& message) {
    target.step(5);
    const Snapshot before(target);
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(io::load(tmp / "a.ckpt", target.opt), doctest::Contains(message.c_str()), error);
    CHECK(Snapshot(target) == before);
  };
  {
    Run t(kOpt, kAdam, kSchedule, kExamples + 1);
    refuse(t, "num_examples: got 10 in the file, expected 11");
    CHECK_THROWS_WITH_AS(io::load(tmp / "u.ckpt", t.est), doctest::Contains("num_examples: got 10 in the file, expected 11"), error);
  }
  {
    Run t({.variant = Variant::dft, .tau = 1.0, .gamma = 0.9});
    refuse(t, "gamma: got 0.84999999999999998 in the file, expected 0.90000000000000002");
  }
  {
    Run t({.variant = Variant::dft, .tau = 1.0, .gamma = 0.85, .init = EstimatorInit::constant});
    refuse(t, "estimator init");
  }
  {
    Run t(kOpt, AdamOptions{.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01});
    refuse(t, "adam beta2");
  }
  {
    CosineSchedule s = kSchedule;
    s.total_steps = 40;
    Run t(kOpt, kAdam, s);
    refuse(t, "schedule total_steps: got 20 in the file, expected 40");
  }
  {  // another rule type
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(kExamples, kOpt);
    DftOptimizer opt(model, est, kOpt, Adam<double>(kAdam), kSchedule);
    CHECK_THROWS_WITH_AS(io::load(tmp / "a.ckpt", opt), doctest::Contains("rule: got tag 3 in the file, expected tag 2 (Adam)"), error);
    CHECK(opt.steps() == 0);
  }
  {  // another model size
    CategoricalPolicy<double> model(kContexts, kVocab + 1);
    Estimator<double> est(kExamples, kOpt);
    DftOptimizer opt(model, est, kOpt, AdamW<double>(kAdam), kSchedule);
    CHECK_THROWS_WITH_AS(io::load(tmp / "a.ckpt", opt), doctest::Contains("parameters: got size 18 in the file, expected size 21"), error);
  }
  {  // another scalar type
    CategoricalPolicy<float> model(kContexts, kVocab);
    Estimator<float> est(kExamples, kOpt);
    DftOptimizer opt(model, est, kOpt, AdamW<float>(kAdam), kSchedule);
    CHECK_THROWS_WITH_AS(io::load(tmp / "a.ckpt", opt), doctest::Contains("scalar size: got 8 in the file, expected 4"), error);
  }
}

TEST_CASE("a broken estimator checkpoint leaves the estimator bit-identical") {
  TempDir tmp("estbroken");
  Run saved;
  saved.step(0);
  auto bytes = io::encode(saved.est);
  Run target;
  target.step(3);
  const Snapshot before(target);
  {  // seen flag out of range (forged with a valid checksum)
    auto b = bytes;
    // payload: u32 size, u32 init, f64 log_u0, u64 N, u64 N, N × u8 seen ...
    b[32 + 4 + 4 + 8 + 8 + 8 + 2] = std::byte{7};
    fix_checksum(b);
    CHECK_THROWS_WITH_AS(io::decode(b, target.est), doctest::Contains("seen[2]: got 7, expected 0 or 1"), error);
  }
  {  // a non-finite log u
    auto b = bytes;
    const std::size_t log_u_at = 32 + 4 + 4 + 8 + 8 + 8 + kExamples + 8;
    const double inf = INFINITY;
    std::size_t seen_id = 0;
    while (!saved.est.raw_seen()[seen_id]) ++seen_id;
    std::memcpy(b.data() + log_u_at + 8 * seen_id, &inf, 8);
    fix_checksum(b);
    CHECK_THROWS_WITH_AS(io::decode(b, target.est), doctest::Contains(("log_u[" + std::to_string(seen_id) + "]: got inf").c_str()), error);
  }
  {  // a count that would allocate far more than the file holds
    auto b = bytes;
    b[32 + 4 + 4 + 8 + 8 + 7] = std::byte{0x40};  // the seen array's count
    fix_checksum(b);
    CHECK_THROWS_WITH_AS(io::decode(b, target.est), doctest::Contains("seen"), error);
  }
  CHECK(Snapshot(target) == before);
}

TEST_CASE("save reports an unwritable path and leaves no temporary file") {
  Run r;
  CHECK_THROWS_WITH_AS(io::save("/nonexistent-dir-dftune/x.ckpt", r.est), doctest::Contains("nonexistent-dir-dftune"), error);
}

TEST_CASE("fuzz regression: an Estimator<float> refuses a log_u0 that float cannot hold") {
  // tests/fuzz/regressions/fuzz_objectives/crash-float-log_u0-overflow: log_u0 = 1e300 became +inf.
  const DftOptions o{.init = EstimatorInit::fixed, .log_u0 = 1e300};
  CHECK_THROWS_WITH_AS(Estimator<float>(3, o), doctest::Contains("log_u0: got 1.0000000000000001e+300"), error);
  CHECK(Estimator<double>(3, o).log_u0() == 1e300);
  CHECK(Estimator<float>(3, DftOptions{.init = EstimatorInit::fixed, .log_u0 = -1e30}).log_u0() == -1e30f);
}

// ---- whatever save accepts, load accepts ---------------------------------------------------------

TEST_CASE("the issue's unloadable checkpoint: DFT, fixed log u0 = -80, AdamW<float> now saves and loads bit for bit") {
  TempDir tmp("savable");
  const DftOptions o{.variant = Variant::dft, .tau = 1.0, .gamma = 0.85, .init = EstimatorInit::fixed, .log_u0 = -80};
  CategoricalPolicy<double> ref = make_ref();
  auto make_run = [&](CategoricalPolicy<float>& model, Estimator<float>& est) {
    return DftOptimizer(model, est, o, AdamW<float>(kAdam), ConstantSchedule{.base_lr = 1e-3});
  };
  CategoricalPolicy<float> m1(kContexts, kVocab), m2(kContexts, kVocab);
  Estimator<float> e1(kExamples, o), e2(kExamples, o);
  auto a = make_run(m1, e1);
  auto b = make_run(m2, e2);
  std::size_t refused = 0;
  for (std::size_t t = 0; t < 6; ++t) {  // weights exp(d + 80) ~ 1e34: g² passes float's range
    const Batch batch = make_batch(ref, t);
    const std::vector<float> r(batch.ref.begin(), batch.ref.end());
    try {
      a.step({.ids = batch.ids, .positives = batch.pos.view(), .negatives = batch.neg.view(),
              .ref_neg_logp = r, .num_negatives = kNeg});
    } catch (const error& e) {
      CHECK(std::string(e.what()).find("second_moment[") != std::string::npos);
      ++refused;
    }
    // Every state reached saves, and what saved loads back, bit for bit.
    io::save(tmp / "f.ckpt", a);
    io::load(tmp / "f.ckpt", b);
    CHECK(io::encode(b) == io::encode(a));
    CHECK(io::read_file(tmp / "f.ckpt") == io::encode(a));
  }
  CHECK(refused > 0);  // before: the step returned with v = +inf, save wrote it, load refused it
  for (float v : a.rule().second_moment()) CHECK(std::isfinite(v));
}

TEST_CASE("save refuses, writing nothing, a state that load would refuse") {
  TempDir tmp("unsavable");
  Run r;
  r.step(0);
  io::save(tmp / "a.ckpt", r.opt);
  io::save(tmp / "u.ckpt", r.est);
  const auto before = read_bytes(tmp / "a.ckpt");
  r.model.parameters()[7] = std::nan("");  // the model is the caller's: it can hold anything
  CHECK_THROWS_WITH_AS(io::save(tmp / "a.ckpt", r.opt), doctest::Contains("parameters[7]: got nan"), error);
  CHECK_THROWS_WITH_AS(io::save(tmp / "a.ckpt", r.opt), doctest::Contains("a.ckpt"), error);
  CHECK_THROWS_WITH_AS(io::encode(r.opt), doctest::Contains("parameters[7]: got nan"), error);
  CHECK_THROWS_WITH_AS(io::save(tmp / "b.ckpt", r.opt), doctest::Contains("parameters[7]"), error);
  CHECK(read_bytes(tmp / "a.ckpt") == before);
  CHECK_FALSE(fs::exists(tmp / "b.ckpt"));
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(tmp.dir)) files += e.is_regular_file();
  CHECK(files == 2);  // a.ckpt, u.ckpt: no temporary left
  // And the broken object still loads a good file (the bound on what it can take ignores its state).
  io::load(tmp / "a.ckpt", r.opt);
  CHECK(std::isfinite(r.model.parameters()[7]));
}

// ---- every configuration field is compared --------------------------------------------------------

TEST_CASE("every configuration field of a training checkpoint is compared on load, each with its own error") {
  TempDir tmp("fields");
  using Opt = DftOptimizer<CategoricalPolicy<double>, AdamW<double>, CosineSchedule>;
  struct Config {
    DftOptions o = kOpt;
    AdamOptions a = kAdam;
    CosineSchedule s = kSchedule;
    StepOptions step{.max_grad_norm = 5.0};
    std::size_t examples = kExamples;
  };
  auto saved_with = [&](const Config& c) {
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(c.examples, c.o);
    Opt opt(model, est, c.o, AdamW<double>(c.a), c.s, c.step);
    CategoricalPolicy<double> ref = make_ref();
    const Batch b = make_batch(ref, 0);
    opt.step({.ids = b.ids, .positives = b.pos.view(), .negatives = b.neg.view(), .ref_neg_logp = b.ref, .num_negatives = kNeg});
    return io::encode(opt);
  };
  const Config base;
  const auto file = saved_with(base);
  auto refused_by = [&](const Config& c, const std::string& message) {
    CAPTURE(message);
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(c.examples, c.o);
    Opt opt(model, est, c.o, AdamW<double>(c.a), c.s, c.step);
    const auto before = io::encode(opt);
    CHECK_THROWS_WITH_AS(io::decode(file, opt), doctest::Contains(message.c_str()), error);
    CHECK(io::encode(opt) == before);
  };
  auto with = [&](auto edit) {
    Config c = base;
    edit(c);
    return c;
  };
  refused_by(with([](Config& c) { c.o.variant = Variant::dft2; }), "variant: got 0 in the file, expected 1");
  refused_by(with([](Config& c) { c.o.tau = 0.5; }), "tau: got 1 in the file, expected 0.5");
  refused_by(with([](Config& c) { c.o.gamma = 0.9; }), "gamma: got 0.84999999999999998 in the file");
  refused_by(with([](Config& c) { c.o.init = EstimatorInit::constant; }), "estimator init: got 0 in the file, expected 1");
  refused_by(with([](Config& c) { c.o.log_u0 = -1; }), "estimator log_u0: got 0 in the file, expected -1");
  refused_by(with([](Config& c) { c.o.eps = 0; }), "eps: got 1e-08 in the file, expected 0");
  refused_by(with([](Config& c) { c.step.max_grad_norm = 1.0; }), "max_grad_norm: got 5 in the file, expected 1");
  refused_by(with([](Config& c) { c.step.max_grad_norm = INFINITY; }), "max_grad_norm: got 5 in the file, expected inf");
  refused_by(with([](Config& c) { c.a.beta1 = 0.8; }), "adam beta1: got 0.90000000000000002 in the file, expected 0.80000000000000004");
  refused_by(with([](Config& c) { c.a.beta2 = 0.999; }), "adam beta2: got 0.98999999999999999 in the file");
  refused_by(with([](Config& c) { c.a.eps = 1e-6; }), "adam eps: got 1e-08 in the file, expected 9.9999999999999995e-07");
  refused_by(with([](Config& c) { c.a.weight_decay = 0; }), "adam weight_decay: got 0.01 in the file, expected 0");
  refused_by(with([](Config& c) { c.s.base_lr = 0.1; }), "schedule base_lr: got 0.050000000000000003 in the file");
  refused_by(with([](Config& c) { c.s.min_lr = 0; }), "schedule min_lr: got 0.001 in the file, expected 0");
  refused_by(with([](Config& c) { c.s.warmup_steps = 4; }), "schedule warmup_steps: got 3 in the file, expected 4");
  refused_by(with([](Config& c) { c.s.total_steps = 40; }), "schedule total_steps: got 20 in the file, expected 40");
  refused_by(with([](Config& c) { c.examples = 9; }), "num_examples: got 10 in the file, expected 9");
  refused_by(with([](Config& c) { c.examples = 11; }), "num_examples: got 10 in the file, expected 11");
  // The estimator's own log_u0 is compared too (the file holds both); an optimizer whose options
  // differ from its estimator's is refused at construction.
  {
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(kExamples, {.log_u0 = -2});
    CHECK_THROWS_WITH_AS(Opt(model, est, kOpt, AdamW<double>(kAdam), kSchedule, base.step),
                         "options.log_u0: got 0, expected -2, the estimator's (build the Estimator with the same DftOptions)",
                         error);
    DftOptions o = kOpt;
    o.log_u0 = -2;
    Opt opt(model, est, o, AdamW<double>(kAdam), kSchedule, base.step);
    CHECK_THROWS_WITH_AS(io::decode(file, opt), doctest::Contains("log_u0: got 0 in the file, expected -2"), error);
  }
  // SGD's four options and a constant schedule's base_lr.
  using SgdOpt = DftOptimizer<CategoricalPolicy<double>, Sgd<double>, ConstantSchedule>;
  const SgdOptions sgd{.momentum = 0.9, .dampening = 0, .weight_decay = 0.01, .nesterov = true};
  auto sgd_file = [&] {
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(kExamples, kOpt);
    SgdOpt opt(model, est, kOpt, Sgd<double>(sgd), ConstantSchedule{.base_lr = 0.1});
    return io::encode(opt);
  }();
  auto sgd_refused_by = [&](const SgdOptions& so, double rate, const char* message) {
    CAPTURE(message);
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(kExamples, kOpt);
    SgdOpt opt(model, est, kOpt, Sgd<double>(so), ConstantSchedule{.base_lr = rate});
    CHECK_THROWS_WITH_AS(io::decode(sgd_file, opt), doctest::Contains(message), error);
  };
  sgd_refused_by({.momentum = 0.5, .weight_decay = 0.01, .nesterov = true}, 0.1, "sgd momentum: got 0.90000000000000002 in the file, expected 0.5");
  sgd_refused_by({.momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01}, 0.1, "sgd dampening: got 0 in the file, expected 0.10000000000000001");
  sgd_refused_by({.momentum = 0.9, .weight_decay = 0, .nesterov = true}, 0.1, "sgd weight_decay: got 0.01 in the file, expected 0");
  sgd_refused_by({.momentum = 0.9, .weight_decay = 0.01, .nesterov = false}, 0.1, "sgd nesterov: got true in the file, expected false");
  sgd_refused_by(sgd, 0.2, "schedule base_lr: got 0.10000000000000001 in the file, expected 0.20000000000000001");
  {
    CategoricalPolicy<double> model(kContexts, kVocab);
    Estimator<double> est(kExamples, kOpt);
    SgdOpt opt(model, est, kOpt, Sgd<double>(sgd), ConstantSchedule{.base_lr = 0.1});
    io::decode(sgd_file, opt);  // and the same configuration loads
  }
}

// ---- the estimator's set is all or nothing --------------------------------------------------------

TEST_CASE("Estimator::set with a bad id or value part-way stores nothing") {
  Estimator<double> est(5, kOpt);
  est.set(std::vector<std::int64_t>{1, 3}, std::vector<double>{-0.5, -1.5});
  const std::vector<double> u(est.raw_log_u().begin(), est.raw_log_u().end());
  const std::vector<unsigned char> seen(est.raw_seen().begin(), est.raw_seen().end());
  auto unchanged = [&] {
    CHECK(bit_equal<double>(est.raw_log_u(), u));
    CHECK(std::equal(seen.begin(), seen.end(), est.raw_seen().begin()));
  };
  // The bad entry comes last: a set that wrote while checking would have stored the first ones.
  CHECK_THROWS_WITH_AS(est.set(std::vector<std::int64_t>{0, 2, 3, 5}, std::vector<double>{1, 2, 3, 4}),
                       doctest::Contains("ids[3]: got 5"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(est.set(std::vector<std::int64_t>{0, 2, -1}, std::vector<double>{1, 2, 3}),
                       doctest::Contains("ids[2]: got -1"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(est.set(std::vector<std::int64_t>{0, 2, 4}, std::vector<double>{1, 2, INFINITY}),
                       doctest::Contains("log_u[2]: got inf"), error);
  unchanged();
  CHECK_THROWS_WITH_AS(est.set(std::vector<std::int64_t>{0, 2, 4}, std::vector<double>{1, 2}),
                       doctest::Contains("log_u: got size 2, expected size 3"), error);
  unchanged();
  est.set(std::vector<std::int64_t>{0, 4}, std::vector<double>{1, 2});
  CHECK(est.log_u(0) == 1.0);
  CHECK(est.log_u(4) == 2.0);
  CHECK(est.log_u(1) == -0.5);
}

// ---- huge and sparse files fail fast, in bounded memory ------------------------------------------

namespace {

// A source that claims `size` bytes: the first ones from `head`, then zeros, and counts what is read.
struct FakeHugeFile final : io::ByteSource {
  std::vector<std::byte> head;
  std::uint64_t size = 0, pos = 0, read_bytes = 0;
  std::size_t read(std::span<std::byte> out) override {
    const std::uint64_t n = std::min<std::uint64_t>(out.size(), size - pos);
    std::memset(out.data(), 0, static_cast<std::size_t>(n));
    for (std::uint64_t k = 0; k < n && pos + k < head.size(); ++k) out[k] = head[pos + k];
    pos += n;
    read_bytes += n;
    return static_cast<std::size_t>(n);
  }
};

void set_u64(std::vector<std::byte>& b, std::size_t at, std::uint64_t v) {
  for (std::size_t k = 0; k < 8; ++k) b[at + k] = static_cast<std::byte>((v >> (8 * k)) & 0xFF);
}

long max_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

}  // namespace

TEST_CASE("a payload larger than the object can take is refused after reading at most what the object can take") {
  Run r;
  r.step(0);
  const auto good = io::encode(r.opt);
  const std::uint64_t most = io::detail::training_max_payload(r.opt);
  CHECK(most >= good.size() - 32);
  for (std::uint64_t total : {std::uint64_t{2} << 30, std::uint64_t{40} << 30}) {
    CAPTURE(total);
    {  // a valid checkpoint whose header declares the whole (huge) file as payload: its fields
       // parse, so the size is the error
      FakeHugeFile f;
      f.head = good;
      set_u64(f.head, 16, total - 32);
      f.size = total;
      Run target;
      target.step(3);
      const Snapshot before(target);
      auto l = [&] {
        return io::read_checkpoint(f, f.size, io::CheckpointKind::training, most,
                                   [&](io::Reader& in) { return io::detail::read_training(in, target.opt); });
      };
      CHECK_THROWS_WITH_AS(l(), doctest::Contains(("payload size: got " + std::to_string(total - 32)).c_str()), error);
      CHECK(f.read_bytes <= most + 32);
      CHECK(Snapshot(target) == before);
    }
    {  // a header over zeros: the first field tells
      FakeHugeFile f;
      f.head = std::vector<std::byte>(good.begin(), good.begin() + 32);
      set_u64(f.head, 16, total - 32);
      f.size = total;
      Estimator<double> est(kExamples, kOpt);
      CHECK_THROWS_WITH_AS(io::read_checkpoint(f, f.size, io::CheckpointKind::training, most,
                                               [&](io::Reader& in) { return io::detail::read_training(in, r.opt); }),
                           doctest::Contains("scalar size: got 0 in the file, expected 8"), error);
      CHECK(f.read_bytes <= most + 32);
    }
  }
  {  // the estimator: another number of examples is named even when the file is the larger one
    Estimator<double> small(kExamples - 1, kOpt);
    CHECK_THROWS_WITH_AS(io::decode(io::encode(r.est), small), doctest::Contains("num_examples: got 10 in the file, expected 9"), error);
  }
}

TEST_CASE("2 GiB and 40 GiB sparse files on disk: a named error at once, in bounded memory") {
  TempDir tmp("sparse");
  Run r;
  r.step(0);
  io::save(tmp / "good.ckpt", r.opt);
  const auto good = read_bytes(tmp / "good.ckpt");
  const long rss_before = max_rss_kib();
  for (std::uint64_t total : {std::uint64_t{2} << 30, std::uint64_t{40} << 30}) {
    CAPTURE(total);
    const fs::path p = tmp / "huge.ckpt";
    auto timed_refusal = [&](const char* message) {
      Run target;
      target.step(2);
      const Snapshot before(target);
      const auto t0 = std::chrono::steady_clock::now();
      CHECK_THROWS_WITH_AS(io::load(p, target.opt), doctest::Contains(message), error);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      CHECK(s < 2.0);  // hashing 2 GiB took 10–12 s before; reading 40 GiB would take minutes
      CHECK(Snapshot(target) == before);
    };
    {  // only zeros
      fs::remove(p);
      std::ofstream(p).close();
      fs::resize_file(p, total);
      timed_refusal("magic");
    }
    {  // the good checkpoint, then zeros: trailing bytes, seen from the header alone
      write_bytes(p, good);
      fs::resize_file(p, total);
      timed_refusal("trailing bytes");
    }
    {  // ... with a header that declares them all
      auto b = good;
      set_u64(b, 16, total - 32);
      write_bytes(p, b);
      fs::resize_file(p, total);
      timed_refusal("payload size: got");
    }
    fs::remove(p);
  }
  // Before: 2.3 GiB for the 2 GiB file and std::bad_alloc for the 40 GiB one.
  CHECK(max_rss_kib() - rss_before < 64 * 1024);
}

// ---- atomic replacement, temporaries, symlinks ---------------------------------------------------

TEST_CASE("a save that fails part-way leaves the old file's bytes intact (seen through a hard link)") {
  TempDir tmp("partway");
  Run r;
  for (std::size_t t = 0; t < 3; ++t) r.step(t);
  const fs::path p = tmp / "run.ckpt";
  io::save(p, r.opt);
  const auto old_bytes = read_bytes(p);
  fs::create_hard_link(p, tmp / "link.ckpt");  // an in-place write would show through it
  r.step(3);
  const auto new_bytes = io::encode(r.opt);
  REQUIRE(new_bytes != old_bytes);
  auto only_the_two_files = [&] {
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(tmp.dir)) {
      ++files;
      CAPTURE(e.path());
      CHECK((e.path().filename() == "run.ckpt" || e.path().filename() == "link.ckpt"));
    }
    CHECK(files == 2);
  };
  {  // the file system refuses the write half-way (RLIMIT_FSIZE: write() fails with EFBIG)
    rlimit old{};
    getrlimit(RLIMIT_FSIZE, &old);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit half = old;
    half.rlim_cur = new_bytes.size() / 2;
    setrlimit(RLIMIT_FSIZE, &half);
    CHECK_THROWS_WITH_AS(io::save(p, r.opt), doctest::Contains("writing its temporary file failed"), error);
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
  CHECK(read_bytes(tmp / "link.ckpt") == old_bytes);
  CHECK(read_bytes(p) == old_bytes);
  only_the_two_files();
  {  // an exception from the payload writer after half of the payload is on disk
    int pass = 0;
    CHECK_THROWS_WITH_AS(io::write_checkpoint(p, io::CheckpointKind::training,
                                              [&](io::Writer& w) {
                                                io::detail::write_training(w, r.opt);
                                                if (++pass == 2) throw argument_error("payload: interrupted");
                                              }),
                         doctest::Contains("interrupted"), error);
    CHECK(pass == 2);
  }
  CHECK(read_bytes(tmp / "link.ckpt") == old_bytes);
  CHECK(read_bytes(p) == old_bytes);
  only_the_two_files();
  io::save(p, r.opt);  // and a save that succeeds replaces the file, not its bytes in place
  CHECK(read_bytes(p) == new_bytes);
  CHECK(read_bytes(tmp / "link.ckpt") == old_bytes);
}

TEST_CASE("saving through a symlink replaces the file it points to and keeps the link") {
  TempDir tmp("symlink");
  fs::create_directories(tmp / "runs");
  Run r;
  r.step(0);
  io::save(tmp / "runs" / "step1.ckpt", r.opt);
  const auto old_bytes = read_bytes(tmp / "runs" / "step1.ckpt");
  fs::create_hard_link(tmp / "runs" / "step1.ckpt", tmp / "old.ckpt");
  fs::create_symlink("runs/step1.ckpt", tmp / "latest.ckpt");  // relative, as `ln -s` makes them
  fs::create_symlink(tmp / "latest.ckpt", tmp / "latest2.ckpt");  // a chain
  r.step(1);
  io::save(tmp / "latest2.ckpt", r.opt);
  CHECK(fs::is_symlink(tmp / "latest.ckpt"));
  CHECK(fs::is_symlink(tmp / "latest2.ckpt"));
  CHECK(read_bytes(tmp / "runs" / "step1.ckpt") == io::encode(r.opt));
  CHECK(read_bytes(tmp / "old.ckpt") == old_bytes);  // replaced atomically, not rewritten in place
  Run back;
  io::load(tmp / "latest.ckpt", back.opt);
  CHECK(Snapshot(back) == Snapshot(r));
  // A dangling link names the file to create; a loop is an error.
  fs::create_symlink("runs/new.ckpt", tmp / "dangling.ckpt");
  io::save(tmp / "dangling.ckpt", r.est);
  CHECK(fs::is_regular_file(tmp / "runs" / "new.ckpt"));
  CHECK(fs::is_symlink(tmp / "dangling.ckpt"));
  fs::create_symlink("loop_b", tmp / "loop_a");
  fs::create_symlink("loop_a", tmp / "loop_b");
  CHECK_THROWS_WITH_AS(io::save(tmp / "loop_a", r.est), doctest::Contains("symlinks"), error);
  for (const auto& e : fs::directory_iterator(tmp / "runs"))
    CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("temporaries of a save killed with kill -9 are removed by the next save or load of the same path") {
  TempDir tmp("killed");
  const fs::path p = tmp / "big.ckpt";
  constexpr std::size_t N = 4'000'000;  // 36 MB: the write takes long enough to be caught
  const DftOptions o{.init = EstimatorInit::constant};
  Estimator<double> est(N, o);
  io::save(p, est);
  const auto temporaries = [&] {
    std::vector<fs::path> t;
    for (const auto& e : fs::directory_iterator(tmp.dir))
      if (e.path().filename().string().starts_with("big.ckpt.tmp-")) t.push_back(e.path());
    return t;
  };
  for (const bool then_load : {true, false}) {
    CAPTURE(then_load);
    // A child saves in a loop and is killed as soon as its temporary shows; a kill that lands
    // between a rename and the next save's temporary leaves none, so try again.
    pid_t child = -1;
    for (int attempt = 0; attempt < 20 && temporaries().empty(); ++attempt) {
      child = fork();
      REQUIRE(child >= 0);
      if (child == 0) {  // never returns into the test runner
        try {
          for (;;) io::save(p, est);
        } catch (...) {
        }
        _exit(1);
      }
      const auto t0 = std::chrono::steady_clock::now();
      while (temporaries().empty() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      kill(child, SIGKILL);
      waitpid(child, nullptr, 0);
    }
    const auto left = temporaries();
    REQUIRE(left.size() == 1);  // caught mid-save
    CHECK(left[0].filename().string().find("-" + std::to_string(child) + "-") != std::string::npos);
    // A temporary of a live process (ours: another thread may be saving) and files that only look
    // alike are kept.
    const std::string ours = "big.ckpt.tmp-" + io::detail::host_tag() + "-" + std::to_string(getpid()) + "-abc";
    const std::string other_host = "big.ckpt.tmp-zzzzzzzz-" + std::to_string(child) + "-abc";
    for (const std::string& keep : {ours, other_host, std::string("big.ckpt.tmp-notes.txt"), std::string("other.ckpt.tmp-x")})
      std::ofstream(tmp / keep) << "x";
    Estimator<double> back(N, o);
    if (then_load) io::load(p, back);
    else io::save(p, est);
    CHECK(temporaries().size() == 3);  // ours, other_host, notes
    CHECK_FALSE(fs::exists(left[0]));
    for (const std::string& keep : {ours, other_host, std::string("big.ckpt.tmp-notes.txt"), std::string("other.ckpt.tmp-x")}) {
      CHECK(fs::exists(tmp / keep));
      fs::remove(tmp / keep);
    }
    io::load(p, back);  // the target itself was never touched by the killed save
  }
}
