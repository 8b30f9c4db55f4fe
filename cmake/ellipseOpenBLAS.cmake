# Debian's OpenMP build of OpenBLAS as the imported target ellipse::openblas. Shared by CMakeLists.txt and the
# installed package config, so that a program linking the static libellipse finds the same library.
# The OpenMP build (libopenblas-openmp-dev): its GEMM threads are our OpenMP threads. With the pthread
# build, two thread pools fight over the cores and libgomp's spinning workers take most of the time
# (measured: 60% of a training step on 2 cores).
if(NOT TARGET ellipse::openblas)
  find_library(ELLIPSE_OPENBLAS_LIBRARY openblas PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp NO_DEFAULT_PATH)
  find_path(ELLIPSE_CBLAS_INCLUDE_DIR cblas.h PATHS /usr/include/x86_64-linux-gnu/openblas-openmp NO_DEFAULT_PATH)
  if(NOT ELLIPSE_OPENBLAS_LIBRARY OR NOT ELLIPSE_CBLAS_INCLUDE_DIR)
    message(FATAL_ERROR "OpenBLAS for OpenMP not found: install Debian's libopenblas-openmp-dev (tools/bootstrap.sh does)")
  endif()
  add_library(ellipse::openblas UNKNOWN IMPORTED)
  set_target_properties(ellipse::openblas PROPERTIES IMPORTED_LOCATION "${ELLIPSE_OPENBLAS_LIBRARY}"
                                                     INTERFACE_INCLUDE_DIRECTORIES "${ELLIPSE_CBLAS_INCLUDE_DIR}")
endif()
