# dftune_docs: the API reference from the headers (docs/api/Doxyfile.in), HTML in build/docs/api/html.
# The headers listed here document every public name; a name added without a comment fails the
# target. docs/api.md lists the headers not yet covered.
set(_dftune_documented_headers
  checked_size.hpp config.hpp dftune.hpp error.hpp threads.hpp version.hpp
  metrics/jsonl.hpp metrics/metrics.hpp
  estimator/estimator.hpp
  io/checkpoint.hpp io/sharded_checkpoint.hpp
  logprob/logprob.hpp logprob/token_logits.hpp
  math/log_domain.hpp math/no_overflow.hpp
  model/categorical_policy.hpp model/sequence_batch.hpp
  objective/baseline.hpp objective/best_of_n.hpp objective/dft.hpp objective/dft_options.hpp objective/dpo.hpp
  objective/dynamic_ft.hpp objective/ipo.hpp objective/orpo.hpp objective/pairwise.hpp objective/reinforce.hpp
  objective/result.hpp
  objective/rwr.hpp objective/sequence_scores.hpp objective/sft.hpp objective/simpo.hpp
  optim/adam.hpp optim/clip.hpp optim/dft_optimizer.hpp optim/rule.hpp optim/schedule.hpp optim/sgd.hpp optim/step_options.hpp
  model/concept.hpp
  model/attention.hpp model/generation/tiled_linear.hpp model/decoder/kv_decoder.hpp
  model/decoder/config.hpp model/decoder/decoder.hpp model/decoder/layers.hpp
  model/generation/generate.hpp model/generation/kv_cache.hpp model/generation/packed_weights.hpp
  model/generation/arena.hpp model/generation/cached_attention.hpp cpu/tanh.hpp model/tiny_lm/gelu.hpp
  logprob/linear/linear.hpp logprob/linear/linear_logits.hpp logprob/linear/rows.hpp logprob/linear/vocab_parallel.hpp
  logprob/linear/checks.hpp logprob/linear/chunked.hpp logprob/linear/gemm.hpp logprob/linear/logits.hpp logprob/linear/plan.hpp
  backend/xtensor/categorical_policy.hpp backend/xtensor/logprob.hpp callbacks/jsonl.hpp callbacks/metrics.hpp cpu/isa.hpp
  callbacks/step_callback.hpp callbacks/jsonl_logger.hpp
  distributed/collectives.hpp distributed/communicator.hpp distributed/mpi.hpp distributed/replica_check.hpp
  distributed/sampler.hpp distributed/shard.hpp distributed/single.hpp
  hf/added_tokens.hpp hf/bpe.hpp hf/byte_level.hpp hf/config.hpp hf/jsonl.hpp hf/normalizer.hpp hf/pre_tokenizer.hpp
  hf/pretrained.hpp hf/regex.hpp hf/safetensors.hpp hf/tokenizer.hpp hf/utf8.hpp
  io/atomic_file.hpp io/bytes.hpp io/format.hpp io/negatives_cache.hpp
  logprob/checks.hpp logprob/cpu/bf16.hpp logprob/cpu/fast.hpp logprob/cpu/rows.hpp logprob/generic.hpp
  model/context_tokens.hpp model/sampling.hpp model/weights_io.hpp
  model/tiny_lm/config.hpp model/tiny_lm/kv_decoder.hpp model/tiny_lm/layers.hpp model/tiny_lm/threads.hpp model/tiny_lm/tiny_lm.hpp
  objective/checks.hpp optim/accumulate.hpp)
set(_input "${PROJECT_SOURCE_DIR}/docs/api/namespaces.dox")
foreach(_h IN LISTS _dftune_documented_headers)
  string(APPEND _input " \\\n  ${PROJECT_SOURCE_DIR}/include/dftune/${_h}")
endforeach()
set(DFTUNE_DOXYGEN_INPUT "${_input}")
set(DFTUNE_DOXYGEN_PYTHON "${Python3_EXECUTABLE}")
configure_file(${PROJECT_SOURCE_DIR}/docs/api/Doxyfile.in ${PROJECT_BINARY_DIR}/docs/api/Doxyfile @ONLY)
add_custom_target(dftune_docs
  COMMAND Doxygen::doxygen ${PROJECT_BINARY_DIR}/docs/api/Doxyfile
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
  COMMENT "dftune_docs: API reference in ${PROJECT_BINARY_DIR}/docs/api/html (Doxygen warnings are errors)"
  VERBATIM)
