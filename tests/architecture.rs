//! The house rules, checked on the crate's own sources (`src/`, read from the manifest's
//! directory, never from the working directory):
//!
//! * **no import cycle**: no file uses an item of a file that uses one of its own, directly or
//!   through others. An edge `A → B` means that `A` names an item *defined* in `B` (re-exports
//!   are followed to the defining file; a `pub use` itself, a module's face, is no edge); unit
//!   tests (`#[cfg(test)] mod … { … }`) are left out, as `tests/` is.
//!
//! * **the core below the application**: no file of the mathematical core (everything but
//!   `src/app/`, `src/python/`, `src/cli/` and `src/main.rs`) uses an item of those.
//! * **`unsafe` in one room**: only `src/linalg/threads/` (the team and the safe splitting of
//!   buffers among its pieces) and `src/linalg/simd.rs` (the vector-instruction dispatch) say
//!   `unsafe`; the numerics above them are safe Rust.
//!
//! * **files and functions a reader sees whole**: no file in `src/` over 800 lines, no function
//!   over 80 (unit tests aside), none with more than 5 parameters besides `self` (a settings
//!   struct or a tuple of what belongs together instead) — except the Python bindings, whose
//!   signatures are the Python API's keyword arguments.
//!
//! The reader is a small tokenizer for `use` trees and `crate::`/`super::`/`self::` paths, not a
//! Rust parser: enough for this crate's code, and checked by the tests at the bottom.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A module's path below the crate root (`["solve", "qp", "exact"]`).
type ModPath = Vec<String>;

