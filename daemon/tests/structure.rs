//! The shape of `daemon/src`, checked from its text (issue 28):
//!
//! - the modules' `crate::`/`super::` edges have no cycle other than
//!   between a module and its own parent or child;
//! - ARCHITECTURE.md's picture of the layers is generated from the same
//!   edges (`AIRLOCK_BLESS=1 cargo test -p airlock --test structure`
//!   rewrites it), so it cannot drift from the code;
//! - no non-test function is over 100 lines, and the runner's
//!   `run_inner` (the job's story) is under 40.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const BEGIN: &str = "<!-- module-layers: generated from the `use` edges of daemon/src by daemon/tests/structure.rs -->";
const END: &str = "<!-- /module-layers -->";
const MAX_FN_LINES: usize = 100;
const MAX_RUN_INNER_LINES: usize = 40;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The text before the file's `#[cfg(test)] mod …` (tests come last in
/// every file here).
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("#[cfg(test)]") && text[at + line.len()..].starts_with("mod ") {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// The library's modules (`vm::qemu`, `job`, …) and their files; the
/// binaries and test-only modules are not part of it.
fn modules() -> BTreeMap<String, PathBuf> {
    let root = src();
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let test_only: BTreeSet<String> = lib
        .lines()
        .zip(lib.lines().skip(1))
        .filter(|(a, _)| a.trim() == "#[cfg(test)]")
        .filter_map(|(_, b)| b.trim().strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let mut mods = BTreeMap::new();
    for f in rust_files(&root) {
        let rel = f.strip_prefix(&root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts[0] == "bin" || test_only.contains(&parts[0]) {
            continue;
        }
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        // The crate root only declares the modules.
        if !parts.is_empty() {
            mods.insert(parts.join("::"), f);
        }
    }
    mods
}

/// `a::b` is `a` or below it (or the other way round).
fn related(a: &str, b: &str) -> bool {
    let below = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}::")) || y.is_empty();
    below(a, b) || below(b, a)
}

/// The longest module that `path` (`x::y::Item`) names.
fn resolve(mods: &BTreeMap<String, PathBuf>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

/// The identifier path right after `at` (`a::b::c`), and a `{…}` group
/// that follows it, if any.
fn path_at(text: &str, at: usize) -> (String, Option<String>) {
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(rest.len());
    let path = rest[..end].trim_end_matches(':').to_owned();
    let group = rest[end..].starts_with('{').then(|| {
        let mut depth = 0;
        let mut close = rest.len();
        for (i, c) in rest[end..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = end + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest[end + 1..close].to_owned()
    });
    (path, group)
}

/// The items of a `use` group, with nested groups flattened
/// (`a, b::{c, d}` → `a`, `b::c`, `b::d`).
fn group_items(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        match item.find("::{") {
            Some(i) => {
                let inner = &item[i + 3..item.len() - 1];
                for sub in group_items(inner) {
                    out.push(format!("{}::{sub}", &item[..i]));
                }
            }
            None => out.push(item.split(" as ").next().unwrap().to_owned()),
        }
    }
    out
}

/// Code without `//` comments (doc links would count as edges).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("http://…") is kept: only a
            // comment that starts the line's code or follows code is cut.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// module → the modules it uses, parent and child modules left out.
fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, file) in mods {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_only(without_tests(&text));
        let parent = m.rsplit_once("::").map(|(p, _)| p).unwrap_or("");
        let mut refs = BTreeSet::new();
        for (kw, base) in [("crate::", ""), ("super::", parent)] {
            for (at, _) in code.match_indices(kw) {
                let before = code[..at].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let (path, group) = path_at(&code, at + kw.len());
                let full = |p: &str| {
                    [base, p]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("::")
                };
                let mut targets = vec![full(&path)];
                if let Some(g) = group {
                    targets.extend(
                        group_items(&g)
                            .iter()
                            .filter(|i| *i != "self")
                            .map(|i| full(&format!("{path}::{i}"))),
                    );
                }
                for t in targets {
                    if let Some(r) = resolve(mods, &t) {
                        if !related(m, &r) {
                            refs.insert(r);
                        }
                    }
                }
            }
        }
        out.insert(m.clone(), refs);
    }
    out
}

/// Strongly connected components with more than one module.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit<'a>(
        v: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a str>,
    ) {
        if !seen.insert(v) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, order);
        }
        order.push(v);
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in g.keys() {
        visit(v, g, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in g {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.into_iter().rev() {
        if assigned.contains(v) {
            continue;
        }
        let mut comp = Vec::new();
        let mut todo = vec![v.to_owned()];
        while let Some(x) = todo.pop() {
            if !assigned.insert(x.clone()) {
                continue;
            }
            for w in rev.get(&x).into_iter().flatten() {
                if !assigned.contains(w) {
                    todo.push(w.clone());
                }
            }
            comp.push(x);
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

/// The layers, bottom first: a module's layer is one above the highest of
/// the modules it uses (leaves are layer 0). Children are folded into
/// their top-level module, so the picture shows the crate's main parts.
fn picture(g: &BTreeMap<String, BTreeSet<String>>) -> String {
    let top = |m: &str| m.split("::").next().unwrap().to_owned();
    let mut tg: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in g {
        let e = tg.entry(top(v)).or_default();
        e.extend(ws.iter().map(|w| top(w)).filter(|w| *w != top(v)));
    }
    fn layer(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(l) = memo.get(v) {
            return *l;
        }
        let l = g
            .get(v)
            .into_iter()
            .flatten()
            .map(|w| layer(w, g, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(v.to_owned(), l);
        l
    }
    let mut memo = BTreeMap::new();
    let mut by_layer: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for v in tg.keys() {
        by_layer
            .entry(layer(v, &tg, &mut memo))
            .or_default()
            .push(v.clone());
    }
    let mut s = String::from("```text\n");
    for (l, vs) in by_layer.iter().rev() {
        s.push_str(&format!("layer {l}\n"));
        for v in vs {
            let uses: Vec<&str> = tg[v].iter().map(String::as_str).collect();
            if uses.is_empty() {
                s.push_str(&format!("  {v}\n"));
            } else {
                s.push_str(&format!("  {v:<12} uses {}\n", uses.join(", ")));
            }
        }
    }
    s.push_str("```\n");
    s
}

#[test]
fn module_edges_point_one_way() {
    let mods = modules();
    assert!(mods.contains_key("runner") && mods.contains_key("vm::qemu"));
    let g = edges(&mods);
    // The parser sees what it must: a few edges known to exist.
    for (from, to) in [
        ("runner", "vm::qemu"),
        ("runner::disks", "input"),
        ("dbus", "scheduler"),
        ("vm::ch", "vm::ch_api"),
    ] {
        assert!(
            g[from].contains(to) || related(from, to),
            "{from} -> {to} not found: {:?}",
            g[from]
        );
    }
    let c = cycles(&g);
    assert!(
        c.is_empty(),
        "import cycles in daemon/src (each line: modules that use each other): {c:#?}\nedges: {g:#?}"
    );
}

#[test]
fn the_architecture_picture_is_generated_from_the_edges() {
    let g = edges(&modules());
    let pic = picture(&g);
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("ARCHITECTURE.md lacks the {BEGIN} … {END} block");
    };
    let current = &doc[b + BEGIN.len()..e];
    let want = format!("\n{pic}");
    if current != want {
        if std::env::var_os("AIRLOCK_BLESS").is_some() {
            let new = format!("{}{BEGIN}{want}{}", &doc[..b], &doc[e..]);
            std::fs::write(&doc_path, new).unwrap();
            println!("ARCHITECTURE.md: layer picture rewritten");
            return;
        }
        panic!(
            "ARCHITECTURE.md's layer picture is not the code's; run AIRLOCK_BLESS=1 cargo test -p airlock --test structure. The code's:\n{pic}"
        );
    }
}

/// (lines, file, line number, name) of every non-test function.
fn functions() -> Vec<(usize, String, usize, String)> {
    let mut out = Vec::new();
    for f in rust_files(&src()) {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = without_tests(&text).lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            let sig = [
                "pub(crate) ",
                "pub(super) ",
                "pub ",
                "async ",
                "unsafe ",
                "const ",
            ]
            .iter()
            .fold(t, |s, p| s.strip_prefix(p).unwrap_or(s));
            let sig = ["async ", "unsafe "]
                .iter()
                .fold(sig, |s, p| s.strip_prefix(p).unwrap_or(s));
            let Some(rest) = sig.strip_prefix("fn ") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The body starts at the first line ending in `{`; a `;` first
            // is a declaration (a trait's, or a proxy's).
            let Some(body) = (i..lines.len()).find(|&j| {
                let e = lines[j].trim_end();
                e.ends_with('{') || e.ends_with(';')
            }) else {
                continue;
            };
            if !lines[body].trim_end().ends_with('{') {
                continue;
            }
            let close = format!("{indent}}}");
            if let Some(end) = (body..lines.len()).find(|&j| lines[j] == close) {
                let rel = f.strip_prefix(src()).unwrap().display().to_string();
                out.push((end - i + 1, rel, i + 1, name));
            }
        }
    }
    out
}

#[test]
fn no_function_is_over_100_lines_and_the_job_story_reads_in_one_screen() {
    let fns = functions();
    assert!(
        fns.len() > 300,
        "the scan found only {} functions",
        fns.len()
    );
    let long: Vec<_> = fns.iter().filter(|f| f.0 > MAX_FN_LINES).collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (lines, file, line, name): {long:#?}"
    );
    let run_inner = fns
        .iter()
        .find(|f| f.3 == "run_inner" && f.1 == "runner/mod.rs")
        .expect("runner/mod.rs has run_inner");
    assert!(
        run_inner.0 < MAX_RUN_INNER_LINES,
        "run_inner is {} lines",
        run_inner.0
    );
    let mut top: Vec<_> = fns.iter().collect();
    top.sort_by_key(|f| std::cmp::Reverse(f.0));
    println!("longest functions: {:?}", &top[..5]);
}
