#pragma once
// Gradient accumulation for DftOptimizer::step(micro_batches) (docs/distributed.md, "Gradient
// accumulation"): a step over k micro-batches is the step over their union — one objective over
// the union's scores (the global 1/B of the whole step, its loss and metrics, the estimator read
// once and updated once with every id of the step), a gradient summed over the micro-batches'
// backward passes (only one micro-batch's activations alive at a time), one all-reduce, one clip,
// one update. The paper's recipe is 4 prompts per GPU × 8 accumulation steps.
//
// MicroBatchUnion lays the union out: the micro-batches' ids and log π_ref concatenated (a copy of
// B ids and B·m values per step when k > 1; none when k = 1), each micro-batch's first example in
// the union, and the checks that span micro-batches (at least one; one m; distinct ids across
// them — each micro-batch's own checks stay with the objective and the model).
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/checks.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

template <class T>
class MicroBatchUnion {
 public:
  // Batch: DftBatch<T> (ids, positives, negatives, num_negatives, ref_neg_logp).
  template <class Batch>
  void assemble(std::span<const Batch> micro) {
    if (micro.empty()) fail("micro_batches", "0 micro-batches", "at least 1 (a step over k >= 1 micro-batches)");
    const std::size_t k = micro.size(), m = micro[0].num_negatives;
    first_.assign(k + 1, 0);
    for (std::size_t q = 0; q < k; ++q) {
      const Batch& b = micro[q];
      const std::string name = k == 1 ? std::string("batch") : "micro_batches[" + std::to_string(q) + "]";
      if (b.num_negatives != m)
        fail(name + ".num_negatives", b.num_negatives, std::to_string(m) + " as in micro_batches[0] (one m per step)");
      const std::size_t n = b.ids.size();
      check_size(name + ".positives", b.positives.size(), n);
      check_size_product(name + ".negatives", b.negatives.size(), n, m, name + ".num_negatives (B·m)");
      first_[q + 1] = checked_add("examples of the step", first_[q], n);
    }
    m_ = m;
    single_ = k == 1;
    if (single_) {
      ids_view_ = micro[0].ids;
      ref_view_ = micro[0].ref_neg_logp;
      return;
    }
    ids_.clear();
    ref_.clear();
    for (const Batch& b : micro) {
      ids_.insert(ids_.end(), b.ids.begin(), b.ids.end());
      ref_.insert(ref_.end(), b.ref_neg_logp.begin(), b.ref_neg_logp.end());
    }
    check_unique_ids(ids_);  // an id in two micro-batches would be two u_i updates in one step
    ids_view_ = ids_;
    ref_view_ = ref_;
  }

  std::size_t micro_batches() const { return first_.size() - 1; }
  std::size_t size() const { return first_.back(); }  // B_local: the step's examples on this rank
  std::size_t num_negatives() const { return m_; }
  std::size_t first(std::size_t q) const { return first_[q]; }    // micro-batch q's first example
  std::size_t count(std::size_t q) const { return first_[q + 1] - first_[q]; }
  std::span<const std::int64_t> ids() const { return ids_view_; }
  std::span<const T> ref_neg_logp() const { return ref_view_; }

 private:
  std::vector<std::size_t> first_{0};
  std::size_t m_ = 0;
  bool single_ = true;
  std::vector<std::int64_t> ids_;
  std::vector<T> ref_;
  std::span<const std::int64_t> ids_view_;
  std::span<const T> ref_view_;
};

}  // namespace detail

DFTUNE_NAMESPACE_END
