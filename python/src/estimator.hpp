#pragma once
// dftune_torch.Estimator: dftune::Estimator<double> (log u_i per training example; the estimator of
// docs/math.md and objective/dft.hpp) with torch's state_dict protocol. The state is float64 whatever the
// log-probs' dtype: B numbers per step, and float32 log u would round every update.
// Sharded (data-parallel training, docs/distributed.md): built with Shard{rank, P} it holds only the
// ids i with i mod P = rank; the state_dict is then that shard's (the package adds num_examples and
// shard to it, and reshards state_dicts of another world size into this one: dftune_torch/__init__.py).
#include "tensors.hpp"

#include <dftune/estimator/estimator.hpp>
#include <dftune/objective/dft_options.hpp>

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace dftune_torch {

namespace py = pybind11;

inline dftune::EstimatorInit parse_init(const std::string& s) {
  if (s == "first_visit") return dftune::EstimatorInit::first_visit;
  if (s == "constant") return dftune::EstimatorInit::constant;
  if (s == "fixed") return dftune::EstimatorInit::fixed;
  fail("init", "'" + s + "'", "'first_visit', 'constant' or 'fixed'");
}

// A torch.Tensor argument, or an error naming the argument and the type it got.
inline at::Tensor tensor_of(std::string_view name, const py::handle& obj) {
  if (!THPVariable_Check(obj.ptr())) fail(name, std::string(py::str(py::type::handle_of(obj).attr("__name__"))), "a torch.Tensor");
  return THPVariable_Unpack(obj.ptr());
}

inline std::string number(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

inline std::string init_name(dftune::EstimatorInit i) {
  return i == dftune::EstimatorInit::first_visit ? "first_visit" : i == dftune::EstimatorInit::constant ? "constant" : "fixed";
}

class PyEstimator {
 public:
  PyEstimator(std::int64_t num_examples, const std::string& init, double log_u0, std::int64_t shard_rank,
              std::int64_t shard_size)
      : est_(checked_count(num_examples), dftune::DftOptions{.init = parse_init(init), .log_u0 = log_u0},
             checked_shard(shard_rank, shard_size)) {}

  // The number of ids held (num_examples unless sharded).
  std::size_t size() const { return est_.size(); }
  std::size_t num_examples() const { return est_.num_examples(); }
  // (rank, P): the ids held are those with id mod P = rank; (0, 1) holds every id.
  std::pair<std::size_t, std::size_t> shard() const { return {est_.shard().rank, est_.shard().size}; }
  bool sharded() const { return est_.shard().size != 1; }
  std::string init() const { return init_name(est_.init()); }
  double log_u0() const { return est_.log_u0(); }
  std::optional<double> log_u(std::int64_t id) const { return est_.log_u(id); }
  dftune::Estimator<double>& get() { return est_; }
  const dftune::Estimator<double>& get() const { return est_; }

  // Stores a batch's log u (float64 [B], dft_share's) for ids [B] unless init is fixed; checks every
  // id and value first, so a refused call stores nothing. The commit of a data-parallel step, made
  // once every rank has computed its share (dftune_torch/__init__.py).
  void commit(const at::Tensor& ids, const at::Tensor& log_u) {
    if (est_.init() == dftune::EstimatorInit::fixed) return;
    check_dim("ids", ids, 1, "a 1-D tensor [B]");
    const at::Tensor id = as_i64("ids", ids);
    if (log_u.scalar_type() != at::kDouble) fail("log_u", dtype_of(log_u), "dtype torch.float64");
    const at::Tensor lu = log_u.detach().to(at::kCPU).contiguous();
    est_.set(i64_span(id), f64_span(lu));
  }

  // {"init", "log_u0", "log_u": float64 [n] (0 where never updated), "seen": bool [n]}, n the ids held
  // (by local index, id = rank + k·P when sharded).
  py::dict state_dict() const {
    const auto n = static_cast<std::int64_t>(est_.size());
    at::Tensor log_u = at::empty({n}, at::kDouble);
    at::Tensor seen = at::empty({n}, at::kBool);
    std::copy(est_.raw_log_u().begin(), est_.raw_log_u().end(), log_u.data_ptr<double>());
    std::copy(est_.raw_seen().begin(), est_.raw_seen().end(), seen.data_ptr<bool>());
    py::dict d;
    d["init"] = init();
    d["log_u0"] = log_u0();
    d["log_u"] = log_u;
    d["seen"] = seen;
    return d;
  }

  // The whole state from a state_dict of an estimator with the same num_examples, init and log_u0;
  // every check (keys, configuration, shapes, dtypes, values) runs before the state is replaced.
  void load_state_dict(const py::dict& d) {
    for (const auto& kv : d) {
      const std::string key = py::str(kv.first);
      if (key != "init" && key != "log_u0" && key != "log_u" && key != "seen")
        fail("state_dict", "unexpected key '" + key + "'", "the keys 'init', 'log_u0', 'log_u' and 'seen'");
    }
    for (const char* key : {"init", "log_u0", "log_u", "seen"})
      if (!d.contains(key)) fail("state_dict", std::string("no key '") + key + "'", "the keys 'init', 'log_u0', 'log_u' and 'seen'");
    const std::string init = py::str(d["init"]);
    if (init != this->init()) fail("init", "'" + init + "'", "'" + this->init() + "' (this estimator's)");
    // A number, as state_dict writes it: a string (or a bool) is refused, not parsed.
    const py::object log_u0_obj = d["log_u0"];
    if (py::isinstance<py::bool_>(log_u0_obj) ||
        !(py::isinstance<py::float_>(log_u0_obj) || py::isinstance<py::int_>(log_u0_obj)))
      fail("log_u0", std::string(py::str(py::type::handle_of(log_u0_obj).attr("__name__"))), "a float");
    const double log_u0 = py::cast<double>(py::float_(log_u0_obj));
    if (log_u0 != this->log_u0()) fail("log_u0", log_u0, number(this->log_u0()) + " (this estimator's)");
    const at::Tensor log_u = tensor_of("log_u", d["log_u"]);
    const at::Tensor seen = tensor_of("seen", d["seen"]);
    const auto n = static_cast<std::int64_t>(est_.size());
    const char* const count = sharded() ? "the ids of this estimator's shard" : "num_examples";
    check_shape("log_u", log_u, {n}, count);
    check_shape("seen", seen, {n}, count);
    // float64 only: the state is float64, and a float16/float32 copy has rounded every log u.
    if (log_u.scalar_type() != at::kDouble) fail("log_u", dtype_of(log_u), "dtype torch.float64 (the estimator's state)");
    if (seen.scalar_type() != at::kBool && !is_integer_dtype(seen.scalar_type()))
      fail("seen", dtype_of(seen), "a bool or integer tensor");
    const at::Tensor lu = log_u.detach().to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor s64 = seen.detach().to(at::kCPU, at::kLong).contiguous();
    std::vector<unsigned char> flags(est_.size());
    for (std::size_t i = 0; i < flags.size(); ++i) {
      const std::int64_t v = s64.data_ptr<std::int64_t>()[i];
      if (v != 0 && v != 1) dftune::detail::fail_at("seen", i, v, "0 or 1");
      flags[i] = static_cast<unsigned char>(v);
    }
    std::vector<double> values(lu.data_ptr<double>(), lu.data_ptr<double>() + n);
    est_.restore(std::move(values), std::move(flags));  // checks, then swaps
  }

 private:
  static std::size_t checked_count(std::int64_t n) {
    if (n < 1) fail("num_examples", n, "at least 1");
    return static_cast<std::size_t>(n);
  }
  static dftune::distributed::Shard checked_shard(std::int64_t rank, std::int64_t size) {
    if (size < 1) fail("shard", "world size " + std::to_string(size), "(rank, world size) with world size >= 1");
    if (rank < 0 || rank >= size)
      fail("shard", "rank " + std::to_string(rank), "(rank, world size) with rank in [0, " + std::to_string(size) + ")");
    return {.rank = static_cast<std::size_t>(rank), .size = static_cast<std::size_t>(size)};
  }

  dftune::Estimator<double> est_;
};

}  // namespace dftune_torch
