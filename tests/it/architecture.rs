//! The layout the README describes, held by the code: no import cycle between the crate's
//! top-level modules, nothing below the HTTP edge that knows an HTTP server type, the application
//! state known only to the edges and the job runners, and the conversation engine a leaf that
//! imports nothing above it. Read from the source, so a change that breaks the rule fails here
//! with the file and the line that does.

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

/// The code of a file without its unit tests (tests may reach anywhere) and with its comments
/// blanked, so that its lines keep their numbers.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut].lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n")
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
    let mut found: BTreeSet<String> = names_by_line(code, 0).into_iter().map(|(_, name)| name).collect();
    found.retain(|m| known.contains(m));
    found
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Each name of the crate's root a piece of code uses, with its line (from 1): `crate::x`, each
/// `x` of `use crate::{x::{…}, y}`, and `super::super::x` where that many `super`s climb from a
/// module `depth` below the root (1 for `src/x.rs` and `src/x/mod.rs`, 2 for `src/x/y.rs`…).
fn names_by_line(code: &str, depth: usize) -> Vec<(usize, String)> {
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let name_at = |at: usize| code[at..].chars().take_while(|&c| is_name_char(c)).collect::<String>();
    let starts_a_path = |at: usize| !code[..at].ends_with(is_name_char) && !code[..at].ends_with("::");
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::").filter(|(i, _)| starts_a_path(*i)) {
        let after = i + "crate::".len();
        if !code[after..].starts_with('{') {
            found.push((line_of(after), name_at(after)));
            continue;
        }
        // A group's items at its own level: `x` in `x::{y, z}`, never `y` or `z`.
        let (mut nesting, mut expecting) = (0, true);
        for (j, c) in code[after + 1..].char_indices() {
            let at = after + 1 + j;
            match c {
                '{' => nesting += 1,
                '}' if nesting == 0 => break,
                '}' => nesting -= 1,
                ',' if nesting == 0 => expecting = true,
                c if expecting && nesting == 0 && is_name_char(c) => {
                    found.push((line_of(at), name_at(at)));
                    expecting = false;
                }
                _ => {}
            }
        }
    }
    if depth > 0 {
        let climb = "super::".repeat(depth);
        for (i, _) in code.match_indices(&climb).filter(|(i, _)| starts_a_path(*i)) {
            let after = i + climb.len();
            // More `super`s than that do not compile; fewer stay inside the module.
            if !code[after..].starts_with("super::") {
                found.push((line_of(after), name_at(after)));
            }
        }
    }
    found.retain(|(_, name)| !name.is_empty());
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
            if ["engine::run(", "engine::run)", "engine::run_from("].iter().any(|start| line.contains(start)) {
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

/// The top-level modules the conversation engine may not import: it is a leaf under everything
/// that runs a call (the HTTP edge, carriers, the session, the sandbox), knows no settings of the
/// command line, and neither stores nor queues anything.
const ABOVE_THE_CONVERSATION: [&str; 9] =
    ["api", "telephony", "webhooks", "store", "config", "session", "sandbox", "calls", "jobs"];

/// How far below the crate's root a file's module is: 1 for `src/x.rs` and `src/x/mod.rs`.
fn depth_of(file: &Path) -> usize {
    let below = file.strip_prefix(src()).unwrap().components().count();
    if file.ends_with("mod.rs") {
        below - 1
    } else {
        below
    }
}

/// Each line of `code` that imports one of `forbidden`: `line: module`.
fn imports_of(code: &str, depth: usize, forbidden: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = code.lines().collect();
    names_by_line(code, depth)
        .into_iter()
        .filter(|(_, name)| forbidden.contains(&name.as_str()))
        .map(|(line, name)| format!("{line}: {name}: {}", lines[line - 1].trim()))
        .collect()
}

#[test]
fn the_conversation_imports_nothing_above_it() {
    let files = files_of(&src().join("conversation"));
    assert!(files.len() > 30, "{files:?}");
    let mut offences = Vec::new();
    for file in &files {
        for offence in imports_of(&code_of(file), depth_of(file), &ABOVE_THE_CONVERSATION) {
            offences.push(format!("{}:{offence}", file.display()));
        }
    }
    assert!(offences.is_empty(), "the conversation imports from above it:\n{}", offences.join("\n"));
}

#[test]
fn an_import_from_above_the_conversation_is_found_with_its_line() {
    let code = "use super::audio::Encoding;\n\
                use crate::{domain::phone::PhoneNumber,\n    config::{ConversationArgs, ServeArgs}, egress};\n\
                let client = crate::egress::client(false, timeout);\n\
                let row: crate::store::calls::CallRow = todo!();\n\
                use super::super::webhooks::Webhooks;\n\
                use super::super::domain::call::Stage;\n\
                use vocode_crate::api::Thing;\n";
    let found = imports_of(code, 2, &ABOVE_THE_CONVERSATION);
    let lines: Vec<&str> = found.iter().map(|f| &f[..f.find(": ").unwrap()]).collect();
    assert_eq!(lines, ["3", "5", "6"], "{found:#?}");
    assert!(found[0].starts_with("3: config: ") && found[1].starts_with("5: store: "), "{found:#?}");
    assert!(found[2].starts_with("6: webhooks: use super::super::webhooks::Webhooks;"), "{found:#?}");
    // From a module one level down, two `super`s would not compile; one stays in the module.
    assert!(imports_of("use super::webhooks::x;", 2, &ABOVE_THE_CONVERSATION).is_empty());
    assert_eq!(
        imports_of("use super::webhooks::x;", 1, &ABOVE_THE_CONVERSATION),
        ["1: webhooks: use super::webhooks::x;"]
    );
}
