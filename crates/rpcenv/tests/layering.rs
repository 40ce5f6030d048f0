//! The layer check: every `crate::` path in the sources of `rpcenv` and `rpcenv-transport`
//! (in `use` lines, nested groups included, and inline), resolved through the crate root's
//! re-exports to the module that defines it, must point to the importing module's own layer or
//! a lower one, and the modules must not import each other in a cycle.
//!
//! The layers are read from the table in the repository's `ARCHITECTURE.md`, so that the
//! document and the check cannot drift apart. Comments (doc links included) and string
//! literals are not imports and are skipped; `super::` paths stay inside one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer table of one crate: module -> layer number.
type Layers = BTreeMap<String, u32>;

/// Reads the layer table rows (`| crate | layer | name | modules |`) of `markdown`.
fn parse_layer_table(markdown: &str) -> BTreeMap<String, Layers> {
    let mut crates: BTreeMap<String, Layers> = BTreeMap::new();
    for line in markdown.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 4 {
            continue;
        }
        let Ok(layer) = cells[1].parse::<u32>() else {
            continue;
        };
        let layers = crates.entry(cells[0].to_string()).or_default();
        for module in cells[3].split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let previous = layers.insert(module.to_string(), layer);
            assert!(
                previous.is_none(),
                "module {module} of {} is listed twice",
                cells[0]
            );
        }
    }
    crates
}

/// `source` without comments, string literals and character literals (each replaced by a
/// space), so that only code is searched for paths.
fn strip_comments_and_strings(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or else a lifetime (kept).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(' ');
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(' ');
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (is_ident_char(chars[i - 1]) || chars[i - 1] == '$')
}

/// The first segment after `crate::` of every path in `code` (comments and strings stripped);
/// a group (`crate::{a::X, b::{Y, Z}}`) yields the first segment of each of its branches.
fn crate_paths(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&chars, i, "crate") {
        i = at + "crate".len();
        let boundary_after = chars.get(i).is_none_or(|c| !is_ident_char(*c));
        if ident_before(&chars, at) || !boundary_after {
            continue;
        }
        let mut j = skip_ws(&chars, i);
        if !(chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':')) {
            continue;
        }
        j = skip_ws(&chars, j + 2);
        first_segments(&chars, j, &mut found);
    }
    found
}

fn find(chars: &[char], from: usize, needle: &str) -> Option<usize> {
    let needle: Vec<char> = needle.chars().collect();
    (from..chars.len().saturating_sub(needle.len() - 1))
        .find(|&k| chars[k..k + needle.len()] == needle[..])
}

fn skip_ws(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// Collects the first segment of the use tree at `i`: an identifier, or each branch of a group.
fn first_segments(chars: &[char], i: usize, found: &mut Vec<String>) {
    if chars.get(i) == Some(&'{') {
        // Split the group at its top-level commas.
        let mut depth = 0;
        let mut start = i + 1;
        let mut k = i;
        while k < chars.len() {
            match chars[k] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        first_segments(chars, skip_ws(chars, start), found);
                        return;
                    }
                }
                ',' if depth == 1 => {
                    first_segments(chars, skip_ws(chars, start), found);
                    start = k + 1;
                }
                _ => {}
            }
            k += 1;
        }
        return;
    }
    let end = (i..chars.len())
        .find(|&k| !is_ident_char(chars[k]))
        .unwrap_or(chars.len());
    if end > i {
        found.push(chars[i..end].iter().collect());
    }
}

/// The names a crate root re-exports (`pub use module::{A, B as C}`), mapped to their module.
fn root_reexports(lib_code: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib_code.split(';') {
        let statement = statement.trim();
        let Some(tree) = statement
            .strip_prefix("pub use ")
            .or_else(|| statement.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let tree = tree.trim().trim_start_matches("crate::");
        let Some((module, rest)) = tree.split_once("::") else {
            continue;
        };
        let rest = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in rest.split(',') {
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item).trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                names.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    names
}

/// One crate's sources: module (the file's top-level module: `src/env/api.rs` is `env`, `src/lib.rs`
/// is `lib`) -> the code of each of its files.
type Sources = BTreeMap<String, Vec<String>>;

fn read_sources(src: &Path) -> Sources {
    let mut sources = Sources::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let first = relative
                .components()
                .next()
                .expect("a file name")
                .as_os_str()
                .to_string_lossy()
                .to_string();
            let module = first.trim_end_matches(".rs").to_string();
            let code = std::fs::read_to_string(&path).expect("a readable source file");
            sources.entry(module).or_default().push(code);
        }
    }
    sources
}

