//! Fuzzing on stable Rust: a seeded byte mutator over seed corpora of valid encodings, run
//! against BuildNet's decoders of untrusted input with panic, hang and memory guards. See
//! `src/main.rs` for the command line and README "Fuzzing" for the figures.

pub mod guard;
pub mod mutate;
pub mod run;
pub mod targets;

pub use run::{Options, Report};

/// Where failing inputs go by default: `fuzz/crashes/` of this crate.
pub fn default_crash_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes")
}
