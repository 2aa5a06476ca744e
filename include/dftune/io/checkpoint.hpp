#pragma once
// Checkpoints: save and load the estimator state alone, or a whole DftOptimizer (estimator, model
// parameters, step count, inner rule with its moments, schedule) so that a resumed run continues
// bit for bit. The container (magic, version, kind, size, FNV-1a-64, atomic write, streaming) is
// format.hpp.
//
//   io::save("run.ckpt", optimizer);      // or io::save("u.ckpt", estimator)
//   io::load("run.ckpt", optimizer);      // or io::load("u.ckpt", estimator)
//   std::vector<std::byte> b = io::encode(optimizer);  io::decode(b, optimizer);   // in memory
//
// What is state and what is configuration. State comes from the file: log u and the seen flags of
// every example, the model's flat parameters, the optimizer's step, the rule's step count and
// moments. Configuration comes from the objects the caller built, and the file must agree with
// it: scalar type, number of examples, estimator init and log_u0, DftOptions, StepOptions, the
// rule's kind and options, the schedule's kind and fields, the number of parameters. A
// disagreement is an error naming the field, the file's value and the caller's, and nothing is
// loaded.
//
// Loading is all or nothing: the file is streamed, parsed and checked into temporaries, and only
// then are they moved in, by operations that cannot fail. On any error (unreadable file, wrong
// magic, version or kind, sizes the file or the object cannot hold, truncated, corrupted, trailing
// bytes, mismatched configuration, non-finite or out-of-range state) dftune::error is thrown,
// prefixed with the checkpoint's name, and every object is as it was. Memory: loading needs the
// new state beside the old one (the temporaries), saving nothing beyond a 64 KiB buffer.
//
// Whatever save accepts, load accepts: save runs load's checks of the state first (finite
// parameters, the estimator's and the rule's state as restore() would take them) and refuses,
// writing nothing, a state that could not be loaded back.
//
// Files: written atomically (temporary + fsync + rename, format.hpp's AtomicFile); saving through
// a symlink replaces the file the link points to and keeps the link; the temporaries of a save
// killed part-way are removed by the next save or load of the same path.
//
// Payload of an estimator checkpoint (kind 1):
//   u32 sizeof(T) · u32 init · f64 log_u0 · u64 N · [u64 N, N × u8 seen] · [u64 N, N × T log u]
// Payload of a training checkpoint (kind 2): the estimator payload, then
//   DftOptions: u32 variant · f64 tau · f64 gamma · u32 init · f64 log_u0 · f64 eps
//   StepOptions: f64 max_grad_norm
//   u64 step · [u64 P, P × T parameters] · rule (u32 tag, RuleCodec) · schedule (u32 tag, ScheduleCodec)
// Your own rule or schedule type takes part by specialising io::RuleCodec / io::ScheduleCodec; an
// array a RuleCodec reads holds at most P elements.
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/estimator/estimator.hpp>
#include <dftune/io/format.hpp>
#include <dftune/objective/dft_options.hpp>
#include <dftune/optim/adam.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/schedule.hpp>
#include <dftune/optim/sgd.hpp>
#include <dftune/optim/step_options.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace io {

