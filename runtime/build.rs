//! With the `cuda` feature, compiles src/kernels/decode.cu and train.cu to fatbins (SASS +
//! PTX, loaded by src/kernel_modules.rs; nvcc from
//! $CUDA_HOME/bin or PATH; target CUDA_COMPUTE_CAP, default 90). Without it, nothing to do.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/kernels/decode.cu");
    println!("cargo:rerun-if-changed=src/kernels/train.cu");
    println!("cargo:rerun-if-changed=src/kernels/common.cuh");
    println!("cargo:rerun-if-changed=src/kernels/attention_tc.cuh");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin").join("nvcc"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    // For the runtime's error when a card cannot load the kernels (src/kernel_modules.rs).
    println!("cargo:rustc-env=PG_CUDA_COMPUTE_CAP={cap}");
    for name in ["decode", "train"] {
        let src = format!("src/kernels/{name}.cu");
        let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        // What the runtime loads (src/kernel_modules.rs): machine code for this compute
        // capability, so a fresh machine has nothing to JIT-compile, plus the PTX for newer GPUs.
        let out = out_dir.join(format!("{name}.fatbin"));
        let status = Command::new(&nvcc)
            .arg("--fatbin")
            .arg(format!("-gencode=arch=compute_{cap},code=sm_{cap}"))
            .arg(format!("-gencode=arch=compute_{cap},code=compute_{cap}"))
            .args(["-O3", "-std=c++17"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {} (the `cuda` feature needs nvcc): {e}",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
