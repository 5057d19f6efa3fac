//! How the CLI prints: aligned tables for people, JSON or YAML for scripts.

use std::io::IsTerminal;

use clap::ValueEnum;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints a JSON document in the chosen machine format; `Table` callers print their own.
pub fn print_document(format: Format, value: &Value) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Format::Yaml => print!("{}", to_yaml(value)),
        Format::Table => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
    }
}

/// A table of text cells, columns as wide as their widest cell.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(shown).collect());
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([self.headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == cols {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `key: value` lines, keys aligned.
pub fn print_facts(facts: &[(&str, String)]) {
    let w = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in facts {
        println!("{:<w$}  {}", format!("{k}:"), shown(v.clone()), w = w + 1);
    }
}

/// A value from a node as a table shows it: control characters escaped (`\u{1b}`, `\n`), so
/// what a peer or a project names cannot repaint the terminal or forge a line of the table.
fn shown(text: String) -> String {
    if !text.chars().any(|c| c.is_control() || buildnet_actors::wire::is_invisible(c)) {
        return text;
    }
    one_line(&text)
}

/// `text` from a node (an error, a line of a package's output, which a peer's package may have
/// written) as one line a terminal shows as it is: control characters but tabs, and characters
/// that show as nothing or reorder the text (`wire::is_invisible`), escaped.
pub fn one_line(text: &str) -> String {
    let escaped = |c: char| (c.is_control() && c != '\t') || buildnet_actors::wire::is_invisible(c);
    text.chars().map(|c| if escaped(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

pub use crate::human::{bytes, utc as time};

/// A spinner on stderr while long work runs, only when stderr is a terminal.
pub fn spinner(message: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    Some(bar)
}

/// YAML for a JSON document (block style; strings quoted where YAML would misread them).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (k, v) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&quote(k));
        out.push(':');
        write_child(out, v, indent);
    }
}

fn write_seq(out: &mut String, seq: &[Value], indent: usize) {
    for v in seq {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // First key on the dash's line, the rest indented under it.
                let mut inner = String::new();
                write_map(&mut inner, m, indent + 2);
                out.push(' ');
                out.push_str(inner.trim_start());
            }
            _ => write_child(out, v, indent),
        }
    }
}

fn write_child(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Plain when YAML reads it back as the same string, else JSON-quoted (valid YAML).
fn quote(s: &str) -> String {
    let reserved = ["true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"];
    let plain = !s.is_empty()
        && !reserved.contains(&s.to_lowercase().as_str())
        && s.parse::<f64>().is_err()
        && !s.starts_with(|c: char| c.is_whitespace() || "-?:,[]{}#&*!|>'\"%@`".contains(c))
        && !s.ends_with(char::is_whitespace)
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.chars().any(|c| c.is_control());
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_cannot_repaint_the_terminal_or_forge_a_row() {
        let mut t = Table::new(&["name", "status"]);
        t.row(vec!["x\u{1b}[2J\u{1b}[31mFAKE\nalpha  online".into(), "online".into()]);
        let text = t.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("x\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["name", "cores"]);
        t.row(vec!["alpha".into(), "8".into()]);
        t.row(vec!["b".into(), "16".into()]);
        assert_eq!(t.render(), "NAME   CORES\nalpha  8\nb      16\n");
    }

    #[test]
    fn yaml_is_block_style_and_quotes_what_it_must() {
        let v = serde_json::json!({"name": "node-a", "tags": ["x", "true"], "cpu": {"count": 8}, "empty": [], "note": "a: b",
                                   "nodes": [{"id": "1", "ok": true}]});
        let y = to_yaml(&v);
        assert!(y.contains("name: node-a\n"), "{y}");
        assert!(y.contains("tags:\n  - x\n  - \"true\"\n"), "{y}");
        assert!(y.contains("cpu:\n  count: 8\n"), "{y}");
        assert!(y.contains("empty: []\n"), "{y}");
        assert!(y.contains("note: \"a: b\"\n"), "{y}");
        assert!(y.contains("nodes:\n  - id: \"1\"\n    ok: true\n"), "{y}");
    }
}
