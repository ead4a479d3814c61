# The build's Debian packages: each is looked for the way the build finds it, and when any is
# missing configuration stops with one message naming them all and the command that installs them,
# instead of CMake's error about the first module it could not find. `pip install .` (SKBUILD) needs
# no CLI11 (it builds no CLI) and gets pybind11 from PyPI.
find_package(PkgConfig QUIET)
set(_strata_missing "")
if(NOT PKG_CONFIG_FOUND)
  list(APPEND _strata_missing pkg-config)
else()
  foreach(_pair "openblas:libopenblas-dev" "sentencepiece:libsentencepiece-dev" "libxxhash:libxxhash-dev")
    string(REPLACE ":" ";" _pair ${_pair})
    list(GET _pair 0 _module)
    list(GET _pair 1 _package)
    pkg_check_modules(_strata_probe QUIET ${_module})
    if(NOT _strata_probe_FOUND)
      list(APPEND _strata_missing ${_package})
    endif()
    unset(_strata_probe_FOUND CACHE)
    unset(_strata_probe_FOUND)
  endforeach()
endif()
set(_strata_headers "oneapi/dnnl/dnnl.h:libdnnl-dev" "nlohmann/json.hpp:nlohmann-json3-dev")
if(NOT SKBUILD)
  list(APPEND _strata_headers "CLI/CLI.hpp:libcli11-dev")
endif()
foreach(_pair ${_strata_headers})
  string(REPLACE ":" ";" _pair ${_pair})
  list(GET _pair 0 _header)
  list(GET _pair 1 _package)
  find_path(_strata_header_dir ${_header})
  if(NOT _strata_header_dir)
    list(APPEND _strata_missing ${_package})
  endif()
  unset(_strata_header_dir CACHE)
endforeach()
if(_strata_missing)
  list(JOIN _strata_missing " " _strata_missing)
  # (indented lines are printed as they are; CMake reflows the others)
  message(FATAL_ERROR "strata needs Debian packages that are not installed:\n"
                      "  ${_strata_missing}\n"
                      "Install them with\n"
                      "  sudo apt-get install ${_strata_missing}\n"
                      "or run `bash scripts/setup.sh main`, which installs everything the build needs.")
endif()