namespace detail {

template <class V>
std::string show(const V& v) {
  std::ostringstream os;
  os.precision(17);
  if constexpr (std::is_enum_v<V>) os << static_cast<std::int64_t>(v);
  else if constexpr (std::is_same_v<V, bool>) os << (v ? "true" : "false");
  else os << v;
  return os.str();
}

template <class V>
bool same(const V& a, const V& b) {
  if constexpr (std::is_floating_point_v<V>) return std::bit_cast<std::uint64_t>(static_cast<double>(a)) ==
                                                    std::bit_cast<std::uint64_t>(static_cast<double>(b));
  else return a == b;
}

// A configuration field of the file that must equal the caller's (floats bit for bit, so that
// decode followed by encode gives back the same bytes).
template <class V>
void expect_same(std::string_view field, const V& in_file, const V& in_memory) {
  if (!same(in_file, in_memory))
    dftune::detail::fail(field, show(in_file) + " in the file",
                         show(in_memory) + ", the value of the object being loaded into (a checkpoint restores state, "
                                           "not configuration)");
}

template <class T>
constexpr void check_scalar() {
  static_assert(std::is_floating_point_v<T> && std::numeric_limits<T>::is_iec559 && (sizeof(T) == 4 || sizeof(T) == 8),
                "dftune::io: checkpoints hold float or double state");
}

inline std::string path_name(const std::filesystem::path& p) { return "checkpoint " + p.string(); }

// ---- estimator section ---------------------------------------------------------------------
// A single file holds a whole estimator; the shards of a data-parallel run are saved together by
// io/sharded_checkpoint.hpp.
template <class T>
void check_unsharded(const Estimator<T>& est) {
  if (est.shard().size != 1)
    dftune::detail::fail("estimator", "an estimator sharded as " + est.shard().describe(),
                         "an unsharded one (save and load a data-parallel run with io::save_sharded / io::load_sharded, "
                         "io/sharded_checkpoint.hpp)");
}

template <class T>
void write_estimator(Writer& w, const Estimator<T>& est) {
  check_unsharded(est);
  w.u32(sizeof(T));
  w.u32(static_cast<std::uint32_t>(est.init()));
  w.f64(static_cast<double>(est.log_u0()));
  w.u64(est.size());
  w.array(est.raw_seen());
  w.array(est.raw_log_u());
}

template <class T>
struct EstimatorState {
  std::vector<T> log_u;
  std::vector<unsigned char> seen;
};

template <class T>
EstimatorState<T> read_estimator(Reader& in, const Estimator<T>& est) {
  check_unsharded(est);
  expect_same("scalar size", in.u32("scalar size"), static_cast<std::uint32_t>(sizeof(T)));
  expect_same("estimator init", static_cast<std::int64_t>(in.u32("estimator init")),
              static_cast<std::int64_t>(est.init()));
  expect_same("estimator log_u0", in.f64("estimator log_u0"), static_cast<double>(est.log_u0()));
  expect_same("num_examples", in.u64("num_examples"), static_cast<std::uint64_t>(est.size()));
  EstimatorState<T> s;
  s.seen = in.array<unsigned char>("seen", est.size());
  s.log_u = in.array<T>("log_u", est.size());
  est.check_raw(s.log_u, s.seen);
  return s;
}

}  // namespace detail

// ---- rules ---------------------------------------------------------------------------------
// RuleCodec<R>: tag (a distinct u32), write(w, rule) and read(in, current) -> R, which reads
// what write wrote, checks the options against current's and returns a rule holding the state;
// optionally check(rule), which throws what read would throw for the rule's own state (saving
// calls it, so that what saves also loads).
template <class R>
struct RuleCodec;

template <class T>
struct RuleCodec<Sgd<T>> {
  static constexpr std::uint32_t tag = 1;
  static constexpr const char* name = "Sgd";
  static void write(Writer& w, const Sgd<T>& r) {
    const SgdOptions& o = r.options();
    w.f64(o.momentum);
    w.f64(o.dampening);
    w.f64(o.weight_decay);
    w.u8(o.nesterov ? 1 : 0);
    w.u64(r.steps());
    w.u64(r.num_parameters());
    w.array(r.momentum_buffer());
  }
  static Sgd<T> read(Reader& in, const Sgd<T>& current) {
    const SgdOptions& o = current.options();
    detail::expect_same("sgd momentum", in.f64("sgd momentum"), o.momentum);
    detail::expect_same("sgd dampening", in.f64("sgd dampening"), o.dampening);
    detail::expect_same("sgd weight_decay", in.f64("sgd weight_decay"), o.weight_decay);
    const std::uint8_t nesterov = in.u8("sgd nesterov");
    if (nesterov > 1) dftune::detail::fail("sgd nesterov", static_cast<int>(nesterov), "0 or 1");
    detail::expect_same("sgd nesterov", nesterov == 1, o.nesterov);
    const std::uint64_t steps = in.u64("sgd steps");
    const std::uint64_t n = in.u64("sgd num_parameters");
    std::vector<T> buf = in.array<T>("sgd momentum_buffer");
    Sgd<T> r(o);
    r.restore(static_cast<std::size_t>(steps), static_cast<std::size_t>(n), std::move(buf));
    return r;
  }
  static void check(const Sgd<T>& r) { r.check_state(r.steps(), r.num_parameters(), r.momentum_buffer()); }
};

