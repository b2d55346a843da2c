//! The module map holds: no file of the shim or of the agent imports, through any chain, a
//! file that imports it back (a module's own submodules do not count as its imports: a parent
//! owns its children, they may use it), and the top-level modules (`task`, `sandbox`, `vm`...)
//! form layers: none imports one that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["task", "process"]`) of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    // Binaries under src/bin are crates of their own.
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// Every path a file names: its `use` trees and inline `crate::...` paths, made absolute.
fn referenced_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    // `use` statements: a line starting with `use` (any visibility), up to its `;`.
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub ")
            .or_else(|| t.strip_prefix("pub(crate) "))
            .or_else(|| t.strip_prefix("pub(super) "))
            .unwrap_or(t);
        let Some(tree) = t.strip_prefix("use ") else {
            continue;
        };
        let mut stmt = tree.to_string();
        while !stmt.contains(';') {
            match lines.next() {
                Some(l) => stmt.push_str(l),
                None => break,
            }
        }
        let end = stmt.find(';').unwrap_or(stmt.len());
        // `use super::*` is how an inline `mod tests` sees its own file.
        if stmt[..end].trim() != "super::*" {
            paths.extend(expand(&stmt[..end]));
        }
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        paths.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let mut abs: Vec<String> = match *segs.first()? {
                "crate" => Vec::new(),
                "self" => module.to_vec(),
                "super" => {
                    let mut m = module.to_vec();
                    m.pop();
                    m
                }
                _ => return None,
            };
            let mut iter = segs.iter().skip(1).peekable();
            while iter.peek() == Some(&&"super") {
                abs.pop();
                iter.next();
            }
            abs.extend(iter.map(|s| s.split(" as ").next().unwrap_or(s).to_string()));
            Some(abs)
        })
        .collect()
}

/// File-level import edges of the crate rooted at `src`.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges = BTreeMap::new();
    for f in &files {
        let module = module_of(src, f);
        let text = std::fs::read_to_string(f).expect("read source");
        let mut to = BTreeSet::new();
        for path in referenced_paths(&text, &module) {
            // The longest prefix of the path that is a module file.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(t) = target {
                // Itself, and its own submodules, are not imports.
                if !t.starts_with(&module) {
                    to.insert(t);
                }
            }
        }
        edges.insert(module, to);
    }
    edges
}

/// The cycles of the graph, each as the files on it.
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    let name = |m: &Vec<String>| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    let mut found = Vec::new();
    for start in edges.keys() {
        // Depth-first search for a way back to `start`.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    let mut c: Vec<String> = path.iter().map(name).collect();
                    c.push(name(start));
                    found.push(c.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found.into_iter().map(|c| vec![c]).collect()
}

/// The graph between top-level modules (`task::process` counts as `task`).
fn top_level(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let top = |m: &Vec<String>| m.iter().take(1).cloned().collect::<Vec<_>>();
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, tos) in edges {
        let f = top(from);
        // The crate root declares every module; it is no layer.
        if f.is_empty() {
            continue;
        }
        let set = out.entry(f.clone()).or_default();
        set.extend(tos.iter().map(top).filter(|t| *t != f && !t.is_empty()));
    }
    out
}

fn crate_src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Fails with the cycles found in the crate at `rel`, at file and at module level.
fn assert_layered(rel: &str, min_files: usize) {
    let edges = graph(&crate_src(rel));
    assert!(
        edges.len() >= min_files,
        "the files of {rel} were not found"
    );
    let c = cycles(&edges);
    assert!(c.is_empty(), "import cycles in {rel}: {c:#?}");
    let c = cycles(&top_level(&edges));
    assert!(c.is_empty(), "cycles between {rel}'s modules: {c:#?}");
}

#[test]
fn shim_has_no_import_cycles() {
    assert_layered("src", 40);
}

#[test]
fn agent_has_no_import_cycles() {
    assert_layered("../agent/src", 15);
}

#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::b::{x, y::Z};\n").expect("write");
    std::fs::write(src.join("b.rs"), "fn f() { crate::a::g() }\n").expect("write");
    let c = cycles(&graph(src));
    assert!(!c.is_empty(), "a <-> b not found");
    // A parent using its child, and the child its parent, is not a cycle.
    std::fs::write(src.join("b.rs"), "mod c;\nuse self::c::X;\n").expect("write");
    std::fs::create_dir(src.join("b")).expect("mkdir");
    std::fs::write(src.join("b/c.rs"), "use super::Y;\n").expect("write");
    assert!(cycles(&graph(src)).is_empty());
}
