//! BuildNet's integration tests, in one test binary so the workspace links it once: real
//! `buildnet up` processes on 127.0.0.1 port 0, a real browser for the pages. One module per
//! area; the harness (nodes, meshes, HTTP, the tampering proxy) is in `common`.
//!
//! Run one area, or one test, by its module path:
//!
//! ```sh
//! cargo test --test it mesh::
//! cargo test --test it build::the_c_example_builds_runs_its_check_and_caches
//! ```
//!
//! Tests run in parallel threads on a machine that may have two cores. Tests that start several
//! nodes or whose timing is under test hold `common::serial()`: one at a time, beside light tests
//! only. Single-node tests that load the cores (builds, benchmarks, the browser) hold
//! `common::shared()`: beside each other, never beside a serial one.

mod common;

mod api_plan;
mod artifacts;
mod bench;
mod build;
mod builder;
mod cli;
mod cli_names;
mod contain;
mod distributed;
mod engine;
mod events;
mod mesh;
mod node;
mod pages;
mod paths;
mod patterns;
mod projects;
mod readme;
mod tls;
mod trust;
