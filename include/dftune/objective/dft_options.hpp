#pragma once
// Options of the DFT / DFT2 objective and of its estimator (docs/math.md).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/objective/checks.hpp>

#include <cmath>
#include <ostream>

DFTUNE_NAMESPACE_BEGIN

// Which objective of arXiv 2502.18679: DFT (§4) or the reference-free DFT2 (§5).
enum class Variant {
  dft,   // score s = log π(y|x); exponent d_ij = s_ij/τ − log π_ref(y'_ij|x_i)
  dft2,  // reference-free: s = log π(y|x) / (|y| + ε); d_ij = s_ij/τ
};

// How log u_i is set before an example's first update, and whether it is updated at all.
enum class EstimatorInit {
  first_visit,  // log u_i = logmeanexp_j d_ij from the example's first batch (dftune's default)
  constant,     // log u_i = log_u0 before the first update (log_u0 = 0: the reference trainer)
  fixed,        // log u_i ≡ log_u0, never updated: weights π_θ/π_ref shrink as negatives die (studies)
};

// Writes "dft" or "dft2".
inline std::ostream& operator<<(std::ostream& os, Variant v) { return os << (v == Variant::dft ? "dft" : "dft2"); }
// Writes "first_visit", "constant" or "fixed".
inline std::ostream& operator<<(std::ostream& os, EstimatorInit i) {
  return os << (i == EstimatorInit::first_visit ? "first_visit" : i == EstimatorInit::constant ? "constant" : "fixed");
}

// Options of the DFT / DFT2 objective and of its estimator; validate() checks them, and every
// function taking them calls it first.
struct DftOptions {
  Variant variant = Variant::dft;  // DFT, or the reference-free DFT2
  double tau = 1.0;    // temperature τ of the discriminative likelihood, > 0
  double gamma = 0.85; // moving-average rate γ of the estimator, in (0, 1]; 1 keeps no memory
  // Read by Estimator's constructor: they define the state of an unseen example.
  EstimatorInit init = EstimatorInit::first_visit;
  double log_u0 = 0.0;  // log u of an unseen example under constant and fixed init; finite
  double eps = 1e-8;   // ε of the DFT2 length normalisation |y| + ε
};

// Throws dftune::error naming the first option out of its range.
inline void validate(const DftOptions& o) {
  detail::check_positive("tau", o.tau);
  if (!(o.gamma > 0 && o.gamma <= 1)) detail::fail("gamma", o.gamma, "a number in (0, 1]");
  if (!std::isfinite(o.log_u0)) detail::fail("log_u0", o.log_u0, "a finite number");
  detail::check_nonnegative("eps", o.eps);
  if (o.variant != Variant::dft && o.variant != Variant::dft2)
    detail::fail("variant", static_cast<int>(o.variant), "Variant::dft or Variant::dft2");
  if (o.init != EstimatorInit::first_visit && o.init != EstimatorInit::constant && o.init != EstimatorInit::fixed)
    detail::fail("init", static_cast<int>(o.init), "EstimatorInit::first_visit, constant or fixed");
}

DFTUNE_NAMESPACE_END
