//! `buildnet init [DIR]`: writes a starting `buildnet.toml` for an existing project and says what
//! it guessed. From a compilation database (`compile_commands.json`, as CMake, Meson and Bear
//! write it): one package per translation unit (its command with project-relative paths, the
//! source and the headers of its include directories as inputs, the object as output) and a link
//! package when exactly one source defines `main`; from a directory of media files, a pattern
//! package per kind and place, with a tool found on PATH (or a commented stub).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use buildnet_actors::builds::{inputs, project};
use buildnet_actors::wire;

use super::{CliError, Ctx, GlobalArgs};
use serde_json::Value;

#[derive(Args)]
pub struct InitArgs {
    /// The project directory (default: the current one)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Print the manifest instead of writing it
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite an existing buildnet.toml
    #[arg(long)]
    pub force: bool,
}

/// One entry of a compilation database.
#[derive(Deserialize)]
struct Entry {
    directory: String,
    file: String,
    arguments: Option<Vec<String>>,
    command: Option<String>,
    output: Option<String>,
}

/// Each usable tool of the pool by name: the file name of its binary and the node that has it.
type PoolTools = BTreeMap<String, Vec<(String, String)>>;

/// How long `init` waits for the node it asks about the pool's tools: it works without one.
const POOL_ASK: std::time::Duration = std::time::Duration::from_secs(3);

/// The pool's tools, asked of the node this CLI would talk to (once, and only when this
/// machine's PATH lacks a tool); empty, with a note saying so, when no node answers in
/// [`POOL_ASK`], so `init` still works on a machine without one.
fn pool_tools(global: &GlobalArgs, notes: &mut Vec<String>) -> PoolTools {
    let asked = Ctx::connect(global, false).and_then(|ctx| {
        actix_rt::System::new().block_on(async move {
            let ask = ctx.client.get::<Value>("/api/pool/resources?type=tool");
            match actix_rt::time::timeout(POOL_ASK, ask).await {
                Ok(answer) => answer,
                Err(_) => {
                    Err(CliError::Other(format!("{} did not answer in {} s", ctx.client.base(), POOL_ASK.as_secs())))
                }
            }
        })
    });
    let listed = match asked {
        Ok(v) => v,
        Err(e) => {
            notes.push(format!("tools looked for on this machine's PATH only: {e}"));
            return PoolTools::new();
        }
    };
    let mut tools = PoolTools::new();
    for r in listed["resources"].as_array().into_iter().flatten() {
        let info = &r["info"];
        if !info["error"].is_null() || r["capacity"].as_u64() == Some(0) {
            continue;
        }
        let (Some(name), Some(path), Some(node)) =
            (info["name"].as_str(), info["path"].as_str(), r["node_name"].as_str())
        else {
            continue;
        };
        let binary = Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        tools.entry(name.to_string()).or_default().push((binary, node.to_string()));
    }
    tools
}

pub fn run(args: InitArgs, global: &GlobalArgs) -> Result<(), CliError> {
    let root = args.dir.canonicalize().map_err(|e| CliError::Usage(format!("{}: {e}", args.dir.display())))?;
    let target = root.join(project::MANIFEST);
    if target.exists() && !args.force && !args.dry_run {
        return Err(CliError::Usage(format!(
            "{} exists; pass --force to overwrite it, or --dry-run to see what init would write",
            target.display()
        )));
    }
    let compdb =
        ["compile_commands.json", "build/compile_commands.json"].iter().map(|p| root.join(p)).find(|p| p.is_file());
    let (text, notes) = match compdb {
        Some(db) => from_compdb(&root, &db)?,
        None => {
            let mut asked = Vec::new();
            let mut pool: Option<PoolTools> = None;
            let mut ask = || pool.get_or_insert_with(|| pool_tools(global, &mut asked)).clone();
            let made = from_media(&root, &mut ask);
            let (text, mut notes) = made.map_err(|e| match e {
                CliError::Other(m) if !asked.is_empty() => CliError::Other(format!("{m}; {}", asked.join("; "))),
                e => e,
            })?;
            notes.extend(asked);
            (text, notes)
        }
    };
    // What was written must load as a project here.
    project::Manifest::parse(project::MANIFEST, &text)
        .and_then(|m| m.check(project::MANIFEST, &root))
        .map_err(|e| CliError::Other(format!("the guessed manifest does not check ({e}); please report this")))?;
    if args.dry_run {
        print!("{text}");
        notes.iter().for_each(|n| eprintln!("{n}"));
        return Ok(());
    }
    std::fs::write(&target, &text).map_err(|e| CliError::Other(format!("{}: {e}", target.display())))?;
    println!("wrote {}", target.display());
    notes.iter().for_each(|n| println!("{n}"));
    Ok(())
}

