//! Checks of the library's own shape, read from its source files: the rules of
//! docs/style that a compiler does not enforce.
//!
//! * On-disk integers are read and written through [`crate::bytes`] only: no other file
//!   calls `from_le_bytes`, `to_be_bytes` and the like.
//! * No import circle between files: `use` (and `crate::` paths) form a graph without
//!   cycles, so every module can be read knowing only the ones below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its module path (`ext4::walk::extent`; `lib.rs` and
/// `mod.rs` name their folder).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut pre = prefix.to_vec();
            pre.push(name);
            modules(&p, &pre, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut path = prefix.to_vec();
            if stem != "lib" && stem != "mod" {
                path.push(stem.to_string());
            }
            out.insert(path.join("::"), p);
        }
    }
}

/// The source without comments and without its unit tests (a test may use anything).
fn code(text: &str) -> String {
    let body = text
        .find("#[cfg(test)]")
        .filter(|&i| text[i..].lines().take(3).any(|l| l.contains("mod tests")))
        .map_or(text, |i| &text[..i]);
    body.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    // Aliases (`x as y`) dropped, then the spaces.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut flat = String::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" {
            // The alias, and any punctuation glued to it.
            let alias = words.get(i + 1).copied().unwrap_or("");
            flat.push_str(alias.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            i += 2;
        } else {
            flat.push_str(words[i]);
            i += 1;
        }
    }
    expand_flat(&flat)
}

fn expand_flat(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.len().saturating_sub(1)];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0i32, String::new());
    for ch in inner.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            if p == "self" {
                vec![prefix.to_string()]
            } else {
                expand_flat(&format!("{prefix}::{p}"))
            }
        })
        .collect()
}

/// The module (a key of `mods`) a path from inside `from` leads to, if it is ours.
fn target(mods: &BTreeMap<String, PathBuf>, from: &str, path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"super") | Some(&"self") => from.split("::").filter(|s| !s.is_empty()).collect(),
        _ => return None,
    };
    while let Some(&s) = segs.first() {
        match s {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        segs.remove(0);
    }
    base.extend(segs);
    (1..=base.len())
        .rev()
        .map(|n| base[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

/// Edges `file -> file it imports` (a module importing its own parent or child is not a
/// circle: a parent declares its children).
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut mods = BTreeMap::new();
    modules(&src_dir(), &[], &mut mods);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, file) in &mods {
        let src = code(&std::fs::read_to_string(file).unwrap());
        let mut paths = Vec::new();
        for stmt in src.split(';') {
            // The statement's last `use` keyword (what precedes it is other code).
            let kw = stmt.rmatch_indices("use ").map(|(i, _)| i).find(|&i| {
                i == 0 || !stmt[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if let Some(i) = kw {
                paths.extend(expand(&stmt[i + 4..]));
            }
        }
        let mut rest = src.as_str();
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            paths.push(tail[..end].trim_end_matches(':').to_string());
            rest = &tail[end.max(1)..];
        }
        let edges = graph.entry(m.clone()).or_default();
        for p in paths {
            if let Some(t) = target(&mods, m, &p) {
                let related = t == *m
                    || m.starts_with(&format!("{t}::"))
                    || t.starts_with(&format!("{m}::"))
                    || t.is_empty()
                    || m.is_empty();
                if !related {
                    edges.insert(t);
                }
            }
        }
    }
    graph
}

/// A cycle of the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for t in graph.get(n).into_iter().flatten() {
            match state.get(t.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == t).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(t.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(t, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_circle() {
    let graph = import_graph();
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    // The parser finds the imports at all (a change to it that saw none would pass).
    assert!(
        graph.len() > 40 && edges > 200,
        "{} files, {edges} imports",
        graph.len()
    );
    assert!(
        graph["ops::move_fs"].contains("ops::move_journal")
            && graph["ext4::scan"].contains("blockmap"),
        "known imports missing"
    );
    if let Some(c) = find_cycle(&graph) {
        panic!("import circle: {}", c.join(" -> "));
    }
}

#[test]
fn circles_are_found() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    assert!(find_cycle(&g).is_some_and(|c| c.len() == 4));
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
    assert_eq!(expand("crate::a::{b, c::{d, e as f}, self}").len(), 4);
}

#[test]
fn byte_order_only_through_the_bytes_module() {
    let mut mods = BTreeMap::new();
    modules(&src_dir(), &[], &mut mods);
    let forms = [
        "from_le_bytes",
        "to_le_bytes",
        "from_be_bytes",
        "to_be_bytes",
    ];
    let offenders: Vec<String> = mods
        .iter()
        .filter(|(m, _)| *m != "bytes" && *m != "structure")
        .filter(|(_, f)| {
            let src = code(&std::fs::read_to_string(f).unwrap());
            forms.iter().any(|w| src.contains(w))
        })
        .map(|(m, _)| m.clone())
        .collect();
    assert!(
        offenders.is_empty(),
        "hand-rolled byte order in {offenders:?}"
    );
}
