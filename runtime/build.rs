//! With the `cuda` feature, compiles src/kernels/decode.cu and train.cu to PTX for
//! src/cuda_ops.rs and src/train_kernels.rs (nvcc from
//! $CUDA_HOME/bin or PATH; target CUDA_COMPUTE_CAP, default 90). Without it, nothing to do.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/kernels/decode.cu");
    println!("cargo:rerun-if-changed=src/kernels/train.cu");
    println!("cargo:rerun-if-changed=src/kernels/common.cuh");
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
    for name in ["decode", "train"] {
        let out =
            PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(format!("{name}.ptx"));
        let src = format!("src/kernels/{name}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=sm_{cap}"))
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
