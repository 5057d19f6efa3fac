//! A short deterministic run of every fuzz target (what CI runs; the ≥ 1 M runs are in the README),
//! and regression tests for what fuzzing found.

use std::time::Duration;

use buildnet_actors::builds::project::{Manifest, Package};
use buildnet_actors::wire;
use buildnet_fuzz::guard::{self, GuardedAlloc};
use buildnet_fuzz::targets::{self, envelope, manifest};
use buildnet_fuzz::{run, Options};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// A short run of `target`: every mutation and bomb kind comes up many times, and the five runs
/// together take well under a minute in a debug build (where decoding is 20–50 times slower
/// than in the release build the README's million-input runs use).
fn short(target: &str, inputs: u64) {
    let opts = Options { inputs, seed: 2026, timeout: Duration::from_secs(20), crash_dir: None, progress: false };
    let report = run::run(targets::by_name(target).expect("target sets up"), &opts);
    eprintln!("{}", report.line());
    assert!(report.memory_guard, "the counting allocator is installed");
    assert_eq!(report.inputs, inputs);
    let failures: Vec<String> =
        report.failures.iter().map(|f| format!("#{} {}: {}", f.index, f.kind.as_str(), f.detail)).collect();
    assert!(failures.is_empty(), "{target}: {failures:#?}");
    assert!(report.outcomes.len() > 10, "{target}: the inputs reach many outcomes: {:?}", report.outcomes);
}

#[test]
fn fuzz_envelope_briefly() {
    short("envelope", 20_000);
}

#[test]
fn fuzz_noise_briefly() {
    short("noise", 10_000);
}

#[test]
fn fuzz_join_briefly() {
    short("join", 6_000);
}

#[test]
fn fuzz_manifest_briefly() {
    short("manifest", 5_000);
}

#[test]
fn fuzz_config_briefly() {
    short("config", 10_000);
}

#[test]
fn every_seed_still_matches_the_wire_types() {
    assert_eq!(envelope::sample_messages().len(), envelope::sample_count(), "a sample no longer decodes");
    for name in targets::NAMES {
        let mut target = targets::by_name(name).expect("target sets up");
        for (i, seed) in target.seeds().iter().enumerate() {
            let outcome = target.run(seed).unwrap_or_else(|e| panic!("{name} seed {i}: {e}"));
            let refused = ["refused", "parse", "check", "reply:", "request:fields", "request:bad"];
            let expected_refusal = matches!(name, "noise" | "join") && !outcome.contains("accepted");
            assert!(
                expected_refusal || !refused.iter().any(|r| outcome.starts_with(r)),
                "{name} seed {i} is refused: {outcome}"
            );
        }
    }
}

/// Runs `f` on a thread with `stack` bytes of stack, as a node's worker threads have.
fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(stack).spawn(f).expect("thread").join().expect("no panic")
}

/// MessagePack headers claiming 4 G elements (or bytes) where the envelope expects a list, a
/// map, a string or bytes: refused, and never allocated for.
#[test]
fn a_msgpack_header_claiming_4g_elements_is_refused_without_a_huge_allocation() {
    fn s(x: &str) -> Vec<u8> {
        let mut v = vec![0xa0 | x.len() as u8];
        v.extend_from_slice(x.as_bytes());
        v
    }
    let head = |body: &[u8]| {
        let mut v = vec![0x85];
        for part in [s("v"), vec![2], s("id"), vec![1], s("from"), s(envelope::FROM), s("to"), vec![0xc0], s("body")] {
            v.extend(part);
        }
        v.extend_from_slice(body);
        v
    };
    let array32 = [0xdd, 0xff, 0xff, 0xff, 0xff];
    let map32 = [0xdf, 0xff, 0xff, 0xff, 0xff];
    let bin32 = [0xc6, 0xff, 0xff, 0xff, 0xff];
    let str32 = [0xdb, 0xff, 0xff, 0xff, 0xff];
    let wrap = |variant: &str, field: &str, bomb: &[u8]| {
        let mut b = vec![0x81];
        b.extend(s(variant));
        b.push(0x81);
        b.extend(s(field));
        b.extend_from_slice(bomb);
        b.extend_from_slice(&[0x00; 16]);
        head(&b)
    };
    let cases = vec![
        ("BlobWant.digests = array32", wrap("BlobWant", "digests", &array32)),
        ("LedgerEntries.entries = array32", wrap("LedgerEntries", "entries", &array32)),
        ("Roster.entries = array32", wrap("Roster", "entries", &array32)),
        ("LedgerHeads.heads = array32", wrap("LedgerHeads", "heads", &array32)),
        ("NetData.data = bin32", wrap("NetData", "data", &bin32)),
        ("BlobAck.digest = str32", wrap("BlobAck", "digest", &str32)),
        ("TaskCancel.build_id = map32", wrap("TaskCancel", "build_id", &map32)),
        ("body = array32", head(&array32)),
        ("envelope = map32", map32.to_vec()),
        ("envelope = array32", array32.to_vec()),
    ];
    assert!(guard::installed());
    for (what, bytes) in cases {
        guard::arm();
        let decoded = wire::decode(&bytes);
        let usage = guard::disarm();
        assert!(decoded.is_err(), "{what}: refused");
        assert!(usage.largest <= 1 << 20, "{what}: allocated {} bytes at once", usage.largest);
        assert!(usage.peak_growth <= 2 << 20, "{what}: grew by {} bytes", usage.peak_growth);
    }
}

