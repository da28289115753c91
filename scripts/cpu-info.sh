#!/usr/bin/env bash
# Which CPU the tests run on, so that a failure can be tied to one: model and the SIMD flags that
# decide which kernels ONNX Runtime and FAISS pick (int8 dot products: VNNI / AMX / ARM dotprod).
set -u
model=$(grep -m1 -E '^(model name|Model|Hardware|CPU part)' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //')
flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | tr ' ' '\n' \
  | grep -E '^(avx2|fma|avx512[a-z_0-9]*|avx_vnni|amx[a-z_0-9]*|asimd|asimddp|i8mm|sve|sve2)$' | sort -u | tr '\n' ' ')
vnni=no
case " $flags " in *" avx512_vnni "*|*" avx_vnni "*|*" amx_int8 "*|*" asimddp "*) vnni=yes ;; esac
echo "CPU: ${model:-unknown} ($(uname -m), $(nproc) cores)"
echo "SIMD: ${flags:-none of the listed}"
echo "int8 dot-product instructions (VNNI/AMX/dotprod): $vnni"