template <class T, class D>
struct RuleCodec<AdamUpdate<T, D>> {
  static constexpr bool decoupled = std::is_same_v<D, DecoupledWeightDecay>;
  static_assert(decoupled || std::is_same_v<D, CoupledWeightDecay>,
                "dftune::io::RuleCodec: specialise it for an AdamUpdate with your own weight-decay policy");
  static constexpr std::uint32_t tag = decoupled ? 3 : 2;
  static constexpr const char* name = decoupled ? "AdamW" : "Adam";
  static void write(Writer& w, const AdamUpdate<T, D>& r) {
    const AdamOptions& o = r.options();
    w.f64(o.beta1);
    w.f64(o.beta2);
    w.f64(o.eps);
    w.f64(o.weight_decay);
    w.u64(r.steps());
    w.u64(r.num_parameters());
    w.array(r.first_moment());
    w.array(r.second_moment());
  }
  static AdamUpdate<T, D> read(Reader& in, const AdamUpdate<T, D>& current) {
    const AdamOptions& o = current.options();
    detail::expect_same("adam beta1", in.f64("adam beta1"), o.beta1);
    detail::expect_same("adam beta2", in.f64("adam beta2"), o.beta2);
    detail::expect_same("adam eps", in.f64("adam eps"), o.eps);
    detail::expect_same("adam weight_decay", in.f64("adam weight_decay"), o.weight_decay);
    const std::uint64_t steps = in.u64("adam steps");
    const std::uint64_t n = in.u64("adam num_parameters");
    std::vector<T> m = in.array<T>("adam first_moment");
    std::vector<T> v = in.array<T>("adam second_moment");
    AdamUpdate<T, D> r(o);
    r.restore(static_cast<std::size_t>(steps), static_cast<std::size_t>(n), std::move(m), std::move(v));
    return r;
  }
  static void check(const AdamUpdate<T, D>& r) {
    r.check_state(r.steps(), r.num_parameters(), r.first_moment(), r.second_moment());
  }
};

// ---- schedules -----------------------------------------------------------------------------
// ScheduleCodec<S>: tag, write(w, s) and check(in, current), which reads what write wrote and
// checks it against current (a schedule is configuration: nothing of it is restored).
template <class S>
struct ScheduleCodec;

template <>
struct ScheduleCodec<ConstantSchedule> {
  static constexpr std::uint32_t tag = 1;
  static constexpr const char* name = "ConstantSchedule";
  // One f64, as when the field was called `rate`: the format stores no field names, so files
  // written before the rename load unchanged.
  static void write(Writer& w, const ConstantSchedule& s) { w.f64(s.base_lr); }
  static void check(Reader& in, const ConstantSchedule& s) {
    detail::expect_same("schedule base_lr", in.f64("schedule base_lr"), s.base_lr);
  }
};

template <>
struct ScheduleCodec<CosineSchedule> {
  static constexpr std::uint32_t tag = 2;
  static constexpr const char* name = "CosineSchedule";
  static void write(Writer& w, const CosineSchedule& s) {
    w.f64(s.base_lr);
    w.f64(s.min_lr);
    w.u64(s.warmup_steps);
    w.u64(s.total_steps);
  }
  static void check(Reader& in, const CosineSchedule& s) {
    detail::expect_same("schedule base_lr", in.f64("schedule base_lr"), s.base_lr);
    detail::expect_same("schedule min_lr", in.f64("schedule min_lr"), s.min_lr);
    detail::expect_same("schedule warmup_steps", in.u64("schedule warmup_steps"), static_cast<std::uint64_t>(s.warmup_steps));
    detail::expect_same("schedule total_steps", in.u64("schedule total_steps"), static_cast<std::uint64_t>(s.total_steps));
  }
};

template <class R>
concept CheckpointableRule = requires { RuleCodec<R>::tag; };
template <class S>
concept CheckpointableSchedule = requires { ScheduleCodec<S>::tag; };