/// A TOML string.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "))
}

/// A package name from a path: letters, digits, - and _.
fn name_of(path: &str) -> String {
    path.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Splits a compile command as a POSIX shell would (quotes and backslashes; no expansions).
fn split_command(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None::<char>, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(open), c) if c == open => quote = None,
            (None | Some('"'), '\\') => {
                word.extend(chars.next());
                any = true;
            }
            (_, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// The tool a compiler driver is known by on the pool.
fn tool_of(compiler: &str) -> Option<&'static str> {
    let base = Path::new(compiler).file_name().and_then(|n| n.to_str()).unwrap_or(compiler);
    if base.contains("clang") {
        Some("clang")
    } else if ["gcc", "g++", "cc", "c++"].iter().any(|g| base == *g || base.ends_with(&format!("-{g}"))) {
        Some("gcc")
    } else {
        None
    }
}

fn from_compdb(root: &Path, db: &Path) -> Result<(String, Vec<String>), CliError> {
    let fail = |m: String| CliError::Other(format!("{}: {m}", db.display()));
    let text = std::fs::read_to_string(db).map_err(|e| fail(e.to_string()))?;
    let entries: Vec<Entry> =
        serde_json::from_str(&text).map_err(|e| fail(format!("not a compilation database: {e}")))?;
    if entries.is_empty() {
        return Err(fail("lists no translation units".into()));
    }
    // A path of the database (relative to its entry's directory) as a project path.
    let rel = |dir: &Path, p: &str| -> Option<String> {
        let full = dir.join(p);
        let mut parts: Vec<String> = Vec::new();
        for c in full.strip_prefix(root).ok()?.components() {
            match c {
                std::path::Component::Normal(s) => parts.push(s.to_str()?.to_string()),
                std::path::Component::ParentDir => {
                    parts.pop()?;
                }
                _ => {}
            }
        }
        Some(parts.join("/"))
    };
    let mut out =
        String::from("# Written by `buildnet init` from compile_commands.json: one package per translation unit.\n");
    let (mut notes, mut objects, mut names, mut tools) = (Vec::new(), Vec::new(), Vec::new(), BTreeSet::new());
    let (mut mains, mut driver) = (Vec::new(), None);
    for (i, e) in entries.iter().enumerate() {
        let dir = Path::new(&e.directory);
        let argv = match (&e.arguments, &e.command) {
            (Some(a), _) if !a.is_empty() => a.clone(),
            (_, Some(c)) => split_command(c),
            _ => return Err(fail(format!("entry {i} has neither arguments nor command"))),
        };
        let source =
            rel(dir, &e.file).ok_or_else(|| fail(format!("entry {i}: '{}' is outside {}", e.file, root.display())))?;
        // A path no manifest may name (under `.tmp`, say) is the project's to move, not a guess gone wrong.
        wire::check_path(&source).map_err(|e| fail(format!("entry {i}: '{source}' {e}")))?;
        let mut command = Vec::new();
        let (mut includes, mut output) = (vec![], e.output.clone().and_then(|o| rel(dir, &o)));
        let mut it = argv.iter().peekable();
        while let Some(a) = it.next() {
            let path_arg = |p: &str| rel(dir, p).unwrap_or_else(|| p.to_string());
            if command.is_empty() {
                command.push(Path::new(a).file_name().and_then(|n| n.to_str()).unwrap_or(a).to_string());
            } else if a == "-o" {
                let o = it.next().map(|o| path_arg(o)).unwrap_or_default();
                output = Some(o.clone());
                command.extend(["-o".to_string(), o]);
            } else if let Some(d) = a.strip_prefix("-I").filter(|d| !d.is_empty()) {
                includes.push(path_arg(d));
                command.push(format!("-I{}", path_arg(d)));
            } else if a == "-I" || a == "-iquote" || a == "-isystem" {
                let d = it.next().map(|d| path_arg(d)).unwrap_or_default();
                includes.push(d.clone());
                command.extend([a.clone(), d]);
            } else if dir.join(a) == dir.join(&e.file) {
                command.push(source.clone());
            } else {
                command.push(a.clone());
            }
        }
        let object = match output {
            Some(o) => o,
            None => {
                let o = format!("{}.o", source.rsplit_once('.').map_or(source.as_str(), |(s, _)| s));
                command.extend(["-o".to_string(), o.clone()]);
                o
            }
        };
        wire::check_path(&object).map_err(|e| fail(format!("entry {i}: its output '{object}' {e}")))?;
        let mut inputs = vec![source.clone()];
        let source_dir = source.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_string());
        for d in std::iter::once(source_dir).chain(includes) {
            for ext in ["h", "hpp", "hh"] {
                let glob = if d.is_empty() || d == "." { format!("*.{ext}") } else { format!("{d}/*.{ext}") };
                if !inputs.contains(&glob) && inputs::expand(root, &glob).is_ok_and(|f| !f.is_empty()) {
                    inputs.push(glob);
                }
            }
        }
        let tool = tool_of(&command[0]);
        tools.extend(tool);
        driver.get_or_insert_with(|| command[0].clone());
        if std::fs::read_to_string(root.join(&source))
            .is_ok_and(|t| t.contains("int main(") || t.contains("int main ("))
        {
            mains.push(source.clone());
        }
        let mut name = name_of(&source);
        while names.contains(&name) {
            name.push('_');
        }
        out.push_str(&format!("\n[packages.{name}]\ncommand = {}\n", list(&command)));
        out.push_str(&format!("inputs = {}\noutputs = {}\n", list(&inputs), list(std::slice::from_ref(&object))));
        if let Some(t) = tool {
            out.push_str(&format!("tools = [{}]\n", q(t)));
        }
        names.push(name);
        objects.push(object);
    }
    notes.push(format!(
        "{} translation units from {}: each compiles as its own package (inputs: the source and the headers of its directory and -I directories)",
        entries.len(),
        db.display()
    ));
    let program = name_of(root.file_name().and_then(|n| n.to_str()).unwrap_or("app"));
    let link_cmd: Vec<String> = [driver.clone().unwrap_or_else(|| "cc".into())]
        .into_iter()
        .chain(objects.iter().cloned())
        .chain(["-o".to_string(), program.clone()])
        .collect();
    let tool_line = tools.iter().next().map(|t| format!("tools = [{}]\n", q(t))).unwrap_or_default();
    if mains.len() == 1 {
        out.push_str(&format!(
            "\n# Links every object into `{program}` ({} defines main).\n[packages.link]\ndeps = {}\ncommand = {}\noutputs = {}\n{tool_line}",
            mains[0],
            list(&names),
            list(&link_cmd),
            list(std::slice::from_ref(&program)),
        ));
        notes.push(format!("a link package: every object into `{program}` ({} defines main)", mains[0]));
    } else {
        out.push_str(&format!(
            "\n# The program could not be told ({} sources define main): fill in and uncomment the link step.\n# [packages.link]\n# deps = {}\n# command = {}\n# outputs = {}\n",
            mains.len(),
            list(&names),
            list(&link_cmd),
            list(std::slice::from_ref(&program)),
        ));
        notes.push(format!("no link package: {} sources define main; a commented stub is at the end", mains.len()));
    }
    Ok((out, notes))
}

