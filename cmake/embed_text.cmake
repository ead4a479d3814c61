# cmake -DIN=FILE -DOUT=HEADER -DNAME=IDENT -P embed_text.cmake
# Writes HEADER declaring `inline constexpr std::string_view NAME` holding FILE's bytes as a raw string
# literal. The header is rewritten only when its content changes, so unchanged text rebuilds nothing.
file(READ "${IN}" content)
set(delim "strata_embed")
string(FIND "${content}" ")${delim}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )${delim}\"")
endif()
file(WRITE "${OUT}.tmp" "// Generated from ${IN} by cmake/embed_text.cmake; do not edit.\n#pragma once\n#include <string_view>\n\ninline constexpr std::string_view ${NAME} = R\"${delim}(${content})${delim}\";\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
