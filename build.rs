//! Links the `buildnet` binary with packed relative relocations (`-z pack-relative-relocs`,
//! `DT_RELR`) where the linker and the C library support them. The binary is position
//! independent and every start — each CLI command, the fork server — has the dynamic loader
//! apply ~32,800 relative relocations read from a ~790 KB table (`_dl_relocate_object` and its
//! page faults were ~18 % of a cached build's CLI process, issue 14); packed, the table is a few
//! KB. It needs binutils ≥ 2.38 (or lld) and glibc ≥ 2.36, so it is tried on an empty program
//! first and left out where that link fails or warns.

use std::path::PathBuf;
use std::process::Command;

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux-gnu") && std::env::var("HOST").ok().as_deref() == Some(target.as_str()) && links(FLAG) {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
}

/// Whether the C compiler driver (rustc's linker on this target) links an empty program with
/// `flag` without a warning: an older `ld` only warns about a `-z` option it does not know.
fn links(flag: &str) -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let source = out.join("relr-probe.c");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    Command::new(cc)
        .arg("-pie")
        .arg("-fPIE")
        .arg(&source)
        .arg("-o")
        .arg(out.join("relr-probe"))
        .arg(flag)
        .arg("-Wl,--fatal-warnings")
        .output()
        .is_ok_and(|o| o.status.success() && o.stderr.is_empty())
}