/// Everything wrong with `sources` against `layers`: unlisted or missing modules, imports from
/// a higher layer, and import cycles.
fn check(crate_name: &str, sources: &Sources, layers: &Layers) -> Vec<String> {
    let mut problems = Vec::new();
    for module in sources.keys() {
        if !layers.contains_key(module) {
            problems.push(format!(
                "{crate_name}: module `{module}` is in no layer of ARCHITECTURE.md"
            ));
        }
    }
    for module in layers.keys() {
        if !sources.contains_key(module) {
            problems.push(format!(
                "{crate_name}: ARCHITECTURE.md lists `{module}`, which does not exist"
            ));
        }
    }
    let reexports = sources
        .get("lib")
        .map(|files| root_reexports(&strip_comments_and_strings(&files.join("\n"))))
        .unwrap_or_default();
    let mut graph: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, files) in sources {
        let Some(&own) = layers.get(module) else {
            continue;
        };
        for code in files {
            for first in crate_paths(&strip_comments_and_strings(code)) {
                let target = if sources.contains_key(&first) {
                    first.clone()
                } else if let Some(origin) = reexports.get(&first) {
                    origin.clone()
                } else {
                    // Defined in the crate root itself (or `crate::self`).
                    "lib".to_string()
                };
                if &target == module {
                    continue;
                }
                let Some(&theirs) = layers.get(&target) else {
                    continue;
                };
                if theirs > own {
                    problems.push(format!(
                        "{crate_name}: `{module}` (layer {own}) imports `crate::{first}` from `{target}` (layer {theirs}), a layer above its own"
                    ));
                }
                graph.entry(module).or_default().insert(target);
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!(
            "{crate_name}: modules import each other in a cycle: {}",
            cycle.join(" -> ")
        ));
    }
    problems
}

/// A cycle of `graph`, if it has one (depth-first search).
fn find_cycle(graph: &BTreeMap<&str, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The layer table of ARCHITECTURE.md.
fn architecture_layers() -> BTreeMap<String, Layers> {
    let path = repository_root().join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_layer_table(&text)
}

#[test]
fn both_crates_import_only_from_their_own_layer_or_below() {
    let table = architecture_layers();
    let mut problems = Vec::new();
    for (crate_name, dir) in [
        ("rpcenv", "crates/rpcenv/src"),
        ("transport", "crates/transport/src"),
    ] {
        let layers = table
            .get(crate_name)
            .unwrap_or_else(|| panic!("ARCHITECTURE.md has no layer table rows for {crate_name}"));
        let sources = read_sources(&repository_root().join(dir));
        problems.extend(check(crate_name, &sources, layers));
    }
    assert!(
        problems.is_empty(),
        "layer rule broken:\n{}",
        problems.join("\n")
    );
}

/// A synthetic crate: `low` (layer 0) and `high` (layer 1), with a root that re-exports.
fn synthetic(low: &str, high: &str) -> Vec<String> {
    let table = "| crate | layer | name | modules |\n|---|---|---|---|\n\
                 | demo | 0 | core | low |\n| demo | 1 | top | high |\n| demo | 2 | root | lib |\n";
    let layers = parse_layer_table(table)
        .remove("demo")
        .expect("the demo rows");
    let sources: Sources = [
        (
            "lib",
            "mod high;\nmod low;\npub use high::{Thing, Other as Renamed};\n",
        ),
        ("low", low),
        ("high", high),
    ]
    .into_iter()
    .map(|(m, code)| (m.to_string(), vec![code.to_string()]))
    .collect();
    check("demo", &sources, &layers)
}

#[test]
fn the_checker_accepts_downward_imports() {
    let problems = synthetic(
        "pub struct Base;\n",
        "use crate::low::Base;\npub struct Thing(Base);\npub struct Other;\n",
    );
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn the_checker_catches_an_upward_use_line() {
    let problems = synthetic("use crate::high::Thing;\n", "pub struct Thing;\n");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`low` (layer 0) imports `crate::high`")),
        "{problems:?}"
    );
}

#[test]
fn the_checker_catches_an_upward_import_in_a_nested_group() {
    let problems = synthetic(
        "use crate::{\n    low::X,\n    high::{self, Thing},\n};\n",
        "pub struct Thing;\n",
    );
    assert!(
        problems.iter().any(|p| p.contains("imports `crate::high`")),
        "{problems:?}"
    );
}

#[test]
fn the_checker_catches_an_upward_import_through_a_root_reexport() {
    let problems = synthetic(
        "fn f() -> crate::Renamed { Renamed }\n",
        "pub struct Other;\n",
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("imports `crate::Renamed` from `high`")),
        "{problems:?}"
    );
}

#[test]
fn the_checker_ignores_comments_and_strings_but_catches_cycles_and_unlisted_modules() {
    let problems = synthetic(
        "/// See [`x`](crate::high::Thing).\nconst S: &str = \"crate::high\"; // crate::high\nconst C: char = '\"';\n",
        "pub struct Thing;\n",
    );
    assert!(problems.is_empty(), "{problems:?}");
    let table = "| demo | 0 | core | a, b |\n";
    let layers = parse_layer_table(table)
        .remove("demo")
        .expect("the demo row");
    let sources: Sources = [
        ("a", "use crate::b::B;\npub struct A;\n"),
        ("b", "use crate::a::A;\npub struct B;\n"),
        ("c", "pub struct C;\n"),
    ]
    .into_iter()
    .map(|(m, code)| (m.to_string(), vec![code.to_string()]))
    .collect();
    let problems = check("demo", &sources, &layers);
    assert!(
        problems.iter().any(|p| p.contains("cycle: a -> b -> a")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("`c` is in no layer")),
        "{problems:?}"
    );
}