/// A ledger-entries frame whose entry's JSON data is `depth` arrays deep.
fn ledger_data_nested(depth: usize) -> Vec<u8> {
    let entries = envelope::sample_messages().into_iter().find(|m| envelope::variant(m) == "LedgerEntries");
    let bytes = envelope::encode(1, entries.expect("a ledger sample")).expect("encodes");
    let data = bytes.windows(5).position(|w| w == b"\xa4data").expect("a data field") + 5;
    let hash = bytes.windows(5).position(|w| w == b"\xa4hash").expect("a hash field");
    let mut out = bytes[..data].to_vec();
    out.extend(std::iter::repeat_n(0x91u8, depth));
    out.push(0xc0);
    out.extend_from_slice(&bytes[hash..]);
    out
}

/// Found by fuzzing a debug build: rmp-serde's default depth limit (1024) let a frame nest deep
/// enough to overflow a 2 MiB thread stack (about 600 levels of a ledger entry's JSON data).
/// `wire::decode` now stops at `wire::MAX_DEPTH`; legitimate data (≤ 128 levels, the JSON API's
/// own limit) still passes.
#[test]
fn deeply_nested_msgpack_is_refused_without_overflowing_the_stack() {
    on_stack(run::WORKER_STACK, || {
        assert!(wire::decode(&ledger_data_nested(140)).is_ok(), "JSON data as deep as the API accepts");
        for depth in [wire::MAX_DEPTH, 600, 1_000, 20_000, 200_000] {
            assert!(wire::decode(&ledger_data_nested(depth)).is_err(), "{depth} levels of data are refused");
            // An unknown envelope field, which the decoder skips.
            let mut skipped = vec![0x86];
            for part in [&b"\xa1v"[..], &[2], b"\xa2id", &[1], b"\xa4from", &[0xb0], envelope::FROM.as_bytes()] {
                skipped.extend_from_slice(part);
            }
            skipped.extend_from_slice(b"\xa2to\xc0\xa4body\xa5Rekey\xa1x");
            skipped.extend(std::iter::repeat_n(0x91u8, depth));
            skipped.push(0xc0);
            assert!(wire::decode(&skipped).is_err(), "{depth} levels of an unknown field are refused");
        }
    });
}

/// Found by the manifest target: checking a project walked dependencies recursively, and a
/// 20 000-package chain (a 1 MiB `buildnet.toml`, or a project sent to the API) overflowed the
/// stack and aborted the node. The walk now keeps its own stack.
#[test]
fn a_long_dependency_chain_does_not_overflow_the_stack() {
    let order = on_stack(256 << 10, || {
        let n = 100_000;
        let mut m = Manifest { packages: Default::default() };
        for i in 0..n {
            let deps = if i + 1 < n { vec![format!("p{}", i + 1)] } else { vec![] };
            let p = Package {
                for_each: None,
                command: None,
                shell: Some("true".into()),
                deps,
                inputs: vec![],
                outputs: vec![],
                tools: vec![],
                runtimes: vec![],
                env: Default::default(),
                cores: None,
                memory_gb: None,
            };
            m.packages.insert(format!("p{i}"), p);
        }
        m.check_structure("buildnet.toml").map(|order| (order.len(), order[0].clone(), order[n - 1].clone()))
    });
    assert_eq!(order, Ok((100_000, "p99999".to_string(), "p0".to_string())));
    // A cycle is still named in order.
    let cyclic = Manifest::parse(
        "buildnet.toml",
        "[packages.a]\nshell='x'\ndeps=['b']\n[packages.b]\nshell='x'\ndeps=['c']\n[packages.c]\nshell='x'\ndeps=['a']\n",
    )
    .expect("parses");
    let e = cyclic.check_structure("buildnet.toml").expect_err("a cycle");
    assert_eq!(e.field, "packages.a.deps");
    assert_eq!(e.message, "dependency cycle: a → b → c → a");
}

/// The generated chain goes through the real TOML parser and checker within the fuzz limits.
#[test]
fn a_toml_chain_from_the_generator_is_accepted() {
    let text = manifest::chain(2_000);
    let m = on_stack(run::WORKER_STACK, move || Manifest::parse("buildnet.toml", &text).map(|m| m.packages.len()));
    assert_eq!(m.ok(), Some(2_000));
}
