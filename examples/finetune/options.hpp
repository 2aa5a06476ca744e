#pragma once
// The flags of examples/finetune.cpp. Every bad flag exits with status 2 and a message naming the
// flag, the value and what was expected (demo::Flags, shared with the demo); "--config FILE"
// stands for the flags written in FILE, one "name value" per line.
#include "../demo/cli.hpp"

#include <dftune/hf/jsonl.hpp>
#include <dftune/model/sampling.hpp>
#include <dftune/objective/dft_options.hpp>
#include <dftune/objective/dpo.hpp>
#include <dftune/objective/ipo.hpp>
#include <dftune/objective/orpo.hpp>
#include <dftune/objective/simpo.hpp>

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace finetune {

// The objectives that fit prompt/answer data plus the model's own samples: DFT and DFT2 (the
// estimator), SFT (the answers alone), and the pairwise ones with each sampled negative as the
// rejected answer of a pair (answer ≻ negative): DPO and IPO (against log π_ref of both, the base
// model's), SimPO and ORPO (reference-free). RWR, RLOO and Best-of-N need a reward per sample and
// Dynamic FT per-token scores: refused with the reason (parse()).
enum class Method { sft, dft, dft2, dpo, ipo, simpo, orpo };
inline constexpr const char* method_names[] = {"sft", "dft", "dft2", "dpo", "ipo", "simpo", "orpo"};
inline const char* name(Method m) { return method_names[static_cast<int>(m)]; }
// DFT and DFT2 run DftOptimizer (and its estimator); the others a plain clipped AdamW step.
inline bool uses_estimator(Method m) { return m == Method::dft || m == Method::dft2; }
inline bool pairwise(Method m) { return m == Method::dpo || m == Method::ipo || m == Method::simpo || m == Method::orpo; }
// DFT, DPO and IPO read log π_ref (of the negatives; DPO and IPO of the answers too).
inline bool needs_ref_answers(Method m) { return m == Method::dpo || m == Method::ipo; }

// How a {"messages": [...]} line becomes prompt text and answer text (hf::read_jsonl): a fixed
// format, not the model's Jinja chat template (tokenizer_config.json), which finetune does not run.
enum class Template { none, plain, chatml, llama3 };
inline std::optional<dftune::hf::ChatTemplate> chat_template(Template t) {
  using R = dftune::hf::ChatTemplate::Role;
  switch (t) {
    case Template::none: return std::nullopt;
    case Template::plain: return dftune::hf::ChatTemplate{R{"System: ", "\n\n"}, R{"User: ", "\n\n"}, R{"Assistant: ", "\n\n"}};
    case Template::chatml: return dftune::hf::ChatTemplate::chatml();
    case Template::llama3: {
      auto role = [](const char* r) { return R{std::string("<|start_header_id|>") + r + "<|end_header_id|>\n\n", "<|eot_id|>"}; };
      return dftune::hf::ChatTemplate{role("system"), role("user"), role("assistant")};
    }
  }
  return std::nullopt;
}

struct Options {
  std::string model, data, out;            // --model DIR, --data FILE, --out DIR (all required)
  std::string negatives;                   // the negatives cache; default OUT/negatives.bin
  Method method = Method::dft;
  double lr = 1e-5;
  std::size_t epochs = 1, batch = 8, m = 2, threads = 0;  // threads 0: OpenMP's default
  std::uint64_t seed = 0;
  double tau = 1.0, gamma = 0.85, eps_dft2 = 1e-8;  // DFT2 defaults (τ 0.3, γ 0.9) applied when unset
  bool tau_set = false, gamma_set = false;
  dftune::EstimatorInit estimator = dftune::EstimatorInit::first_visit;
  double max_grad_norm = 1.0;
  dftune::DpoOptions dpo;
  dftune::IpoOptions ipo;
  dftune::SimpoOptions simpo;
  dftune::OrpoOptions orpo;
  Template chat = Template::plain;        // --template: how "messages" lines are written
  // negatives: the base model's samples (the paper's sampler: temperature 0.7, top-k 50, top-p 1)
  dftune::SamplingOptions sampling{.temperature = 0.7, .top_k = 50, .top_p = 1.0, .seed = 0};
  std::size_t max_new = 64;                // longest negative (also bounded by the context)
  std::string eos = "<|endoftext|>";      // token after every answer and where sampling stops; "none"
  double val_fraction = 0.1;
  std::size_t save_every = 0;              // steps between checkpoints (0: only at the end)
  std::size_t stop_after = 0;              // stop (with a checkpoint) after this many steps: 0 never
  bool resume = false;                     // continue from OUT/checkpoint if it exists
  std::size_t max_len = 0;                 // cap on the context (0: the model's)

  dftune::DftOptions dft_options() const {
    const bool two = method == Method::dft2;
    return {.variant = two ? dftune::Variant::dft2 : dftune::Variant::dft,
            .tau = tau_set ? tau : two ? 0.3 : 1.0,
            .gamma = gamma_set ? gamma : two ? 0.9 : 0.85,
            .init = estimator,
            .log_u0 = 0.0,
            .eps = eps_dft2};
  }
};

inline void usage(std::FILE* f) {
  const Options d;
  std::fprintf(f,
               "usage: finetune --model DIR --data train.jsonl --out DIR [options]\n"
               "  --model DIR          config.json + model.safetensors (or its index) + tokenizer.json\n"
               "  --data FILE          JSON Lines: {\"prompt\": ..., \"answer\": ...} or {\"messages\": [...]} per line\n"
               "  --template T         how \"messages\" lines become text: plain, chatml or llama3 [plain]\n"
               "  --out DIR            fine-tuned model, metrics.jsonl, checkpoint/, negatives cache\n"
               "  --method M           dft, dft2, sft, dpo, ipo, simpo or orpo           [dft]\n"
               "  --lr X               peak learning rate (AdamW, cosine, 10%% warm-up)  [%g]\n"
               "  --epochs N           passes over the training split                    [%zu]\n"
               "  --batch N            prompts per step                                  [%zu]\n"
               "  --m N                negatives per prompt                              [%zu]\n"
               "  --tau X --gamma X    DFT temperature and moving-average rate  [1, 0.85; dft2: 0.3, 0.9]\n"
               "  --dft2-eps X         ε of DFT2's |y| + ε                               [%g]\n"
               "  --estimator E        first_visit, constant or fixed                    [first_visit]\n"
               "  --dpo-beta X --ipo-beta X   β of DPO, IPO                            [%g, %g]\n"
               "  --simpo-beta X --simpo-gamma X   SimPO's β and target margin γ       [%g, %g]\n"
               "  --orpo-lambda X      ORPO's weight of the odds-ratio term              [%g]\n"
               "  --max-grad-norm X    clip to this global L2 norm (inf: none)           [%g]\n"
               "  --temperature X --top-k N --top-p X   sampling of the negatives        [%g, %zu, %g]\n"
               "  --max-new N          longest negative in tokens                        [%zu]\n"
               "  --eos TOKEN          end-of-answer token, or none                      [%s]\n"
               "  --negatives FILE     negatives cache                                   [OUT/negatives.bin]\n"
               "  --val-fraction X     share of the data held out for validation         [%g]\n"
               "  --seed N             data split, batches and sampling                  [%llu]\n"
               "  --threads N          OpenMP threads (0: default)                       [0]\n"
               "  --save-every N       checkpoint every N steps (0: at the end only)     [0]\n"
               "  --stop-after N       stop after N steps of this run, with a checkpoint\n"
               "  --resume             continue from OUT/checkpoint if it is there\n"
               "  --config FILE        more flags, one 'name value' per line\n",
               d.lr, d.epochs, d.batch, d.m, d.eps_dft2, d.dpo.beta, d.ipo.beta, d.simpo.beta, d.simpo.gamma, d.orpo.lambda,
               d.max_grad_norm, d.sampling.temperature, d.sampling.top_k,
               d.sampling.top_p, d.max_new, d.eos.c_str(), d.val_fraction, static_cast<unsigned long long>(d.seed));
}

inline Options parse(int argc, char** argv) {
  const demo::Flags flags{argv[0]};
  const std::vector<std::string> args = flags.expand(argc, argv);
  Options o;
  auto whole = [&](const std::string& a, const std::string& v) -> std::size_t {
    if (v == "0") return 0;
    return flags.count(a, v);
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    }
    if (a == "--resume") {
      o.resume = true;
      continue;
    }
    if (i + 1 >= args.size()) flags.bad(a, "missing value");
    const std::string& v = args[++i];
    if (a == "--model") o.model = v;
    else if (a == "--data") o.data = v;
    else if (a == "--out") o.out = v;
    else if (a == "--negatives") o.negatives = v;
    else if (a == "--method") {
      const auto known = std::find(std::begin(method_names), std::end(method_names), v);
      if (known != std::end(method_names)) o.method = static_cast<Method>(known - std::begin(method_names));
      else if (v == "rwr" || v == "rloo" || v == "best_of_n" || v == "bon")
        flags.bad(a, "got '" + v + "': it weighs samples by a reward, and finetune's data has none (no verifier); "
                                   "expected dft, dft2, sft, dpo, ipo, simpo or orpo (examples/compare.cpp runs " + v + " with a checker)");
      else if (v == "dynft")
        flags.bad(a, "got 'dynft': Dynamic FT weighs each answer token, and the decoder scores whole sequences (one "
                     "forward per answer token); expected dft, dft2, sft, dpo, ipo, simpo or orpo");
      else flags.bad(a, "got '" + v + "', expected dft, dft2, sft, dpo, ipo, simpo or orpo");
    } else if (a == "--template") {
      if (v == "plain") o.chat = Template::plain;
      else if (v == "chatml") o.chat = Template::chatml;
      else if (v == "llama3") o.chat = Template::llama3;
      else flags.bad(a, "got '" + v + "', expected plain, chatml or llama3 (fixed formats; the model's Jinja template is not run)");
    } else if (a == "--dpo-beta") o.dpo.beta = flags.real(a, v);
    else if (a == "--ipo-beta") o.ipo.beta = flags.real(a, v);
    else if (a == "--simpo-beta") o.simpo.beta = flags.real(a, v);
    else if (a == "--simpo-gamma") o.simpo.gamma = flags.real(a, v);
    else if (a == "--orpo-lambda") o.orpo.lambda = flags.real(a, v); else if (a == "--lr") {
      o.lr = flags.real(a, v);
      if (!(o.lr > 0)) flags.bad(a, "got '" + v + "', expected a rate > 0");
    } else if (a == "--epochs") o.epochs = flags.count(a, v);
    else if (a == "--batch") o.batch = flags.count(a, v);
    else if (a == "--m") o.m = flags.count(a, v);
    else if (a == "--threads") o.threads = whole(a, v);
    else if (a == "--seed") o.seed = whole(a, v);
    else if (a == "--tau") o.tau = flags.real(a, v), o.tau_set = true;
    else if (a == "--gamma") o.gamma = flags.real(a, v), o.gamma_set = true;
    else if (a == "--dft2-eps") o.eps_dft2 = flags.real(a, v);
    else if (a == "--estimator") {
      if (v == "first_visit") o.estimator = dftune::EstimatorInit::first_visit;
      else if (v == "constant") o.estimator = dftune::EstimatorInit::constant;
      else if (v == "fixed") o.estimator = dftune::EstimatorInit::fixed;
      else flags.bad(a, "got '" + v + "', expected first_visit, constant or fixed");
    } else if (a == "--max-grad-norm") {
      o.max_grad_norm = v == "inf" ? std::numeric_limits<double>::infinity() : flags.real(a, v);
      if (!(o.max_grad_norm > 0)) flags.bad(a, "got '" + v + "', expected a norm > 0 or inf");
    } else if (a == "--temperature") o.sampling.temperature = flags.real(a, v);
    else if (a == "--top-k") o.sampling.top_k = whole(a, v);
    else if (a == "--top-p") o.sampling.top_p = flags.real(a, v);
    else if (a == "--max-new") o.max_new = flags.count(a, v);
    else if (a == "--eos") o.eos = v;
    else if (a == "--val-fraction") {
      o.val_fraction = flags.real(a, v);
      if (!(o.val_fraction >= 0 && o.val_fraction < 1)) flags.bad(a, "got '" + v + "', expected a share in [0, 1)");
    } else if (a == "--save-every") o.save_every = whole(a, v);
    else if (a == "--stop-after") o.stop_after = whole(a, v);
    else if (a == "--max-len") o.max_len = whole(a, v);
    else flags.bad(a, "unknown flag");
  }
  if (o.model.empty()) flags.bad("--model", "missing (a directory with config.json, model.safetensors, tokenizer.json)");
  if (o.data.empty()) flags.bad("--data", "missing (a JSON Lines file of prompt/answer pairs)");
  if (o.out.empty()) flags.bad("--out", "missing (the output directory)");
  if (o.negatives.empty()) o.negatives = o.out + "/negatives.bin";
  try {
    dftune::validate(o.dft_options());
    dftune::validate(o.sampling);
    dftune::validate(o.dpo);
    dftune::validate(o.ipo);
    dftune::validate(o.simpo);
    dftune::validate(o.orpo);
  } catch (const dftune::error& e) {
    flags.bad("objective or sampling options", e.what());
  }
  return o;
}

}  // namespace finetune
