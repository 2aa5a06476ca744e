#pragma once
// Umbrella header: the CPU parts of dftune. It never pulls in CUDA (see logprob/cuda/).
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/version.hpp>

#include <dftune/math/log_domain.hpp>

#include <dftune/estimator/estimator.hpp>
#include <dftune/objective/dft.hpp>
#include <dftune/objective/dft_options.hpp>
#include <dftune/objective/result.hpp>
#include <dftune/objective/sequence_scores.hpp>

#include <dftune/objective/baseline.hpp>
#include <dftune/objective/best_of_n.hpp>
#include <dftune/objective/dpo.hpp>
#include <dftune/objective/dynamic_ft.hpp>
#include <dftune/objective/ipo.hpp>
#include <dftune/objective/orpo.hpp>
#include <dftune/objective/reinforce.hpp>
#include <dftune/objective/rwr.hpp>
#include <dftune/objective/sft.hpp>
#include <dftune/objective/simpo.hpp>

#include <dftune/model/concept.hpp>
#include <dftune/model/sequence_batch.hpp>
#include <dftune/model/categorical_policy.hpp>
#include <dftune/model/generation/generate.hpp>

#include <dftune/logprob/linear/linear.hpp>
#include <dftune/logprob/logprob.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <dftune/optim/adam.hpp>
#include <dftune/optim/dft_optimizer.hpp>
#include <dftune/optim/rule.hpp>
#include <dftune/optim/schedule.hpp>
#include <dftune/optim/sgd.hpp>

#include <dftune/callbacks/jsonl_logger.hpp>

// Data-parallel training (docs/distributed.md); the MPI communicator, distributed/mpi.hpp, is
// included only explicitly (it needs MPI).
#include <dftune/distributed/collectives.hpp>
#include <dftune/distributed/communicator.hpp>
#include <dftune/distributed/sampler.hpp>
#include <dftune/distributed/shard.hpp>
#include <dftune/distributed/single.hpp>
