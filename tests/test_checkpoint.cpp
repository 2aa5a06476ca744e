// Checkpoints (include/dftune/io/): a resumed run equals the straight run bit for bit; every
// broken file (wrong magic, version, kind, truncated, corrupted, trailing bytes, another
// configuration, another number of examples) is refused with an error that names it, and leaves
// the objects being loaded into bit-identical; files are replaced atomically.
#include <dftune/dftune.hpp>
#include <dftune/io/checkpoint.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

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
    opt.step({.ids = b.ids, .positives = b.pos.view(), .negatives = b.neg.view(), .num_negatives = kNeg,
              .ref_neg_logp = b.ref});
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
                        ConstantSchedule{.rate = 0.1});
  };
  CategoricalPolicy<double> ref = make_ref();
  auto run = [&](auto& opt, std::size_t from, std::size_t to) {
    for (std::size_t t = from; t < to; ++t) {
      const Batch b = make_batch(ref, t);
      std::vector<float> unused(b.ref.begin(), b.ref.end());
      opt.step({.ids = b.ids, .positives = b.pos.view(), .negatives = b.neg.view(), .num_negatives = kNeg,
                .ref_neg_logp = unused});
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

TEST_CASE("the header: magic, version 1, kind, payload size and the FNV-1a-64 checksum") {
  CHECK(io::fnv1a64({}) == 14695981039346656037ull);
  const char a = 'a';
  CHECK(io::fnv1a64(std::as_bytes(std::span<const char>(&a, 1))) == 0xaf63dc4c8601ec8cull);  // published test vector
  Run r;
  const auto b = io::encode(r.est);
  REQUIRE(b.size() >= 32);
  CHECK(std::memcmp(b.data(), "DFTUNECK", 8) == 0);
  CHECK(std::to_integer<int>(b[8]) == 1);
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
  {  // a future format
    auto b = bytes;
    b[8] = std::byte{2};
    refuse(b, "version: got 2, expected 1");
    fix_checksum(b);
    refuse(b, "version: got 2, expected 1");
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
