#pragma once
// Umbrella header: the CPU parts of dftune. It never pulls in CUDA (see logprob/cuda/).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/version.hpp>

#include <dftune/math/log_domain.hpp>

#include <dftune/estimator/estimator.hpp>
#include <dftune/objective/dft.hpp>
#include <dftune/objective/dft_options.hpp>
#include <dftune/objective/sequence_scores.hpp>

#include <dftune/model/concept.hpp>
#include <dftune/model/sequence_batch.hpp>
