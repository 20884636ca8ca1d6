# Sourced by scripts/gpu-check: where CUDA's libraries are, for the build and for the run.
#
# cuda_setup NVCC SHIM PYTHON...  sets CUDA_ARGS (CMake arguments) and LIBPATH (folders for LD_LIBRARY_PATH, which
# the linker also reads for the libraries' own dependencies). The toolkit is where nvcc says it is (nvcc may be a
# wrapper script). Two libraries a toolkit assembled from pip's wheels lacks (as in PyTorch's environments):
# - cuBLAS: then from pip's nvidia-cublas in the site-packages of each PYTHON, where it has only its versioned
#   name (libcublas.so.13) and its headers sit apart;
# - libcuda.so, the driver's, for ggml's VMM pool (toolkits carry a stub): then the driver's own libcuda.so.1;
#   failing that, ggml is built without VMM (GGML_CUDA_NO_VMM), and the run says so.
# A shim folder of links gives CMake the names it looks for.
cuda_setup() {
  local nvcc="$1" shim="$2" top lib found="" driver="" python site shimmed=0
  shift 2
  top="$("$nvcc" -v -E -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)"
  top="$(realpath "${top:-$(dirname "$(realpath "$nvcc")")/..}")"
  CUDA_ARGS="-DCUDAToolkit_ROOT=$top"
  LIBPATH=()
  for lib in "$top/lib64" "$top/lib" "$top"/targets/*/lib; do
    [ -d "$lib" ] || continue
    LIBPATH+=("$lib")
    [ -n "$found" ] || ! compgen -G "$lib/libcublas.so*" >/dev/null || found="$lib"
    [ -n "$driver" ] || ! compgen -G "$lib/stubs/libcuda.so" >/dev/null || driver="$lib/stubs/libcuda.so"
  done
  rm -rf "$shim" && mkdir -p "$shim/lib" "$shim/include"
  if [ -z "$found" ]; then
    for python in "$@"; do
      for site in $("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
        for lib in "$site"/nvidia/*/lib; do
          [ -n "$found" ] || ! compgen -G "$lib/libcublas.so.*" >/dev/null || found="$lib"
        done
      done
    done
    if [ -z "$found" ]; then
      echo "gpu-check: cuBLAS not found in the CUDA toolkit ($top) nor in pip's nvidia-cublas: install either" >&2
      exit 2
    fi
    for name in cublas cublasLt; do
      ln -s "$(ls "$found"/lib"$name".so.* | sort -V | tail -1)" "$shim/lib/lib$name.so"
    done
    ln -s "$(dirname "$found")"/include/* "$shim/include/"
    LIBPATH+=("$found")
    shimmed=1
    echo "gpu-check: cuBLAS from pip's wheel: $found" >&2
  fi
  if [ -z "$driver" ]; then
    for lib in $(ldconfig -p 2>/dev/null | sed -n 's/^\s*libcuda\.so\.1 .*=> //p') /usr/local/nvidia/lib64/libcuda.so.1 \
               /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1 /usr/lib/wsl/lib/libcuda.so.1; do
      [ -n "$driver" ] || [ ! -e "$lib" ] || driver="$lib"
    done
    if [ -n "$driver" ]; then
      ln -s "$driver" "$shim/lib/libcuda.so"
      shimmed=1
    else
      echo "gpu-check: no libcuda.so (the driver's) to link: ggml is built without its VMM pool (GGML_CUDA_NO_VMM)" >&2
      CUDA_ARGS+=" -DGGML_CUDA_NO_VMM=ON"
    fi
  fi
  [ "$shimmed" = 0 ] ||
    CUDA_ARGS+=" -DCMAKE_LIBRARY_PATH=$shim/lib -DCMAKE_CUDA_FLAGS=-I$shim/include -DCMAKE_CXX_FLAGS=-I$shim/include"
}
