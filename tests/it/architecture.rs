//! The layout the README describes, held by the code: no import cycle between the crate's
//! top-level modules, nothing below the HTTP edge that knows an HTTP server type, and the
//! application state known only to the edges and the job runners. Read from the source, so a
//! change that breaks the rule fails here with the file and the line that does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, or `dir.rs` itself.
fn files_of(module: &Path) -> Vec<PathBuf> {
    if module.is_dir() {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(module).unwrap() {
            out.extend(files_of(&entry.unwrap().path()));
        }
        out
    } else if module.extension().is_some_and(|e| e == "rs") {
        vec![module.to_owned()]
    } else {
        Vec::new()
    }
}

/// The code of a file without its unit tests (tests may reach anywhere) and without comments.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules: `src/x.rs` and `src/x/`, but not the crate's root files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        out.insert(name, files_of(&path));
    }
    out
}

/// The top-level modules a piece of code names: `crate::x`, and each name in `use crate::{x, y}`.
fn named_modules(code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                found.insert(name);
            }
        } else {
            found.insert(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    found.retain(|m| known.contains(m));
    found
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph() -> Graph {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for file in files {
                deps.extend(named_modules(&code_of(file), &known));
            }
            deps.remove(name);
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle of the graph, if it has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_import_each_other_one_way() {
    let graph = graph();
    for expected in ["api", "calls", "domain", "jobs", "sandbox", "store", "telephony", "webhooks"] {
        assert!(graph.contains_key(expected), "no module {expected}: {graph:?}");
    }
    // The graph is real: the calls service uses the store, and the API the calls service.
    assert!(graph["calls"].contains("store") && graph["api"].contains("calls"), "{graph:?}");
    assert_eq!(find_cycle(&graph), None, "an import cycle between top-level modules; the graph: {graph:#?}");
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let graph: Graph = [("a", &["b"][..]), ("b", &["c"][..]), ("c", &["a"][..]), ("d", &[][..])]
        .into_iter()
        .map(|(n, deps)| (n.to_owned(), deps.iter().map(|d| d.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let acyclic: Graph = graph.into_iter().filter(|(n, _)| n != "c").collect();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn use_groups_name_every_module_they_import() {
    let known: BTreeSet<String> = ["calls", "store", "jobs"].iter().map(|s| s.to_string()).collect();
    let found = named_modules("use crate::{calls::News, store::Tx};\nlet x = crate::jobs::backoff(1);", &known);
    assert_eq!(found, known);
}

/// The modules below the HTTP edge, and the outbound side of `telephony`.
fn below_the_edge() -> Vec<PathBuf> {
    let src = src();
    let mut files = Vec::new();
    for module in ["calls", "domain", "jobs", "store", "webhooks"] {
        let dir = src.join(module);
        files.extend(files_of(&if dir.is_dir() { dir } else { src.join(format!("{module}.rs")) }));
    }
    for outbound in ["mod.rs", "account.rs", "outbound.rs", "twilio.rs", "vonage.rs"] {
        files.push(src.join("telephony").join(outbound));
    }
    files
}

#[test]
fn nothing_below_the_http_edge_knows_an_http_server_type() {
    let files = below_the_edge();
    assert!(files.len() > 15, "{files:?}");
    let mut offences = Vec::new();
    for file in &files {
        for (n, line) in code_of(file).lines().enumerate() {
            for forbidden in ["axum::", "crate::error", "ApiError", "IntoResponse", "tower_http", "hyper::"] {
                if line.contains(forbidden) {
                    offences.push(format!("{}:{}: {forbidden}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "HTTP server types below the edge:\n{}", offences.join("\n"));
}

#[test]
fn the_application_state_is_known_only_to_the_edges_and_the_job_runners() {
    let mut offences = Vec::new();
    for file in below_the_edge() {
        // The outbound job runners run with the application state, as the API does.
        if file.ends_with("telephony/outbound.rs") {
            continue;
        }
        for (n, line) in code_of(&file).lines().enumerate() {
            if line.contains("AppState") {
                offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offences.is_empty(), "the application state below the edge:\n{}", offences.join("\n"));
}

/// The places in `files` whose code (unit tests aside) starts a conversation engine.
fn engine_starts(files: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        for (n, line) in code_of(file).lines().enumerate() {
            if line.contains("engine::run(") || line.contains("engine::run)") {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn only_the_session_layer_starts_conversations() {
    let session = files_of(&src().join("session"));
    assert!(!engine_starts(&session).is_empty(), "the session layer starts the engine somewhere");
    let elsewhere: Vec<PathBuf> = modules()
        .into_iter()
        .filter(|(name, _)| name != "session" && name != "conversation")
        .flat_map(|(_, files)| files)
        .chain([src().join("lib.rs"), src().join("main.rs")])
        .collect();
    let offences = engine_starts(&elsewhere);
    assert!(offences.is_empty(), "a conversation started outside src/session/:\n{}", offences.join("\n"));
}