namespace detail {

template <class T>
std::uint64_t estimator_max_payload(const Estimator<T>& est) {
  CountingSink n;
  Writer w(n);
  write_estimator(w, est);
  w.flush();
  return n.size();
}

template <class T>
void check_savable(const Estimator<T>& est) {
  est.check_raw(est.raw_log_u(), est.raw_seen());
}

template <class M, class R, class S>
constexpr void check_checkpointable() {
  check_scalar<typename M::scalar_type>();
  static_assert(CheckpointableRule<R>, "dftune::io: specialise dftune::io::RuleCodec<R> to checkpoint this rule");
  static_assert(CheckpointableSchedule<S>,
                "dftune::io: specialise dftune::io::ScheduleCodec<S> to checkpoint this schedule");
}

// The optimizer's section of a training checkpoint, after the estimator's: DftOptions,
// StepOptions, step, parameters, rule, schedule. Also the rank-0 file of a sharded checkpoint
// (io/sharded_checkpoint.hpp).
template <class M, class R, class S, class C>
void write_optimizer_state(Writer& w, const DftOptimizer<M, R, S, C>& opt) {
  using T = typename M::scalar_type;
  const DftOptions& o = opt.options();
  w.u32(static_cast<std::uint32_t>(o.variant));
  w.f64(o.tau);
  w.f64(o.gamma);
  w.u32(static_cast<std::uint32_t>(o.init));
  w.f64(o.log_u0);
  w.f64(o.eps);
  w.f64(opt.step_options().max_grad_norm);
  w.u64(opt.steps());
  const std::span<T> params = opt.model().parameters();
  w.array(std::span<const T>(params));
  w.u32(RuleCodec<R>::tag);
  RuleCodec<R>::write(w, opt.rule());
  w.u32(ScheduleCodec<S>::tag);
  ScheduleCodec<S>::write(w, opt.schedule());
}

template <class M, class R, class S, class C>
void write_training(Writer& w, const DftOptimizer<M, R, S, C>& opt) {
  write_estimator(w, std::as_const(opt.estimator()));
  write_optimizer_state(w, opt);
}

// The most a training checkpoint for `opt` can hold: its own payload, plus the model's parameter
// count for every array of the rule's section (an array read there holds at most that many).
// Without the estimator: the most the optimizer's section alone can hold.
template <class M, class R, class S, class C>
std::uint64_t training_max_payload(const DftOptimizer<M, R, S, C>& opt, bool with_estimator = true) {
  using T = typename M::scalar_type;
  CountingSink all, rule;
  Writer w(all), r(rule);
  if (with_estimator) write_training(w, opt);
  else write_optimizer_state(w, opt);
  w.flush();
  RuleCodec<R>::write(r, opt.rule());
  const std::uint64_t per_array = static_cast<std::uint64_t>(opt.model().parameters().size()) * sizeof(T);
  std::uint64_t bound = all.size();
  for (std::uint64_t k = 0; k < r.arrays(); ++k)
    bound = bound > std::numeric_limits<std::uint64_t>::max() - per_array ? std::numeric_limits<std::uint64_t>::max()
                                                                         : bound + per_array;
  return bound;
}

// Load's checks of opt's own state (without its estimator's).
template <class M, class R, class S, class C>
void check_savable_optimizer(const DftOptimizer<M, R, S, C>& opt) {
  using T = typename M::scalar_type;
  const std::span<T> params = opt.model().parameters();
  for (std::size_t k = 0; k < params.size(); ++k)
    if (!std::isfinite(params[k])) dftune::detail::fail_at("parameters", k, params[k], "a finite number");
  if constexpr (requires { RuleCodec<R>::check(opt.rule()); }) RuleCodec<R>::check(opt.rule());
  if constexpr (requires { opt.rule().num_parameters(); })
    if (opt.rule().num_parameters() != 0 && opt.rule().num_parameters() != params.size())
      dftune::detail::fail("rule num_parameters", opt.rule().num_parameters(),
                           "0 or the model's parameter count " + std::to_string(params.size()));
}

template <class M, class R, class S, class C>
void check_savable(const DftOptimizer<M, R, S, C>& opt) {
  check_savable(std::as_const(opt.estimator()));
  check_savable_optimizer(opt);
}

template <class T, class R>
struct OptimizerState {
  std::uint64_t step = 0;
  std::vector<T> params;
  R rule;
};

template <class T, class R>
struct TrainingState {
  EstimatorState<T> est;
  OptimizerState<T, R> opt;
};

// Reads what write_optimizer_state wrote, checked against opt's configuration; changes nothing.
template <class M, class R, class S, class C>
OptimizerState<typename M::scalar_type, R> read_optimizer_state(Reader& in, const DftOptimizer<M, R, S, C>& opt) {
  using T = typename M::scalar_type;
  const std::span<T> params = opt.model().parameters();
  const DftOptions& o = opt.options();
  expect_same("variant", static_cast<std::int64_t>(in.u32("variant")), static_cast<std::int64_t>(o.variant));
  expect_same("tau", in.f64("tau"), o.tau);
  expect_same("gamma", in.f64("gamma"), o.gamma);
  expect_same("init", static_cast<std::int64_t>(in.u32("init")), static_cast<std::int64_t>(o.init));
  expect_same("log_u0", in.f64("log_u0"), o.log_u0);
  expect_same("eps", in.f64("eps"), o.eps);
  expect_same("max_grad_norm", in.f64("max_grad_norm"), opt.step_options().max_grad_norm);
  const std::uint64_t step = in.u64("step");
  std::vector<T> p = in.array<T>("parameters", params.size());
  for (std::size_t k = 0; k < p.size(); ++k)
    if (!std::isfinite(p[k])) dftune::detail::fail_at("parameters", k, p[k], "a finite number");
  const std::uint32_t rtag = in.u32("rule");
  if (rtag != RuleCodec<R>::tag)
    dftune::detail::fail("rule", "tag " + std::to_string(rtag) + " in the file",
                         "tag " + std::to_string(RuleCodec<R>::tag) + " (" + RuleCodec<R>::name + ")");
  in.limit_arrays(params.size(), "a rule's state is no longer than the model's " + std::to_string(params.size()) +
                                     " parameters");
  R rule = RuleCodec<R>::read(in, opt.rule());
  in.limit_arrays();
  if (rule.num_parameters() != 0 && rule.num_parameters() != params.size())
    dftune::detail::fail("rule num_parameters", rule.num_parameters(),
                         "0 or the model's parameter count " + std::to_string(params.size()));
  const std::uint32_t stag = in.u32("schedule");
  if (stag != ScheduleCodec<S>::tag)
    dftune::detail::fail("schedule", "tag " + std::to_string(stag) + " in the file",
                         "tag " + std::to_string(ScheduleCodec<S>::tag) + " (" + ScheduleCodec<S>::name + ")");
  ScheduleCodec<S>::check(in, opt.schedule());
  return {step, std::move(p), std::move(rule)};
}

template <class M, class R, class S, class C>
TrainingState<typename M::scalar_type, R> read_training(Reader& in, const DftOptimizer<M, R, S, C>& opt) {
  EstimatorState<typename M::scalar_type> est = read_estimator(in, std::as_const(opt.estimator()));
  return {std::move(est), read_optimizer_state(in, opt)};
}

// Move a checked state in; nothing here can throw.
template <class M, class R, class S, class C>
void commit_optimizer_state(DftOptimizer<M, R, S, C>& opt, OptimizerState<typename M::scalar_type, R>&& l) {
  const auto params = opt.model().parameters();
  std::copy(l.params.begin(), l.params.end(), params.begin());
  opt.restore(static_cast<std::size_t>(l.step), std::move(l.rule));
}

template <class M, class R, class S, class C>
void commit(DftOptimizer<M, R, S, C>& opt, TrainingState<typename M::scalar_type, R>&& l) {
  opt.estimator().restore(std::move(l.est.log_u), std::move(l.est.seen));
  commit_optimizer_state(opt, std::move(l.opt));
}

}  // namespace detail

