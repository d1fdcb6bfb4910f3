//! The layering of `src/`: every module may use only modules of its own layer or below,
//! and no two modules use each other, directly or round a circle. The table here is
//! the one `lib.rs` and `ARCHITECTURE.md` describe; a new top-level module must be added
//! to it. Reads the sources as text: no build of the crate is needed to judge them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module and its layer; higher layers use lower ones, never the reverse.
const LAYERS: &[(&str, u8)] = &[
    // The commands: parse flags, wire everything, talk to the operator.
    ("main", 4),
    ("config", 4),
    ("run", 4),
    ("check", 4),
    ("audit", 4),
    // Long-running services of `run`.
    ("controller", 3),
    ("leader", 3),
    ("http", 3),
    // Pure decisions.
    ("plan", 2),
    // What a plan is made of, and what carries it out.
    ("params", 1),
    ("backend", 1),
    // Leaves.
    ("path", 0),
    ("units", 0),
    ("error", 0),
    ("metrics", 0),
    ("health", 0),
];

/// The top-level modules a source file names through `crate::` (or, in `main.rs`,
/// through the library's name), outside comments.
fn uses(source: &str, crate_name: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in [format!("{crate_name}::"), "crate::".to_string()] {
            let mut rest = code;
            while let Some(at) = rest.find(&prefix) {
                let before = rest[..at].chars().next_back();
                let after = &rest[at + prefix.len()..];
                rest = after;
                // `$crate::` in macros counts; `foo_crate::` or `mycrate::` does not.
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                if let Some(group) = after.strip_prefix('{') {
                    // `use crate::{a::b, c};` on one line.
                    let inner = group.split('}').next().unwrap_or("");
                    for item in inner.split(',') {
                        if let Some(name) = ident(item.trim()) {
                            found.insert(name);
                        }
                    }
                } else if let Some(name) = ident(after) {
                    found.insert(name);
                }
            }
        }
    }
    found.remove("self");
    found
}

fn ident(s: &str) -> Option<String> {
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `src/plan/record.rs` -> `plan`; `src/lib.rs` -> None (it only declares modules).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every violation in the edges `module -> modules it uses`: a module missing from the
/// table, a use of a higher layer, and circles among modules.
fn violations(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut out = Vec::new();
    for (from, tos) in edges {
        let Some(&mine) = layer.get(from.as_str()) else {
            out.push(format!("module {from} is not in the table of layers"));
            continue;
        };
        for to in tos.iter().filter(|t| *t != from) {
            match layer.get(to.as_str()) {
                None => out.push(format!("{from} uses {to}, which is not in the table")),
                Some(&theirs) if theirs > mine => out.push(format!(
                    "{from} (layer {mine}) uses {to} (layer {theirs}): dependencies point down"
                )),
                Some(_) => {}
            }
        }
    }
    // Circles within a layer: depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| *n == node) {
            out.push(format!("circle: {} -> {node}", stack[at..].join(" -> ")));
            return;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if next != node {
                visit(next, edges, stack, done, out);
            }
        }
        stack.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

fn edges_of(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, source) in files {
        let crate_name = if module == "main" {
            "nfs3_provisioner"
        } else {
            "crate"
        };
        edges
            .entry(module.clone())
            .or_default()
            .extend(uses(source, crate_name));
    }
    edges
}

#[test]
fn modules_depend_only_downwards_and_never_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .filter_map(|p| {
            let source = std::fs::read_to_string(p).expect("read source");
            Some((module_of(&src, p)?, source))
        })
        .collect();
    assert!(
        files.len() > 20,
        "found only {} source files under {}",
        files.len(),
        src.display()
    );
    let edges = edges_of(&files);
    // The reader must see the real imports, or this test could never fail.
    assert!(edges["controller"].contains("plan"), "{edges:?}");
    assert!(edges["main"].contains("run"), "{edges:?}");
    let found = violations(&edges);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn an_upward_import_and_a_circle_are_caught() {
    let files = [
        // A plan reaching up into the controller.
        (
            "plan".to_string(),
            "use crate::path::RelPath;\n    let r = crate::controller::name_of(&pv);\n".to_string(),
        ),
        ("controller".to_string(), "use crate::path;\n".to_string()),
        // Two commands that use each other.
        (
            "config".to_string(),
            "#[arg(value_parser = crate::audit::parse_age)]".to_string(),
        ),
        (
            "audit".to_string(),
            "use crate::{config::AuditArgs, units};".to_string(),
        ),
        // Commented out, so not a use.
        ("path".to_string(), "// see crate::plan".to_string()),
    ];
    let found = violations(&edges_of(&files));
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("plan (layer 2) uses controller (layer 3)")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("circle:") && v.contains("audit") && v.contains("config")),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{found:?}");
    // A module nobody put in the table.
    let found = violations(&edges_of(&[(
        "newthing".to_string(),
        "use crate::path;".to_string(),
    )]));
    assert_eq!(found, ["module newthing is not in the table of layers"]);
}