/// One source file: its module path, tokens and what it defines, re-exports and uses.
struct File {
    name: String,
    module: ModPath,
    tokens: Vec<String>,
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `src/a/b.rs` (`a::b`), `src/a/mod.rs` (`a`), `src/lib.rs` (root).
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code without comments, string and character literals.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let (mut out, mut i) = (String::with_capacity(src.len()), 0);
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('#') || next == Some('"'))
            && !ident_char(b.get(i.wrapping_sub(1)))
        {
            // A raw string r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F}'), or a lifetime ('a), left as it is.
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else {
                (b.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Identifiers, `::` and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let b: Vec<char> = code.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        let c = b[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(b[start..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The tokens without `#[cfg(test)]` inline modules.
fn without_test_modules(t: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        let cfg_test = ["#", "[", "cfg", "(", "test", ")", "]"];
        if t[i..].starts_with(&cfg_test.map(String::from)) {
            let mut j = i + cfg_test.len();
            // Further attributes, then `pub`? `mod NAME {`.
            while t.get(j).is_some_and(|s| s == "#") {
                while t.get(j).is_some_and(|s| s != "]") {
                    j += 1;
                }
                j += 1;
            }
            if t.get(j).is_some_and(|s| s == "pub") {
                j += 1;
            }
            if t.get(j).is_some_and(|s| s == "mod") && t.get(j + 2).is_some_and(|s| s == "{") {
                let mut depth = 0;
                let mut k = j + 2;
                loop {
                    match t[k].as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                i = k + 1;
                continue;
            }
        }
        out.push(t[i].clone());
        i += 1;
    }
    out
}

/// A `use` tree flattened: each leaf's full path and the name it is known by (`None` for `*`).
fn use_tree(
    t: &[String],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let mut path = prefix.to_vec();
    loop {
        match t[*i].as_str() {
            "{" => {
                *i += 1;
                while t[*i] != "}" {
                    use_tree(t, i, &path, out);
                    if t[*i] == "," {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            "*" => {
                *i += 1;
                out.push((path, None));
                return;
            }
            "::" => *i += 1,
            seg => {
                path.push(seg.to_string());
                *i += 1;
                if t[*i] == "::" {
                    continue;
                }
                let mut name = seg.to_string();
                if t[*i] == "as" {
                    name = t[*i + 1].clone();
                    *i += 2;
                }
                if name == "self" {
                    path.pop();
                    name = path.last().cloned().unwrap_or_default();
                }
                out.push((path, Some(name)));
                return;
            }
        }
    }
}

/// What one file says: definitions, `use` leaves (with whether they are `pub`), and the
/// `crate::`/`super::`/`self::` or alias-led paths in its code.
#[derive(Default)]
struct Said {
    defines: BTreeSet<String>,
    uses: Vec<(Vec<String>, Option<String>, bool)>,
    paths: Vec<Vec<String>>,
}

fn read(file: &File) -> Said {
    let t = &file.tokens;
    let mut said = Said::default();
    let mut i = 0;
    while i < t.len() {
        let tok = t[i].as_str();
        if tok == "use" {
            let public = i > 0 && (t[i - 1] == "pub" || t[i - 1] == ")");
            let mut leaves = Vec::new();
            i += 1;
            use_tree(t, &mut i, &[], &mut leaves);
            for (p, n) in leaves {
                said.uses.push((p, n, public));
            }
            continue;
        }
        if matches!(
            tok,
            "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union" | "mod"
        ) && t
            .get(i + 1)
            .is_some_and(|s| s.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            said.defines.insert(t[i + 1].clone());
        }
        if tok == "macro_rules" {
            said.defines.insert(t[i + 2].clone());
        }
        if t.get(i + 1).is_some_and(|s| s == "::") && (i == 0 || t[i - 1] != "::") {
            let mut p = vec![t[i].clone()];
            let mut j = i + 1;
            while t.get(j).is_some_and(|s| s == "::") && t.get(j + 1).is_some() {
                p.push(t[j + 1].clone());
                j += 2;
            }
            said.paths.push(p);
            i = j;
            continue;
        }
        i += 1;
    }
    said
}

struct Crate {
    files: Vec<File>,
    said: Vec<Said>,
    by_module: HashMap<ModPath, usize>,
}

enum Target {
    Module(ModPath),
    Item(ModPath, String),
}

impl Crate {
    fn load(root: &Path) -> Self {
        let mut paths = Vec::new();
        sources(&root.join("src"), &mut paths);
        let files: Vec<File> = paths
            .iter()
            .filter(|p| !p.ends_with("src/main.rs"))
            .map(|p| {
                let rel = p.strip_prefix(root.join("src")).unwrap();
                let text = std::fs::read_to_string(p).unwrap();
                File {
                    name: format!("src/{}", rel.display()),
                    module: module_of(rel),
                    tokens: without_test_modules(tokenize(&strip(&text))),
                }
            })
            .collect();
        let said = files.iter().map(read).collect();
        let by_module = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        Self {
            files,
            said,
            by_module,
        }
    }

    /// The module a path starts from, and how many of its segments that took.
    fn start(
        &self,
        from: &ModPath,
        aliases: &HashMap<String, ModPath>,
        p: &[String],
    ) -> Option<(ModPath, usize)> {
        let mut m = from.clone();
        let mut i = 0;
        match p[0].as_str() {
            "crate" => {
                m.clear();
                i = 1;
            }
            "self" => i = 1,
            "super" => {
                while p.get(i).is_some_and(|s| s == "super") {
                    m.pop();
                    i += 1;
                }
            }
            other => {
                if let Some(a) = aliases.get(other) {
                    m = a.clone();
                    i = 1;
                } else {
                    let child = [from.clone(), vec![other.to_string()]].concat();
                    if self.by_module.contains_key(&child) {
                        m = child;
                        i = 1;
                    } else {
                        return None;
                    }
                }
            }
        }
        Some((m, i))
    }

    fn resolve(
        &self,
        from: &ModPath,
        aliases: &HashMap<String, ModPath>,
        p: &[String],
    ) -> Option<Target> {
        let (mut m, mut i) = self.start(from, aliases, p)?;
        while i < p.len() {
            let child = [m.clone(), vec![p[i].clone()]].concat();
            if self.by_module.contains_key(&child) {
                m = child;
                i += 1;
            } else {
                return Some(Target::Item(m, p[i].clone()));
            }
        }
        Some(Target::Module(m))
    }

    /// The file that defines `name` as seen from module `m` (following re-exports).
    fn defining(&self, m: &ModPath, name: &str, depth: usize) -> Option<usize> {
        let f = *self.by_module.get(m)?;
        if depth > 16 || self.said[f].defines.contains(name) {
            return Some(f);
        }
        for (p, n, public) in &self.said[f].uses {
            if *public && n.as_deref() == Some(name) {
                return match self.resolve(m, &HashMap::new(), p) {
                    Some(Target::Item(m2, n2)) => self.defining(&m2, &n2, depth + 1),
                    Some(Target::Module(m2)) => self.by_module.get(&m2).copied(),
                    None => Some(f),
                };
            }
        }
        Some(f)
    }

    /// `A → B` for every item of `B` that `A` names.
    fn edges(&self) -> BTreeMap<usize, BTreeSet<usize>> {
        let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (a, file) in self.files.iter().enumerate() {
            let said = &self.said[a];
            let mut aliases = HashMap::new();
            for (p, n, _) in &said.uses {
                if let (Some(Target::Module(m)), Some(n)) =
                    (self.resolve(&file.module, &HashMap::new(), p), n)
                {
                    aliases.insert(n.clone(), m);
                }
            }
            let mut targets = Vec::new();
            for (p, _, public) in &said.uses {
                if !public {
                    targets.push(self.resolve(&file.module, &HashMap::new(), p));
                }
            }
            for p in &said.paths {
                targets.push(self.resolve(&file.module, &aliases, p));
            }
            for t in targets.into_iter().flatten() {
                let b = match t {
                    Target::Item(m, name) => self.defining(&m, &name, 0),
                    Target::Module(_) => None,
                };
                if let Some(b) = b.filter(|&b| b != a) {
                    edges.entry(a).or_default().insert(b);
                }
            }
        }
        edges
    }

    /// Every cycle's files, as names (one representative path per strongly connected group).
    fn cycles(&self) -> Vec<Vec<String>> {
        let edges = self.edges();
        let n = self.files.len();
        let reach = |from: usize| -> BTreeSet<usize> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from];
            while let Some(v) = stack.pop() {
                for &w in edges.get(&v).into_iter().flatten() {
                    if seen.insert(w) {
                        stack.push(w);
                    }
                }
            }
            seen
        };
        let reaches: Vec<BTreeSet<usize>> = (0..n).map(reach).collect();
        let mut groups: Vec<Vec<String>> = Vec::new();
        let mut placed = BTreeSet::new();
        for v in 0..n {
            if placed.contains(&v) || !reaches[v].contains(&v) {
                continue;
            }
            let group: Vec<usize> = (0..n)
                .filter(|&w| reaches[v].contains(&w) && reaches[w].contains(&v))
                .collect();
            placed.extend(group.iter().copied());
            let names = group
                .iter()
                .map(|&w| {
                    let uses: Vec<&str> = edges[&w]
                        .iter()
                        .filter(|u| group.contains(u))
                        .map(|&u| self.files[u].name.as_str())
                        .collect();
                    format!("{} -> {}", self.files[w].name, uses.join(", "))
                })
                .collect();
            groups.push(names);
        }
        groups
    }
}

fn this_crate() -> Crate {
    Crate::load(Path::new(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let krate = this_crate();
    assert!(krate.files.len() > 40, "src/ was not read");
    let cycles = krate.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles (each line: a file -> the files of its cycle it uses):\n{}",
        cycles
            .iter()
            .map(|g| g.join("\n"))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

#[test]
fn the_core_never_imports_the_application() {
    let krate = this_crate();
    let app = |name: &str| {
        ["src/app/", "src/python/", "src/cli/"]
            .iter()
            .any(|p| name.starts_with(p))
    };
    let mut up = Vec::new();
    for (a, targets) in krate.edges() {
        let from = &krate.files[a].name;
        for b in targets {
            let to = &krate.files[b].name;
            if !app(from) && from != "src/lib.rs" && app(to) {
                up.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(up.is_empty(), "the core imports the application: {up:#?}");
}

#[test]
fn unsafe_lives_in_the_audited_room_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    sources(&root.join("src"), &mut paths);
    let room = |name: &str| name.starts_with("src/linalg/threads/") || name == "src/linalg/simd.rs";
    let mut outside = Vec::new();
    for p in &paths {
        let name = format!(
            "src/{}",
            p.strip_prefix(root.join("src")).unwrap().display()
        );
        let tokens = tokenize(&strip(&std::fs::read_to_string(p).unwrap()));
        let count = tokens.iter().filter(|t| *t == "unsafe").count();
        if count > 0 && !room(&name) {
            outside.push(format!("{name}: {count}"));
        }
    }
    assert!(
        outside.is_empty(),
        "`unsafe` outside the audited room: {outside:?}"
    );
}

/// Every function's length in lines: from its `fn` line to its closing brace, in code without
/// comments and strings, unit-test modules left out. `(name, first line, lines)`.
fn function_lengths(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if line.starts_with("#[cfg(test)]") {
            // Skip the attributed item (a test module or function) whole.
            i = item_end(&lines, i + 1) + 1;
            continue;
        }
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(k) = words.iter().position(|w| *w == "fn") {
            let before = &words[..k];
            let is_item = before.iter().all(|w| {
                matches!(
                    *w,
                    "pub" | "crate" | "super" | "const" | "unsafe" | "async" | "extern"
                )
            });
            if is_item && k + 1 < words.len() {
                let end = item_end(&lines, i);
                out.push((words[k + 1].to_string(), i + 1, end - i + 1));
                i += 1;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The line where the item starting at line `from` ends: its braces balanced (or its `;`).
fn item_end(lines: &[&str], from: usize) -> usize {
    let mut depth = 0i64;
    let mut opened = false;
    for (j, line) in lines.iter().enumerate().skip(from) {
        for c in line.chars() {
            match c {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        if opened && depth <= 0 {
            return j;
        }
        if !opened && line.trim_end().ends_with(';') {
            return j;
        }
    }
    lines.len() - 1
}

#[test]
fn files_and_functions_are_short_enough_to_read_whole() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    sources(&root.join("src"), &mut paths);
    let mut long = Vec::new();
    for p in &paths {
        let name = format!(
            "src/{}",
            p.strip_prefix(root.join("src")).unwrap().display()
        );
        let text = std::fs::read_to_string(p).unwrap();
        let lines = text.lines().count();
        if lines > 800 {
            long.push(format!("{name}: {lines} lines"));
        }
        for (f, at, n) in function_lengths(&strip(&text)) {
            if n > 80 {
                long.push(format!("{name}:{at}: fn {f}, {n} lines"));
            }
        }
    }
    assert!(long.is_empty(), "too long to read whole: {long:#?}");
}

/// Every function's parameters besides `self`: `(name, count)`, in code tokens.
fn parameter_counts(tokens: &[String]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        if tokens[i] != "fn" || i + 2 >= tokens.len() {
            continue;
        }
        let name = tokens[i + 1].clone();
        let mut j = i + 2;
        if tokens[j] == "<" {
            let mut depth = 0;
            while j < tokens.len() {
                match tokens[j].as_str() {
                    "<" => depth += 1,
                    ">" if tokens[j - 1] != "-" => depth -= 1,
                    _ => {}
                }
                j += 1;
                if depth == 0 {
                    break;
                }
            }
        }
        if tokens.get(j).is_none_or(|t| t != "(") {
            continue;
        }
        let (mut depth, mut params, mut current) = (0, Vec::new(), Vec::<&str>::new());
        for t in &tokens[j..] {
            match t.as_str() {
                "(" | "[" | "{" | "<" => depth += 1,
                ")" | "]" | "}" => depth -= 1,
                ">" if current.last() != Some(&"-") => depth -= 1,
                "," if depth == 1 => {
                    params.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                break;
            }
            if !(depth == 1 && t == "(" && current.is_empty() && params.is_empty()) {
                current.push(t);
            }
        }
        params.push(current);
        let count = params
            .iter()
            .filter(|p| !p.is_empty())
            .filter(|p| p.last() != Some(&"self"))
            .count();
        out.push((name, count));
    }
    out
}

#[test]
fn no_function_takes_more_than_five_parameters() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    sources(&root.join("src"), &mut paths);
    let mut many = Vec::new();
    for p in &paths {
        let name = format!(
            "src/{}",
            p.strip_prefix(root.join("src")).unwrap().display()
        );
        if name.starts_with("src/python/") {
            continue;
        }
        let tokens = without_test_modules(tokenize(&strip(&std::fs::read_to_string(p).unwrap())));
        for (f, n) in parameter_counts(&tokens) {
            if n > 5 {
                many.push(format!("{name}: fn {f}, {n} parameters"));
            }
        }
    }
    assert!(many.is_empty(), "more than 5 parameters: {many:#?}");
}

#[test]
fn parameters_are_counted_as_written() {
    let code = "fn a(&mut self, x: u8, (y, z): (u8, u8), f: impl Fn(u8) -> Vec<u8>,) {}\n\
                pub fn b<T: Into<Vec<u8>>>(t: T, u: HashMap<u8, u8>) -> u8 { 0 }\nfn c() {}";
    let got = parameter_counts(&tokenize(&strip(code)));
    let want = [("a", 3), ("b", 2), ("c", 0)].map(|(n, c)| (n.to_string(), c));
    assert_eq!(got, want);
}

#[test]
fn function_lengths_are_measured_outside_unit_tests() {
    let code = "pub(crate) fn a() {\n    x();\n}\n\n#[cfg(test)]\nmod tests {\n    fn long() {\n\n\n    }\n}\nfn b(\n    y: u8,\n) -> u8 {\n    y\n}\n";
    let got = function_lengths(code);
    assert_eq!(got, vec![("a".into(), 1, 3), ("b".into(), 12, 5)]);
}

/// The reader on small made-up crates: a cycle through a re-export is found, a face is no
/// edge, comments, strings and unit tests are not read.
#[test]
fn the_reader_finds_cycles_through_re_exports_and_ignores_faces() {
    let file = |name: &str, module: &[&str], text: &str| File {
        name: name.into(),
        module: module.iter().map(|s| s.to_string()).collect(),
        tokens: without_test_modules(tokenize(&strip(text))),
    };
    let krate = |files: Vec<File>| {
        let said = files.iter().map(read).collect();
        let by_module = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        Crate {
            files,
            said,
            by_module,
        }
    };
    let face = "mod a; mod b; pub use a::{Alpha, alpha as first}; pub use b::Beta;";
    // b uses a through the face, a uses b directly: a cycle.
    let cyclic = krate(vec![
        file("m/mod.rs", &["m"], face),
        file(
            "m/a.rs",
            &["m", "a"],
            "pub struct Alpha; fn f() { super::b::Beta::new(); }",
        ),
        file("m/b.rs", &["m", "b"], "use super::Alpha; pub struct Beta;"),
    ]);
    assert_eq!(cyclic.cycles().len(), 1, "{:?}", cyclic.cycles());
    // Only b uses a (through the face, renamed), a's mentions of b are in a comment, a string
    // and its unit tests: no cycle.
    let layered = krate(vec![
        file("m/mod.rs", &["m"], face),
        file(
            "m/a.rs",
            &["m", "a"],
            "pub struct Alpha; pub fn alpha() {} // super::b::Beta\n\
             const S: &str = \"super::b::Beta\"; const R: &str = r#\"crate::m::b::Beta\"#;\n\
             #[cfg(test)] mod tests { use super::super::b::Beta; }",
        ),
        file(
            "m/b.rs",
            &["m", "b"],
            "use super::first; pub struct Beta; fn g() -> char { first(); '{' }",
        ),
    ]);
    assert!(layered.cycles().is_empty(), "{:?}", layered.cycles());
    let edges = layered.edges();
    assert_eq!(
        edges.get(&2),
        Some(&BTreeSet::from([1])),
        "b -> a through the face"
    );
    assert!(!edges.contains_key(&0), "the face is no edge");
}
