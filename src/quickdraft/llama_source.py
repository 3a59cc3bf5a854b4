"""The llama.cpp source quickdraft builds: llama-cpp-python's sdist with one change to llamafile's kernels.

Stdlib only, so the Makefile runs it before anything is installed:

    CMAKE_ARGS="-DGGML_RPC=on" python3 src/quickdraft/llama_source.py wheel 0.3.36 OUT_DIR

fetches llama-cpp-python's source with pip, applies PATCHES, marks the version with LOCAL_LABEL
(0.3.36 -> 0.3.36+quickdraft.6: `llama-cpp-python==0.3.36` still matches it, and whoever looks at the
installed version sees a patched build) and builds a wheel into OUT_DIR. `llama_build` applies the same
patches to the source it builds llama.cpp's programs (rpc-server, ...) from, so a worker rounds as we do.

Why the patch (README, "Exactness"). Speculation is exact only if verifying K + 1 tokens in one batch gives
the logits one-token decoding gives, bit for bit. llamafile's matrix kernels (tinyBLAS, on in a stock build)
compute every output element the same way whatever tile it falls in, so they agree with themselves at every
batch size; but stock llama.cpp calls them only for batches of 2 tokens or more and decodes one token with
ggml's own dot products. For Q8_0 on x86 those take the same steps as tinyBLAS; for float matrices (F16
weights, the F16 KV cache) they keep 4 partial sums where tinyBLAS keeps one, so they round differently.
The patch sends float matrices through tinyBLAS for one token too, with a matrix-vector loop that does
tinyBLAS's arithmetic. One token, a verification batch and a prompt chunk then round alike, and prompts and
verification batches run at llamafile's speed (about 2x ggml's for prompts on this machine).

What was tried and measured (README, "Exactness"): quickdraft.1-3 summed 4-8 rows at once in that loop,
which on an AVX-512 machine ran one-token F16 steps at two thirds of stock's speed; quickdraft.4 kept float
matrices on ggml's dot product for batches of up to 32 tokens instead (one-token steps at stock's speed, but
a verification batch of 17 tokens at 4-5x a step instead of tinyBLAS's 2.3-2.8x). quickdraft.5 reads one
row at a time: one-token steps at stock's speed and tinyBLAS's batches. quickdraft.6 (speed only) sends
batches of 2-8 tokens through the same one-row loop, each row read once for all of them, for float and (on
AVX2) Q8_0-family matrices alike: tinyBLAS's 4-row tiles had made 2 tokens cost 2-2.5x one on Gemma 3 270M;
on AVX2 one Q8_0 token takes the loop too (a Gemma Q8_0 step 11.2 ms against ggml's dot product's 13.4).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LOCAL_LABEL = "quickdraft.6"  # change it with PATCHES: it names the wheel folder, the tools and the probe cache

# gemv<RN> for the RN a call brings (both patched classes declare GEMV_MAX_N = 8 and a gemv template)
GEMV_DISPATCH = (
    "    void gemv_n(int64_t m, int64_t n) {\n"
    "        switch (n) {\n"
    + "".join(f"            case {rn}: return gemv<{rn}>(m);\n" for rn in range(1, 8))
    + "            default: return gemv<8>(m);\n"
    "        }\n"
    "    }\n"
)

# (file under vendor/llama.cpp, text as shipped, text quickdraft builds): llamafile's tinyBLAS takes float
# matrices (F32, F16, BF16: the F16 KV cache, F16 weights) for single tokens too, through a matrix-vector
# path that keeps tinyBLAS's arithmetic per element (one running sum per output, in k order); other quantized
# matrices keep llama.cpp's single-token path. Three more changes, for speed alone: at one token, the heads
# that share a key/value matrix (grouped-query attention) go to tinyBLAS in one call, as the columns of a
# matrix, so that the F16 KV cache is read once per step rather than once per head; batches of up to 8 tokens
# (verification) read each row once for all of them, in the one-row loop, for float and Q8_0-family matrices;
# and on AVX2 one Q8_0 token takes that loop too (ggml's single-token Q8_0 dot product, which it replaces,
# takes the same steps: bit-identical logits). Every output is still one running sum in k order, computed as
# tinyBLAS's tiles compute it, whatever the call.
SGEMM = "ggml/src/ggml-cpu/llamafile/sgemm.cpp"
GGML_CPU = "ggml/src/ggml-cpu/ggml-cpu.c"
PATCHES = [
    (
        SGEMM,
        "    // only enable sgemm for prompt processing\n"
        "#if !defined(__MMA__)\n"
        "    if (n < 2)\n"
        "        return false;\n"
        "#endif\n",
        "    // quickdraft: float matrices go through tinyBLAS for one token too, so that one token and a batch\n"
        "    // round the same way (ggml's single-token float dot product keeps 4 partial sums, tinyBLAS one);\n"
        "    // on AVX2, Q8_0 too, for speed alone (ggml's single-token Q8_0 dot product takes tinyBLAS's steps)\n"
        "#if !defined(__MMA__)\n"
        "    if (n < 2 && Atype != GGML_TYPE_F32 && Atype != GGML_TYPE_F16 && Atype != GGML_TYPE_BF16\n"
        "#if defined(__AVX2__)\n"
        "        && Atype != GGML_TYPE_Q8_0\n"
        "#endif\n"
        "       )\n"
        "        return false;\n"
        "#endif\n",
    ),
    (
        SGEMM,
        "    bool matmul(int64_t m, int64_t n) {\n"
        "        if (k % KN != 0)\n"
        "            return false;\n"
        "        // compute RM for only need tile with size RM&RM-1\n",
        "    bool matmul(int64_t m, int64_t n) {\n"
        "        if (k % KN != 0)\n"
        "            return false;\n"
        "        if (n <= GEMV_MAX_N) {  // quickdraft: one token or a few (see gemv)\n"
        "            gemv_n(m, n);\n"
        "            return true;\n"
        "        }\n"
        "        // compute RM for only need tile with size RM&RM-1\n",
    ),
    (
        SGEMM,
        "  private:\n"
        "    template <int RM, int RN, int BM>\n"
        "    inline void mnpack(int64_t m, int64_t n, int64_t SIZE_N, int64_t BN) {\n"
        "        if (SIZE_N == RN) {\n"
        "            return gemm<RM, RN, BM>(m, n, BN);\n",
        "  private:\n"
        "    // quickdraft: matrix times one vector, or times RN <= 8 vectors (a verification batch). Each output is\n"
        "    // what gemm_bloc computes (one running sum, madd in k order, hsum). Rows are read one after the other,\n"
        "    // a single stream from memory as in ggml's own single-token dot product, each row once for all RN\n"
        "    // vectors (gemm's 4-row tiles, four streams at once, ran 2-3x slower here on an AVX-512 machine);\n"
        "    // out-of-order execution overlaps one row's sums with the next's. Rows are split evenly between\n"
        "    // threads, without the chunk counter or barriers gemm needs, and the next row is prefetched a cache\n"
        "    // line at a time (past the last row is harmless: prefetches never fault).\n"
        "    static constexpr int64_t GEMV_MAX_N = 8;\n"
        "\n"
        "    template <int RN>\n"
        "    void gemv(int64_t m) {\n"
        "        constexpr int64_t LINE = 64 / sizeof(TA);\n"
        "        const int64_t duty = (m + params->nth - 1) / params->nth;\n"
        "        const int64_t end = std::min(m, duty * (params->ith + 1));\n"
        "        for (int64_t i = duty * params->ith; i < end; ++i) {\n"
        "            D Cv[RN] = {};\n"
        "            for (int64_t l = 0; l < k; l += KN) {\n"
        "                if (l % LINE == 0)\n"
        "                    __builtin_prefetch(A + lda * (i + 1) + l);\n"
        "                const V Av = load<V>(A + lda * i + l);\n"
        "                for (int64_t j = 0; j < RN; ++j)\n"
        "                    Cv[j] = madd(Av, load<V>(B + ldb * j + l), Cv[j]);\n"
        "            }\n"
        "            for (int64_t j = 0; j < RN; ++j)\n"
        "                C[ldc * j + i] = hsum(Cv[j]);\n"
        "        }\n"
        "    }\n"
        "\n"
        + GEMV_DISPATCH +
        "\n"
        "    template <int RM, int RN, int BM>\n"
        "    inline void mnpack(int64_t m, int64_t n, int64_t SIZE_N, int64_t BN) {\n"
        "        if (SIZE_N == RN) {\n"
        "            return gemm<RM, RN, BM>(m, n, BN);\n",
    ),
    (
        GGML_CPU,
        "        const size_t row_size = ggml_row_size(vec_dot_type, ne10);\n"
        "\n"
        "        for (int64_t i13 = 0; i13 < ne13; i13++)\n"
        "            for (int64_t i12 = 0; i12 < ne12; i12++)\n"
        "                if (!llamafile_sgemm(params,\n"
        "                                     ne01, ne11, ne00/ggml_blck_size(src0->type),\n"
        "                                     (const char *)src0->data + i12/r2*nb02 + i13/r3*nb03,\n"
        "                                     nb01/ggml_type_size(src0->type),\n"
        "                                     (const char *)wdata + (i12*ne11 + i13*ne12*ne11)*row_size,\n"
        "                                     row_size/ggml_type_size(vec_dot_type),\n"
        "                                     (char *)dst->data + i12*nb2 + i13*nb3,\n"
        "                                     nb1/ggml_type_size(dst->type),\n",
        "        const size_t row_size = ggml_row_size(vec_dot_type, ne10);\n"
        "        // quickdraft: one token against a matrix that r2 heads share (grouped-query attention): one call\n"
        "        // with the r2 heads' vectors as its columns, so that the shared matrix is read once, not r2 times\n"
        "        const int64_t g = ne11 == 1 ? r2 : 1;\n"
        "\n"
        "        for (int64_t i13 = 0; i13 < ne13; i13++)\n"
        "            for (int64_t i12 = 0; i12 < ne12; i12 += g)\n"
        "                if (!llamafile_sgemm(params,\n"
        "                                     ne01, ne11*g, ne00/ggml_blck_size(src0->type),\n"
        "                                     (const char *)src0->data + i12/r2*nb02 + i13/r3*nb03,\n"
        "                                     nb01/ggml_type_size(src0->type),\n"
        "                                     (const char *)wdata + (i12*ne11 + i13*ne12*ne11)*row_size,\n"
        "                                     row_size/ggml_type_size(vec_dot_type),\n"
        "                                     (char *)dst->data + i12*nb2 + i13*nb3,\n"
        "                                     (g > 1 ? nb2 : nb1)/ggml_type_size(dst->type),\n",
    ),
    (
        SGEMM,
        "    void matmul(int64_t m, int64_t n) {\n"
        "        mnpack(0, m, 0, n);\n"
        "    }\n"
        "\n"
        "  private:\n"
        "    void mnpack(int64_t m0, int64_t m, int64_t n0, int64_t n) {\n",
        "    void matmul(int64_t m, int64_t n) {\n"
        "#if defined(__AVX2__)\n"
        "        if (n <= GEMV_MAX_N) {  // quickdraft: one token or a verification batch (see gemv)\n"
        "            gemv_n(m, n);\n"
        "            return;\n"
        "        }\n"
        "#endif\n"
        "        mnpack(0, m, 0, n);\n"
        "    }\n"
        "\n"
        "  private:\n"
        "#if defined(__AVX2__)\n"
        "    // quickdraft: the matrix times RN <= 8 vectors (one token: Q8_0 only, see llamafile_sgemm), each\n"
        "    // output as gemm computes it (one running sum over the blocks in order: madd of the two scales'\n"
        "    // product by the blocks' integer dot product, then hsum), reading the rows one after the other (one\n"
        "    // stream from memory, the next row prefetched) and each row once for all RN vectors: gemm's 4-row\n"
        "    // tiles ran a 2-token batch at 2x a token's time, and ggml's dot product a token at 1.2x this loop's.\n"
        "    static constexpr int64_t GEMV_MAX_N = 8;\n"
        "\n"
        "    template <int RN>\n"
        "    void gemv(int64_t m) {\n"
        "        const int64_t duty = (m + nth - 1) / nth;\n"
        "        const int64_t end = std::min(m, duty * (ith + 1));\n"
        "        for (int64_t i = duty * ith; i < end; ++i) {\n"
        "            __m256 Cv[RN] = {};\n"
        "            for (int64_t l = 0; l < k; ++l) {\n"
        "                __builtin_prefetch(A + lda * (i + 1) + l);\n"
        "                const __m256i a = load(A + lda * i + l);\n"
        "                const __m256i aa = _mm256_sign_epi8(a, a);\n"
        "                const float da = unhalf(A[lda * i + l].d);\n"
        "                for (int64_t j = 0; j < RN; ++j)\n"
        "                    Cv[j] = madd(_mm256_set1_ps(da * unhalf(B[ldb * j + l].d)),\n"
        "                                 updot(aa, _mm256_sign_epi8(load(B + ldb * j + l), a)),\n"
        "                                 Cv[j]);\n"
        "            }\n"
        "            for (int64_t j = 0; j < RN; ++j)\n"
        "                C[ldc * j + i] = hsum(Cv[j]);\n"
        "        }\n"
        "    }\n"
        "\n"
        + GEMV_DISPATCH +
        "#endif\n"
        "\n"
        "    void mnpack(int64_t m0, int64_t m, int64_t n0, int64_t n) {\n",
    ),
]


class SourceError(RuntimeError):
    """The source could not be fetched, patched or built."""


def base_version(version: str) -> str:
    """0.3.36+quickdraft.5 -> 0.3.36"""
    return version.split("+", 1)[0]


def is_patched(version: str) -> bool:
    return version.endswith("+" + LOCAL_LABEL)


def fetch_sdist(version: str, dest: Path) -> Path:
    """Download llama-cpp-python's source archive (from pip's cache when it is there) and unpack it in dest;
    returns the unpacked folder (the one with pyproject.toml)."""
    version = base_version(version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SourceError(f"could not download the llama-cpp-python {version} source with pip:\n{proc.stderr}")
    archive = next(dest.glob("llama_cpp_python-*.tar.gz"), None)
    if archive is None:
        raise SourceError("pip downloaded no llama-cpp-python source archive")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    root = dest / archive.name[: -len(".tar.gz")]
    if not (root / "pyproject.toml").is_file():
        raise SourceError(f"{archive.name} does not unpack to {root.name}/")
    return root


def patch_llama_cpp(llama_cpp_dir: Path) -> None:
    """Apply PATCHES to a llama.cpp source tree (llama-cpp-python's vendor/llama.cpp): all of them or, if any
    text is not there exactly once, none."""
    texts: dict[str, str] = {}
    for rel, old, new in PATCHES:
        text = texts.get(rel) or (llama_cpp_dir / rel).read_text()
        if text.count(old) != 1:
            raise SourceError(f"{rel}: the text to patch is not there once (another llama.cpp version?)")
        texts[rel] = text.replace(old, new)
    for rel, text in texts.items():
        (llama_cpp_dir / rel).write_text(text)


def label_version(sdist_root: Path) -> str:
    """Mark the package version with LOCAL_LABEL; returns the new version."""
    init = sdist_root / "llama_cpp" / "__init__.py"
    lines = init.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("__version__ = "):
            version = line.split("=", 1)[1].strip().strip("\"'")
            labelled = f"{base_version(version)}+{LOCAL_LABEL}"
            lines[i] = f'__version__ = "{labelled}"\n'
            init.write_text("".join(lines))
            return labelled
    raise SourceError(f"{init} has no __version__ line")


def build_wheel(version: str, out_dir: Path) -> None:
    """The patched wheel, built with pip (CMAKE_ARGS from the environment choose the backend)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_sdist(version, Path(tmp))
        patch_llama_cpp(root / "vendor" / "llama.cpp")
        labelled = label_version(root)
        print(f">> llama-cpp-python {labelled}: {len(PATCHES)} patch(es) applied; building "
              f"with CMAKE_ARGS={os.environ.get('CMAKE_ARGS', '')!r}", flush=True)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", str(root), "-w", str(out_dir)]
        if subprocess.run(cmd).returncode != 0:
            raise SourceError("the llama-cpp-python build failed (its output is above)")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "wheel":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        build_wheel(argv[1], Path(argv[2]))
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