/// Media kinds: the extensions, the tools tried (binary, pool tool name, command, output extension).
type Recipe = (&'static str, &'static str, &'static [&'static str], &'static str);
const KINDS: [(&str, &[&str], &[Recipe]); 3] = [
    (
        "images",
        &["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "ppm", "pgm"],
        &[
            ("magick", "imagemagick", &["magick", "{in}", "-resize", "320x320>", "thumbs/{dir}/{stem}.png"], "png"),
            ("convert", "imagemagick", &["convert", "{in}", "-resize", "320x320>", "thumbs/{dir}/{stem}.png"], "png"),
        ],
    ),
    (
        "audio",
        &["wav", "mp3", "flac", "ogg", "m4a", "aac"],
        &[(
            "ffmpeg",
            "ffmpeg",
            &["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", "{in}", "-ac", "1", "audio/{dir}/{stem}.wav"],
            "wav",
        )],
    ),
    (
        "video",
        &["mp4", "mov", "mkv", "avi", "webm"],
        &[(
            "ffmpeg",
            "ffmpeg",
            &[
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                "{in}",
                "-frames:v",
                "1",
                "posters/{dir}/{stem}.jpg",
            ],
            "jpg",
        )],
    ),
];

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
}

/// The recipe for a kind: one whose binary is on this machine's PATH, else one whose tool a node
/// of the pool has under that binary's name (the package will be placed there), with where it
/// was found.
fn choose<'a>(recipes: &'a [Recipe], pool: &mut impl FnMut() -> PoolTools) -> Option<(&'a Recipe, String)> {
    if let Some(r) = recipes.iter().find(|(bin, ..)| on_path(bin)) {
        return Some((r, "found on PATH".into()));
    }
    let pool = pool();
    recipes.iter().find_map(|r| {
        let (bin, tool, ..) = r;
        let node = pool.get(*tool)?.iter().find(|(binary, _)| binary == bin).map(|(_, node)| node.clone())?;
        Some((r, format!("not on this machine's PATH; the pool has it on {node}")))
    })
}

