//! The server's layering, checked by reading its source (in the spirit of
//! rust-analyzer's `tidy` tests): a rule kept true by a test, not by memory.
//!
//! - The import graph of the crate's top-level modules has no cycle, nor has the graph
//!   of its files (siblings in one folder included).
//! - Below the pipeline (every module but `http`, `gateway` and `pipeline`), nothing
//!   names the `Gateway` or imports `gateway`, `http` or `pipeline`: components
//!   receive the handles they need.
//! - `config` is a leaf: it imports no other module of the crate.
//! - Within `pipeline`, a stage imports no later stage (the meter, last, is imported
//!   by the stages that hand it on).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that may see the gateway.
const ABOVE: [&str; 3] = ["http", "gateway", "pipeline"];

/// The pipeline's stages in request order.
const STAGES: [&str; 10] = [
    "identify",
    "attribute",
    "resolve",
    "cache",
    "shape",
    "admission",
    "egress",
    "respond",
    "meter",
    "ctx",
];

struct Source {
    /// Module path from the crate root (`["limits", "admit"]`; `[]` is lib.rs).
    module: Vec<String>,
    /// The code, without `//` comments and without the trailing `#[cfg(test)]` module.
    code: String,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn strip(text: &str) -> String {
    let body = match text.find("\n#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap_or(&p);
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            Source {
                module,
                code: strip(&text),
            }
        })
        .collect()
}

/// The crate modules a file refers to, as full paths (`crate::a::b` → `[a, b]`;
/// `super::x` resolved from the file's own module). Only the first segments that name
/// modules matter here; a trailing item name is harmless.
fn references(s: &Source) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code = &s.code;
    let ident = |rest: &str| -> Vec<String> {
        let mut segs = Vec::new();
        let mut cur = rest;
        loop {
            let end = cur
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(cur.len());
            if end == 0 {
                break;
            }
            segs.push(cur[..end].to_string());
            cur = &cur[end..];
            match cur.strip_prefix("::") {
                Some(r) => cur = r,
                None => break,
            }
        }
        segs
    };
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `tollgate_crate::`
        }
        out.push(ident(&code[i + "crate::".len()..]));
    }
    for (i, _) in code.match_indices("super::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // `super::super::` is handled from its first `super`
        }
        let mut base = s.module.clone();
        let mut rest = &code[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        let mut path = base;
        path.extend(ident(rest));
        out.push(path);
    }
    out
}

fn top_level_graph(srcs: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let tops: BTreeSet<String> = srcs
        .iter()
        .filter_map(|s| s.module.first().cloned())
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in srcs {
        let Some(from) = s.module.first() else {
            continue; // lib.rs is the top; it may import everything
        };
        let entry = g.entry(from.clone()).or_default();
        for r in references(s) {
            if let Some(to) = r.first()
                && tops.contains(to)
                && to != from
            {
                entry.insert(to.clone());
            }
        }
    }
    g
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|x| x == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, g, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let srcs = sources();
    let g = top_level_graph(&srcs);
    assert!(g.len() > 10, "the source walk found too few modules: {g:?}");
    if let Some(c) = find_cycle(&g) {
        panic!(
            "the server's modules import each other in a circle: {}",
            c.join(" → ")
        );
    }
}

/// Edges between files: each reference goes to the longest module path it starts with
/// (a parent's `pub mod` / `pub use` of its children is not an import).
fn file_graph(srcs: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<Vec<String>> = srcs
        .iter()
        .filter(|s| !s.module.is_empty())
        .map(|s| s.module.clone())
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in srcs.iter().filter(|s| !s.module.is_empty()) {
        let from = s.module.join("::");
        let entry = g.entry(from.clone()).or_default();
        for r in references(s) {
            let to = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(to) = to.map(|t| t.join("::"))
                && to != from
            {
                entry.insert(to);
            }
        }
    }
    g
}

#[test]
fn the_file_graph_has_no_cycle() {
    let g = file_graph(&sources());
    assert!(
        g.len() > 30,
        "the source walk found too few files: {}",
        g.len()
    );
    if let Some(c) = find_cycle(&g) {
        panic!(
            "these files import each other in a circle: {}",
            c.join(" → ")
        );
    }
}

#[test]
fn components_never_see_the_gateway() {
    let mut bad = Vec::new();
    for s in sources() {
        let Some(top) = s.module.first() else {
            continue;
        };
        if ABOVE.contains(&top.as_str()) {
            continue;
        }
        let names_gateway = s
            .code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "Gateway");
        if names_gateway {
            bad.push(format!("{}: names `Gateway`", s.module.join("::")));
        }
        for r in references(&s) {
            if let Some(first) = r.first()
                && ABOVE.contains(&first.as_str())
            {
                bad.push(format!(
                    "{}: imports `{}`",
                    s.module.join("::"),
                    r.join("::")
                ));
            }
        }
    }
    assert!(bad.is_empty(), "below the pipeline:\n{}", bad.join("\n"));
}

#[test]
fn config_is_a_leaf() {
    let mut bad = Vec::new();
    for s in sources()
        .iter()
        .filter(|s| s.module.first().is_some_and(|m| m == "config"))
    {
        for r in references(s) {
            if r.first().is_some_and(|m| m != "config") {
                bad.push(format!(
                    "{}: imports `{}`",
                    s.module.join("::"),
                    r.join("::")
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "config must import no other module:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_stage_never_imports_a_later_stage() {
    let order = |m: &str| STAGES.iter().position(|s| *s == m);
    let mut bad = Vec::new();
    let srcs = sources();
    let stages: Vec<&Source> = srcs
        .iter()
        .filter(|s| s.module.len() == 2 && s.module[0] == "pipeline")
        .collect();
    assert!(stages.len() >= 8, "the pipeline has lost its stages");
    for s in stages {
        let Some(me) = order(&s.module[1]) else {
            bad.push(format!("pipeline::{} is not a listed stage", s.module[1]));
            continue;
        };
        for r in references(s) {
            if r.len() >= 2
                && r[0] == "pipeline"
                && let Some(them) = order(&r[1])
                && them > me
                // The meter (the final hook) and the context are handed along by
                // every stage.
                && r[1] != "meter"
                && r[1] != "ctx"
                // respond reads what egress sent.
                && !(s.module[1] == "respond" && r[1] == "egress")
            {
                bad.push(format!(
                    "pipeline::{} imports later stage {}",
                    s.module[1], r[1]
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    // The checker itself: a graph with a circle is caught, one without is not.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert!(find_cycle(&g).is_none());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let s = Source {
        module: vec!["limits".into(), "admit".into()],
        code:
            "use super::Ticket; use crate::config::Deployment; use super::super::gateway::Gateway;"
                .into(),
    };
    let refs = references(&s);
    assert!(refs.contains(&vec!["limits".to_string(), "Ticket".to_string()]));
    assert!(refs.contains(&vec!["config".to_string(), "Deployment".to_string()]));
    assert!(refs.contains(&vec!["gateway".to_string(), "Gateway".to_string()]));
}
