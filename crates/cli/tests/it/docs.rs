//! The documentation as a reader follows it: every relative link (and its `#anchor`) leads
//! somewhere, every `make` target and `valkey-dr` command it names exists, and the README stays
//! a front door.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Markdown files a reader is sent to.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join("ARCHITECTURE.md"),
        root().join("clients/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Each line outside code blocks, and each line inside them, apart.
fn split_code(text: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut prose, mut code) = (Vec::new(), Vec::new());
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            code.push(line);
        } else {
            prose.push(line);
        }
    }
    (prose, code)
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    split_code(&text)
        .0
        .iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links in prose.
fn links(prose: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose {
        let mut rest = *line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                found.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    found
}

/// Inline code spans of prose lines.
fn code_spans<'a>(prose: &[&'a str]) -> Vec<&'a str> {
    prose
        .iter()
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .collect()
}

#[test]
fn every_relative_link_and_anchor_leads_somewhere() {
    let mut broken = Vec::new();
    // Each linked file's headings, read once.
    let mut headings: std::collections::BTreeMap<PathBuf, BTreeSet<String>> = Default::default();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let here = file.parent().unwrap();
        for target in links(&split_code(&text).0) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                here.join(path)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
            } else if !anchor.is_empty()
                && !headings
                    .entry(linked.clone())
                    .or_insert_with(|| anchors(&linked))
                    .contains(anchor)
            {
                broken.push(format!("{}: {target} (no such heading)", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_make_target_and_command_the_docs_name_exists() {
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let targets: BTreeSet<&str> = makefile
        .lines()
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    let mut commands: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut missing = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let (prose, code) = split_code(&text);
        let spans = code_spans(&prose);
        for snippet in spans.iter().chain(code.iter()) {
            let words: Vec<&str> = snippet.split_whitespace().collect();
            for (i, word) in words.iter().enumerate() {
                if *word == "make"
                    && let Some(target) = words.get(i + 1)
                    && target.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    && !targets.contains(target)
                {
                    missing.push(format!("{}: make {target}", file.display()));
                }
                // `valkey-dr <command> [<subcommand>]`, also as target/release/valkey-dr.
                // As a command line starts it (not BIND's key named valkey-dr in a policy).
                let starts_command = i == 0
                    || matches!(
                        words[i - 1],
                        "$" | "sudo" | "&&" | ";" | "|" | "exec" | "time"
                    );
                if (*word == "valkey-dr" || word.ends_with("/valkey-dr"))
                    && starts_command
                    && let Some(command) = words.get(i + 1)
                    && command.starts_with(|c: char| c.is_ascii_lowercase())
                    && command.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                {
                    let mut named = vec![command.to_string()];
                    if matches!(*command, "lab" | "drill" | "aws")
                        && let Some(sub) = words.get(i + 2)
                        && sub.starts_with(|c: char| c.is_ascii_lowercase())
                        && sub.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    {
                        named.push(sub.to_string());
                    }
                    commands.insert(named);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no such make target:\n{}",
        missing.join("\n")
    );
    assert!(commands.len() > 15, "{commands:?}");
    for command in commands {
        // The AWS commands exist in the build with the `aws` feature only.
        if command[0] == "aws" && !cfg!(feature = "aws") {
            continue;
        }
        let out = Command::new(BIN)
            .args(&command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the docs name `valkey-dr {}`, which does not exist: {}",
            command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: move detail to docs/"
    );
}
