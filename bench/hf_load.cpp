// save_pretrained / load_pretrained at GPT-2 124M's shape: seconds and file sizes for F32 and BF16.
//   hf_load DIR      (writes DIR/f32 and DIR/bf16, about 750 MB in all)
#include <dftune/hf/pretrained.hpp>

#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hf_load DIR\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  using clock = std::chrono::steady_clock;
  auto secs = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
  dftune::Decoder<float> m(dftune::decoder::tiny_gpt2(50257, 768, 12, 12, 1024), 1);
  for (auto [name, dtype] : {std::pair{"f32", dftune::hf::Dtype::f32}, std::pair{"bf16", dftune::hf::Dtype::bf16}}) {
    auto t0 = clock::now();
    dftune::hf::save_pretrained(dir / name, m, dtype);
    const double save = secs(t0);
    t0 = clock::now();
    const auto back = dftune::hf::load_pretrained<float>(dir / name);
    const double load = secs(t0);
    std::printf("{\"dtype\": \"%s\", \"file_mb\": %.0f, \"save_s\": %.2f, \"load_s\": %.2f, \"parameters\": %zu}\n", name,
                static_cast<double>(std::filesystem::file_size(dir / name / "model.safetensors")) / 1048576.0, save, load,
                back.parameters().size());
  }
}