// ---- estimator checkpoints -----------------------------------------------------------------
// The estimator's checkpoint as a file image in memory (what save writes). Throws dftune::error,
// writing nothing, for a state load could not read back.
template <class T>
std::vector<std::byte> encode(const Estimator<T>& est) {
  detail::check_scalar<T>();
  detail::named("checkpoint", [&] { detail::check_savable(est); });
  return encode_checkpoint(CheckpointKind::estimator, [&](Writer& w) { detail::write_estimator(w, est); });
}

// Loads a file image made by encode(est); est is unchanged on any error.
template <class T>
void decode(std::span<const std::byte> file, Estimator<T>& est, std::string_view name = "checkpoint") {
  detail::check_scalar<T>();
  detail::EstimatorState<T> s = detail::named(name, [&] {
    return decode_checkpoint(file, CheckpointKind::estimator, detail::estimator_max_payload(est),
                             [&](Reader& in) { return detail::read_estimator(in, std::as_const(est)); });
  });
  est.restore(std::move(s.log_u), std::move(s.seen));  // checked above: cannot throw
}

// Writes the estimator's state to path, atomically (a temporary beside it, flushed, renamed over
// it): a failed save leaves the old file. Throws dftune::error naming the file.
template <class T>
void save(const std::filesystem::path& path, const Estimator<T>& est) {
  detail::check_scalar<T>();
  detail::named(detail::path_name(path), [&] {
    detail::check_savable(est);
    write_checkpoint(path, CheckpointKind::estimator, [&](Writer& w) { detail::write_estimator(w, est); });
  });
}

