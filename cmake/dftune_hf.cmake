# dftune::hf: the Hugging Face formats (include/dftune/hf/: tokenizer.json, safetensors, config.json).
# Opt-in, as the core library needs no JSON library: nlohmann_json (Debian: nlohmann-json3-dev) and,
# for the tokenizer's split regexes, PCRE2 (libpcre2-dev, found through pkg-config as libpcre2-8);
# ICU (libicu-dev, icu-uc) where found, for the NFC normalizer.
find_package(nlohmann_json 3.9 QUIET)
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(DFTUNE_PCRE2 QUIET IMPORTED_TARGET libpcre2-8)
endif()
if(nlohmann_json_FOUND AND DFTUNE_PCRE2_FOUND AND NOT TARGET dftune_hf)
  add_library(dftune_hf INTERFACE)
  add_library(dftune::hf ALIAS dftune_hf)
  set_target_properties(dftune_hf PROPERTIES EXPORT_NAME hf)
  # Installed consumers link PCRE2 and ICU by name (the pkg-config targets are this build's only).
  target_link_libraries(dftune_hf INTERFACE dftune nlohmann_json::nlohmann_json
    $<BUILD_INTERFACE:PkgConfig::DFTUNE_PCRE2> $<INSTALL_INTERFACE:pcre2-8>)
  # ICU's NFC tables for the tokenizers that normalize (Qwen2); without ICU they are refused at load.
  pkg_check_modules(DFTUNE_ICU QUIET IMPORTED_TARGET icu-uc)
  if(DFTUNE_ICU_FOUND)
    target_link_libraries(dftune_hf INTERFACE $<BUILD_INTERFACE:PkgConfig::DFTUNE_ICU> $<INSTALL_INTERFACE:icuuc>)
    target_compile_definitions(dftune_hf INTERFACE DFTUNE_HF_ICU)
  endif()
  message(STATUS "dftune: nlohmann_json ${nlohmann_json_VERSION}, PCRE2 ${DFTUNE_PCRE2_VERSION} and ICU '${DFTUNE_ICU_VERSION}' found, defining dftune::hf")
elseif(NOT TARGET dftune_hf)
  message(STATUS "dftune: no dftune::hf (needs nlohmann_json and libpcre2-8; Debian: nlohmann-json3-dev libpcre2-dev pkg-config)")
endif()