fn from_media(root: &Path, pool: &mut impl FnMut() -> PoolTools) -> Result<(String, Vec<String>), CliError> {
    let files = inputs::expand(root, "**/*").map_err(|e| CliError::Other(format!("{}: {e}", root.display())))?;
    // (kind, top-level directory or "", extension) → count
    let mut found: BTreeMap<(usize, String, String), usize> = BTreeMap::new();
    for f in &files {
        if f.split('/').any(|c| c.starts_with('.')) {
            continue;
        }
        let Some((_, ext)) = f.rsplit_once('.') else { continue };
        let ext_lower = ext.to_ascii_lowercase();
        let Some(kind) = KINDS.iter().position(|(_, exts, _)| exts.contains(&ext_lower.as_str())) else { continue };
        let top = f.split_once('/').map_or(String::new(), |(d, _)| d.to_string());
        *found.entry((kind, top, ext.to_string())).or_default() += 1;
    }
    // Outputs go under each kind's output directory; files already there are not inputs.
    found.retain(|(_, top, _), _| !["thumbs", "audio", "posters"].contains(&top.as_str()));
    if found.is_empty() {
        return Err(CliError::Other(format!(
            "found neither compile_commands.json nor media files in {}: write buildnet.toml by hand (see the README's Builds section)",
            root.display()
        )));
    }
    let mut out = String::from(
        "# Written by `buildnet init` from the media files found: one pattern package per kind and place.\n",
    );
    let mut notes = Vec::new();
    for ((kind, top, ext), count) in found {
        let (kind_name, _, recipes) = KINDS[kind];
        let glob = if top.is_empty() { format!("*.{ext}") } else { format!("{top}/**/*.{ext}") };
        let name = name_of(&format!("{kind_name}_{}{}{ext}", top, if top.is_empty() { "" } else { "_" }));
        match choose(recipes, pool) {
            Some(((bin, tool, command, _), found)) => {
                let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
                let output = command.last().cloned().unwrap_or_default();
                out.push_str(&format!(
                    "\n# {count} {kind_name} file(s) matching {glob}, with {bin}.\n[packages.{name}]\nfor_each = {}\ncommand = {}\noutputs = {}\ntools = [{}]\n",
                    q(&glob),
                    list(&command),
                    list(&[output]),
                    q(tool)
                ));
                notes.push(format!("{name}: {count} {kind_name} file(s) ({glob}) processed with {bin} ({found})"));
            }
            None => {
                let wanted: Vec<&str> = recipes.iter().map(|(b, ..)| *b).collect();
                out.push_str(&format!(
                    "\n# {count} {kind_name} file(s) match {glob}, but none of {} is on PATH or in the pool: fill in a command.\n# [packages.{name}]\n# for_each = {}\n# command = [\"your-tool\", \"{{in}}\", \"out/{{dir}}/{{stem}}.{ext}\"]\n# outputs = [\"out/{{dir}}/{{stem}}.{ext}\"]\n",
                    wanted.join(", "),
                    q(&glob)
                ));
                notes.push(format!(
                    "{name}: {count} {kind_name} file(s) ({glob}) but no {} on PATH or in the pool: a commented stub",
                    wanted.join("/")
                ));
            }
        }
    }
    if !out.contains("\n[packages.") {
        return Err(CliError::Other(format!(
            "found media in {} but no tool for it on PATH or in the pool ({}); install one, or write buildnet.toml by hand",
            root.display(),
            notes.join("; ")
        )));
    }
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_command(r#"cc -DX="a b" -c 'x y.c'  -o o\ 1.o"#),
            vec!["cc", "-DX=a b", "-c", "x y.c", "-o", "o 1.o"]
        );
        assert_eq!(tool_of("/usr/bin/x86_64-linux-gnu-gcc"), Some("gcc"));
        assert_eq!(tool_of("clang++"), Some("clang"));
        assert_eq!(name_of("src/a-b.c"), "src_a-b_c");
    }
}