// Loads a file written by save(path, est); est is unchanged on any error (a dftune::error naming
// the file and the field: a wrong version, a corrupted file, a different number of examples or options).
template <class T>
void load(const std::filesystem::path& path, Estimator<T>& est) {
  detail::check_scalar<T>();
  detail::EstimatorState<T> s = detail::named(detail::path_name(path), [&] {
    return read_checkpoint(path, CheckpointKind::estimator, detail::estimator_max_payload(est),
                           [&](Reader& in) { return detail::read_estimator(in, std::as_const(est)); });
  });
  est.restore(std::move(s.log_u), std::move(s.seen));  // checked above: cannot throw
}

// ---- training checkpoints ------------------------------------------------------------------
// The whole run as a file image in memory (what save writes): estimator, options, step count,
// parameters, the inner rule's state and the schedule. Throws dftune::error, writing nothing, for a
// state load could not read back.
template <class M, class R, class S, class C>
std::vector<std::byte> encode(const DftOptimizer<M, R, S, C>& opt) {
  detail::check_checkpointable<M, R, S>();
  detail::named("checkpoint", [&] { detail::check_savable(opt); });
  return encode_checkpoint(CheckpointKind::training, [&](Writer& w) { detail::write_training(w, opt); });
}

// Loads a file image made by encode(opt) into opt, its model and its estimator; all three are
// unchanged on any error.
template <class M, class R, class S, class C>
void decode(std::span<const std::byte> file, DftOptimizer<M, R, S, C>& opt, std::string_view name = "checkpoint") {
  detail::check_checkpointable<M, R, S>();
  auto l = detail::named(name, [&] {
    return decode_checkpoint(file, CheckpointKind::training, detail::training_max_payload(opt),
                             [&](Reader& in) { return detail::read_training(in, opt); });
  });
  detail::commit(opt, std::move(l));
}

// Writes the whole run to path, atomically; resuming from it continues bit for bit. Throws
// dftune::error naming the file.
template <class M, class R, class S, class C>
void save(const std::filesystem::path& path, const DftOptimizer<M, R, S, C>& opt) {
  detail::check_checkpointable<M, R, S>();
  detail::named(detail::path_name(path), [&] {
    detail::check_savable(opt);
    write_checkpoint(path, CheckpointKind::training, [&](Writer& w) { detail::write_training(w, opt); });
  });
}

// Loads a file written by save(path, opt) into opt, its model and its estimator; all three are
// unchanged on any error (a dftune::error naming the file and the field that differs).
template <class M, class R, class S, class C>
void load(const std::filesystem::path& path, DftOptimizer<M, R, S, C>& opt) {
  detail::check_checkpointable<M, R, S>();
  auto l = detail::named(detail::path_name(path), [&] {
    return read_checkpoint(path, CheckpointKind::training, detail::training_max_payload(opt),
                           [&](Reader& in) { return detail::read_training(in, opt); });
  });
  detail::commit(opt, std::move(l));
}

}  // namespace io

DFTUNE_NAMESPACE_END
