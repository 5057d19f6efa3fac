//! `buildnet.toml` (`Manifest::parse`, then the structural checks every build runs:
//! `check_structure` — names, commands, dependencies, cycles, paths, globs — and the version
//! requirements). Oracle: an accepted manifest orders every package exactly once.

use buildnet_actors::builds::project::Manifest;

use crate::mutate::{Hints, Rng};
use crate::run::Target;

pub struct ManifestToml;

const C_HELLO: &str = r#"# A small C program
[packages.add]
command = ["gcc", "-O2", "-c", "src/add.c", "-o", "obj/add.o"]
inputs = ["src/add.c", "src/*.h"]
outputs = ["obj/add.o"]
tools = ["gcc"]

[packages.main]
command = ["gcc", "-O2", "-c", "src/main.c", "-o", "obj/main.o"]
inputs = ["src/main.c", "src/*.h"]
outputs = ["obj/main.o"]
tools = [{ name = "gcc", version = ">=4" }]
cores = 2
memory_gb = 1.5

[packages.app]
shell = "gcc obj/add.o obj/main.o -o app && ./app --check"
deps = ["add", "main"]
outputs = ["app"]
tools = ["gcc"]
runtimes = [{ name = "node", version = "<21.1" }]
env = { CC = "gcc", LANG = "C.UTF-8" }
"#;

const TONE: &str = r#"[packages.tone]
command = ["ffmpeg", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-y", "out/tone.wav"]
outputs = ["out/tone.wav"]
tools = ["ffmpeg"]

[packages.checksum]
shell = "sha256sum out/tone.wav > out/tone.sha256"
deps = ["tone"]
outputs = ["out/tone.sha256"]
"#;

const DOTTED: &str =
    "packages.a.shell = 'true'\npackages.b = { command = ['x'], deps = ['a'], inputs = ['**/*.rs'] }\n\
[[packages.c.tools]]\nname = \"cc\"\nversion = \"=12.2.0\"\n[packages.c]\nshell = \"\"\"\nmulti\nline\"\"\"\n";

/// A dependency chain `p0 → p1 → … → p(n-1)` (each needs the next), as long as a manifest or a
/// project sent to the API can make it. `p0` sorts first, so checking visits the whole chain deep.
pub fn chain(n: usize) -> String {
    let mut text = String::with_capacity(n * 48);
    for i in 0..n {
        text.push_str(&format!("[packages.p{i}]\nshell = \"true\"\n"));
        if i + 1 < n {
            text.push_str(&format!("deps = [\"p{}\"]\n", i + 1));
        }
    }
    text
}

impl Target for ManifestToml {
    fn name(&self) -> &'static str {
        "manifest"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [C_HELLO, TONE, DOTTED, "[packages.x]\ncommand = [\"true\"]\n"].iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn hints(&self) -> Hints {
        let dictionary = [
            "[packages.",
            "[[packages.",
            "command = ",
            "shell = ",
            "deps = ",
            "inputs = ",
            "outputs = ",
            "tools = ",
            "runtimes = ",
            "env = ",
            "cores = ",
            "memory_gb = ",
            "name = ",
            "version = ",
            "\"../x\"",
            "\"/etc\"",
            "\"a/**/[\"",
            "\">=\"",
            "\"v99999999999999999999999\"",
            "nan",
            "inf",
            "-0",
            "0x7fffffff",
            "1979-05-27T07:32:00Z",
            "'''",
            "\"\"\"",
            "\\u0000",
            "\\UFFFFFFFF",
            "=",
            ".",
            "\n",
            "[",
            "]",
            "{",
            "}",
            "#",
            "\"\"",
            "true",
        ];
        Hints {
            dictionary: dictionary.iter().map(|s| s.as_bytes().to_vec()).collect(),
            nesting: vec![b"[".to_vec(), b"{a=".to_vec(), b"a.".to_vec(), b"[[".to_vec()],
            binary: false,
        }
    }

    fn generate(&self, rng: &mut Rng) -> Option<Vec<u8>> {
        // Long chains are slow to parse: asked one input in 64, this makes a chain for one in
        // 256, and one chain in 16 is 20 000 packages long (a 1 MiB manifest).
        if !rng.chance(4) {
            return None;
        }
        let n = if rng.chance(16) { 20_000 } else { [10usize, 100, 1_000][rng.below(3)] };
        Some(chain(n).into_bytes())
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let text = super::text(input);
        let manifest = match Manifest::parse("buildnet.toml", &text) {
            Ok(m) => m,
            Err(e) => return Ok(super::label("parse", &e.message)),
        };
        for p in manifest.packages.values() {
            for r in p.tools.iter().chain(&p.runtimes) {
                let _ = r.accepts(Some("12.2.0"));
                let found: String = text.chars().take(40).collect();
                let _ = r.accepts(Some(&found));
            }
        }
        match manifest.check_structure("buildnet.toml") {
            Ok(order) if order.len() == manifest.packages.len() => Ok("accepted".into()),
            Ok(order) => Err(format!("{} packages ordered as {}", manifest.packages.len(), order.len())),
            Err(e) => Ok(super::label(&format!("check:{}", e.field.rsplit('.').next().unwrap_or("")), &e.message)),
        }
    }
}
