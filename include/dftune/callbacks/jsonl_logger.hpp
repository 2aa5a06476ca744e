#pragma once
// The JSON Lines metrics log as a step callback: one object per DftOptimizer step, under the names
// TRL's logs use where TRL has one (metrics/metrics.hpp):
//
//   std::ofstream out("metrics.jsonl");
//   JsonlLogger log(out);
//   for (...) optimizer.step(batch, log);
//   // {"step": 1, "loss": 0.69, "learning_rate": 0.001, "grad_norm": 1.3, "logps/chosen": -4.1, ...}
//
// add_step_info(record, info) adds the same keys to a record of your own (to which you add epoch,
// throughput, ...), for a loop that writes its log itself.
#include <dftune/callbacks/step_callback.hpp>
#include <dftune/config.hpp>
#include <dftune/metrics/jsonl.hpp>
#include <dftune/optim/dft_optimizer.hpp>

#include <cstddef>
#include <ostream>
#include <string>

DFTUNE_NAMESPACE_BEGIN

// Adds a step's numbers to `record`: step (steps done, info.step + 1, as TRL's global_step), loss,
// dft/objective, learning_rate, grad_norm, logps/chosen, logps/rejected, and, when the step computed
// them (info.metrics), dft/log_u_mean, dft/log_u_min, dft/log_u_max, dft/ess, dft/max_weight,
// dft/weight_sum. Throws dftune::error if the record already holds one of these keys (nothing is
// added then).
template <class T>
JsonRecord& add_step_info(JsonRecord& record, const DftStepInfo<T>& info) {
  for (const char* key : {"step", "loss", "dft/objective", "learning_rate", "grad_norm", "logps/chosen", "logps/rejected"})
    if (record.contains(key)) detail::fail("key", key, "a key not yet in the record");
  if (info.metrics)
    for (const char* key : {"dft/log_u_mean", "dft/log_u_min", "dft/log_u_max", "dft/ess", "dft/max_weight", "dft/weight_sum"})
      if (record.contains(key)) detail::fail("key", key, "a key not yet in the record");
  record.add("step", info.step + 1)
      .add("loss", static_cast<double>(info.result.loss))
      .add("dft/objective", static_cast<double>(info.result.objective))
      .add("learning_rate", info.lr)
      .add("grad_norm", info.grad_norm)
      .add("logps/chosen", static_cast<double>(info.mean_pos_logp))
      .add("logps/rejected", static_cast<double>(info.mean_neg_logp));
  if (const auto& m = info.metrics)
    record.add("dft/log_u_mean", m->log_u_mean)
        .add("dft/log_u_min", m->log_u_min)
        .add("dft/log_u_max", m->log_u_max)
        .add("dft/ess", m->ess)
        .add("dft/max_weight", m->max_weight)
        .add("dft/weight_sum", m->weight_sum);
  return record;
}

// A step callback writing one JSON line per step (add_step_info's keys) to a stream it does not own.
// Flushes after each line, so a run killed mid-way leaves every finished step's line. Never asks to
// stop; throws dftune::io_error when the stream fails (the step itself is done: see
// callbacks/step_callback.hpp).
class JsonlLogger {
 public:
  // `out` must outlive the logger.
  explicit JsonlLogger(std::ostream& out) : out_(&out) {}

  // Writes the step's line.
  template <class T>
  void on_step(const DftStepInfo<T>& info) {
    JsonRecord r;
    add_step_info(r, info);
    *out_ << r.str() << '\n' << std::flush;
    if (!*out_) throw io_error("JsonlLogger: the stream refused the line of step " + std::to_string(info.step + 1));
    ++lines_;
  }

  // Lines written so far.
  std::size_t lines() const { return lines_; }

 private:
  std::ostream* out_;
  std::size_t lines_ = 0;
};

DFTUNE_NAMESPACE_END
