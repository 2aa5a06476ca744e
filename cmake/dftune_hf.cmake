# dftune::hf — opt-in: reading and writing Hugging Face checkpoints (config.json, safetensors and its
# sharded index) needs a JSON parser, which the core library never does. Defined when
# nlohmann-json (Debian: nlohmann-json3-dev) is found.
find_package(nlohmann_json 3 QUIET)
if(nlohmann_json_FOUND)
  add_library(dftune_hf INTERFACE)
  add_library(dftune::hf ALIAS dftune_hf)
  set_target_properties(dftune_hf PROPERTIES EXPORT_NAME hf)
  target_link_libraries(dftune_hf INTERFACE dftune nlohmann_json::nlohmann_json)
  message(STATUS "dftune: nlohmann_json ${nlohmann_json_VERSION} found, defining dftune::hf")
else()
  message(STATUS "dftune: nlohmann_json not found, no dftune::hf (Debian: nlohmann-json3-dev)")
endif()
