use cudaforge::{KernelBuilder, Result};
use std::env;
use std::path::PathBuf;

const CUTILE_FEATURE: &str = "CARGO_FEATURE_CUTILE";

fn main() -> Result<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-changed=src/compatibility.cuh");
    println!("cargo::rerun-if-changed=src/cuda_utils.cuh");
    println!("cargo::rerun-if-changed=src/binary_op_macros.cuh");

    // Build for PTX
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ptx_path = out_dir.join("ptx.rs");
    let bindings = KernelBuilder::new()
        .source_dir("src") // Scan src/ for .cu files
        .exclude(&["moe_*.cu", "mmvq_gguf.cu", "mmq_*.cu"]) // Exclude statically compiled kernels from ptx build
        .arg("--expt-relaxed-constexpr")
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()?;

    bindings.write(&ptx_path)?;
    write_images(&out_dir);

    let mut moe_sources = vec![
        "src/moe/moe_gguf.cu",
        "src/moe/moe_wmma.cu",
        "src/moe/moe_wmma_gguf.cu",
        "src/mmvq_gguf.cu",
        "src/mmq_gguf/mmq_quantize.cu",
        "src/mmq_gguf/mmq_instance_q4_0.cu",
        "src/mmq_gguf/mmq_instance_q4_1.cu",
        "src/mmq_gguf/mmq_instance_q5_0.cu",
        "src/mmq_gguf/mmq_instance_q5_1.cu",
        "src/mmq_gguf/mmq_instance_q8_0.cu",
        "src/mmq_gguf/mmq_instance_q2_k.cu",
        "src/mmq_gguf/mmq_instance_q3_k.cu",
        "src/mmq_gguf/mmq_instance_q4_k.cu",
        "src/mmq_gguf/mmq_instance_q5_k.cu",
        "src/mmq_gguf/mmq_instance_q6_k.cu",
    ];
    if env::var_os(CUTILE_FEATURE).is_some() {
        moe_sources.push("src/moe/moe_align.cu");
    }

    let mut moe_builder = KernelBuilder::default()
        .source_files(moe_sources)
        .arg("--expt-relaxed-constexpr")
        .arg("-std=c++17")
        .arg("-O3");

    // Disable bf16 WMMA kernels on GPUs older than sm_80 (Ampere).
    // bf16 WMMA fragments require compute capability >= 8.0.
    let compute_cap = cudaforge::detect_compute_cap()
        .map(|arch| arch.base())
        .unwrap_or(80);
    if compute_cap < 80 {
        moe_builder = moe_builder.arg("-DNO_BF16_KERNEL");
    }

    let mut is_target_msvc = false;
    if let Ok(target) = std::env::var("TARGET") {
        if target.contains("msvc") {
            is_target_msvc = true;
            moe_builder = moe_builder.arg("-D_USE_MATH_DEFINES");
        }
    }

    if !is_target_msvc {
        moe_builder = moe_builder.arg("-Xcompiler").arg("-fPIC");
    }

    moe_builder.build_lib(out_dir.join("libmoe.a"))?;
    println!("cargo:rustc-link-search={}", out_dir.display());
    println!("cargo:rustc-link-lib=moe");
    println!("cargo:rustc-link-lib=dylib=cudart");
    if !is_target_msvc {
        println!("cargo:rustc-link-lib=stdc++");
    }
    Ok(())
}

/// persona-geometry's addition (vendor/README.md): the modules extraction and training launch,
/// also built as fatbins (SASS for CUDA_COMPUTE_CAP + its PTX), so that the CUDA driver loads
/// them without JIT-compiling the PTX on a machine whose cache has never seen it. Without
/// CUDA_COMPUTE_CAP every image is `None` and candle loads the PTX as upstream does.
fn write_images(out_dir: &std::path::Path) {
    const WITH_IMAGE: [&str; 8] = [
        "affine", "binary", "cast", "fill", "indexing", "reduce", "ternary", "unary",
    ];
    const ALL: [&str; 11] = [
        "affine", "binary", "cast", "conv", "fill", "indexing", "quantized", "reduce", "sort",
        "ternary", "unary",
    ];
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = env::var("CUDA_COMPUTE_CAP").ok();
    let nvcc = env::var("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin").join("nvcc"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let mut rs = String::new();
    for name in ALL {
        let konst = name.to_uppercase();
        let built = match &cap {
            Some(cap) if WITH_IMAGE.contains(&name) => {
                let out = out_dir.join(format!("{name}.fatbin"));
                let status = std::process::Command::new(&nvcc)
                    .arg("--fatbin")
                    .arg(format!("-gencode=arch=compute_{cap},code=sm_{cap}"))
                    .arg(format!("-gencode=arch=compute_{cap},code=compute_{cap}"))
                    .args(["--expt-relaxed-constexpr", "-std=c++17", "-O3"])
                    .arg(format!("src/{name}.cu"))
                    .arg("-o")
                    .arg(&out)
                    .status()
                    .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
                assert!(status.success(), "nvcc --fatbin failed on src/{name}.cu");
                true
            }
            _ => false,
        };
        if built {
            rs.push_str(&format!(
                "pub const {konst}: Option<&[u8]> = Some(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.fatbin\")));\n"
            ));
        } else {
            rs.push_str(&format!("pub const {konst}: Option<&[u8]> = None;\n"));
        }
    }
    std::fs::write(out_dir.join("images.rs"), rs).expect("writing images.rs");
}
