//! The top-level modules form layers: each may use only the modules to its
//! left in [`LAYERS`], so there is no cycle between them and a new
//! dependency that would make one fails here, naming the file and line.
//!
//! Every file under `src/` is read as text: comments and literals are
//! blanked, then every `crate::` path (`use crate::{a, b::c}` groups too)
//! and every `super::` chain that climbs to the crate root is resolved to
//! the top-level module it names. `main.rs` may use anything; `lib.rs` only
//! declares the modules.

use std::fs;
use std::path::{Path, PathBuf};

/// Left to right: a module may use those before it, never those after.
const LAYERS: &[&str] = &[
    "model",
    "metrics",
    "wire",
    "user_counts",
    "store",
    "auth",
    "hub",
    "capacity",
    "ws",
    "config",
    "app",
    "http",
    "server",
];

/// One `crate::<module>` use found in a file.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    line: usize,
    module: String,
}

#[test]
fn every_module_uses_only_the_layers_to_its_left() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let Some((module, depth)) = module_of(relative) else {
            continue;
        };
        let Some(layer) = LAYERS.iter().position(|&m| m == module) else {
            offences.push(format!(
                "src/{}: top-level module `{module}` is not in LAYERS; place it there",
                relative.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        for reference in references(&text, depth) {
            let allowed = LAYERS[..=layer].contains(&reference.module.as_str());
            if !allowed {
                let place = match LAYERS.iter().position(|&m| m == reference.module) {
                    Some(_) => "a layer to its right",
                    None => "not in LAYERS",
                };
                offences.push(format!(
                    "src/{}:{}: `{module}` uses `crate::{}` ({place})",
                    relative.display(),
                    reference.line,
                    reference.module
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "module layering broken (allowed: each uses only those to its left in {LAYERS:?}):\n{}",
        offences.join("\n")
    );
}

#[test]
fn every_layer_is_a_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in LAYERS {
        assert!(
            src.join(format!("{module}.rs")).is_file() || src.join(module).join("mod.rs").is_file(),
            "LAYERS names `{module}`, which src/ does not have"
        );
    }
}

/// The checker itself: what it must find and what it must not.
#[test]
fn references_are_found_in_every_form() {
    let text = r#"
use crate::model::UserId;
use crate::{hub::Hub, store::{self, Store}, wire};
use super::Thing;
// use crate::http::Commented;
/// [`Link`](crate::app::App)
const S: &str = "crate::server";
const R: &str = r"crate::server";
fn f<'a>(x: &'a str) -> char { let _ = crate::ws::session::run; 'c' }
mod tests {
    use super::*;
    use super::super::config::Config;
}
"#;
    let found = references(text, 1);
    let found: Vec<(usize, &str)> = found.iter().map(|r| (r.line, r.module.as_str())).collect();
    assert_eq!(
        found,
        [
            (2, "model"),
            (3, "hub"),
            (3, "store"),
            (3, "wire"),
            (4, "Thing"),
            (9, "ws"),
            (12, "config"),
        ]
    );
    // Below the top level, one `super` stays inside the module.
    assert_eq!(references("use super::frame;", 2), []);
    assert_eq!(
        references("use super::super::app::App;", 2),
        [Reference {
            line: 1,
            module: "app".into()
        }]
    );
}

/// Every `.rs` file under `dir`, sorted so failures read the same each run.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to and the file's module depth
/// (`model.rs` and `hub/mod.rs` are 1, `hub/shard.rs` is 2); `None` for
/// the crate roots.
fn module_of(relative: &Path) -> Option<(String, usize)> {
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.len() == 1 && (parts[0] == "main.rs" || parts[0] == "lib.rs") {
        return None;
    }
    let top = parts[0].trim_end_matches(".rs").to_string();
    let depth = if parts.last().is_some_and(|p| p == "mod.rs") {
        parts.len() - 1
    } else {
        parts.len()
    };
    Some((top, depth))
}

/// The top-level modules `text` names, for a file at module depth `depth`.
fn references(text: &str, depth: usize) -> Vec<Reference> {
    let code = blank_comments_and_literals(text);
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    // Braces opened so far, each marked whether it opened an inline `mod`.
    let mut braces: Vec<bool> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if !code.is_char_boundary(at) {
            at += 1;
            continue;
        }
        let rest = &code[at..];
        match bytes[at] {
            b'{' => {
                braces.push(opens_module(&code[..at]));
                at += 1;
                continue;
            }
            b'}' => {
                braces.pop();
                at += 1;
                continue;
            }
            _ => {}
        }
        let starts_word = at == 0 || !is_ident(bytes[at - 1]) && bytes[at - 1] != b'$';
        // Whether a path starts here that names a top-level module, and
        // where the module's name begins.
        let (names_top, end) = if !starts_word {
            (false, at + 1)
        } else if rest.starts_with("crate::") {
            (true, at + "crate::".len())
        } else if rest.starts_with("super::") {
            let mut supers = 0;
            let mut end = at;
            while code[end..].starts_with("super::") {
                supers += 1;
                end += "super::".len();
            }
            let inline = braces.iter().filter(|&&module| module).count();
            (supers >= depth + inline, end)
        } else {
            (false, at + 1)
        };
        if names_top {
            for module in first_segments(&code[end..]) {
                found.push(Reference {
                    line: line_of(at),
                    module,
                });
            }
        }
        at = end;
    }
    found
}

/// Whether the `{` after `before` opens an inline module (`mod name {`).
fn opens_module(before: &str) -> bool {
    let words: Vec<&str> = before.split_whitespace().rev().take(2).collect();
    matches!(words.as_slice(), [name, "mod"] if name.bytes().all(is_ident))
}

/// The first segment of a path, or of each path in a `{…}` group.
fn first_segments(path: &str) -> Vec<String> {
    let path = path.trim_start();
    if let Some(group) = path.strip_prefix('{') {
        let mut segments = Vec::new();
        let mut nesting = 0;
        let mut item_start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => nesting += 1,
                '}' if nesting == 0 => break,
                '}' => nesting -= 1,
                ',' if nesting == 0 => item_start = true,
                c if item_start && !c.is_whitespace() => {
                    item_start = false;
                    let ident: String = group[i..]
                        .chars()
                        .take_while(|&c| c.is_ascii_alphanumeric() || c == '_')
                        .collect();
                    if !ident.is_empty() && ident != "self" {
                        segments.push(ident);
                    }
                }
                _ => {}
            }
        }
        segments
    } else {
        let ident: String = path
            .chars()
            .take_while(|&c| c.is_ascii_alphanumeric() || c == '_')
            .collect();
        if ident.is_empty() || ident == "self" {
            Vec::new()
        } else {
            vec![ident]
        }
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `text` with comments, strings and char literals replaced by spaces
/// (newlines kept, so lines still count), leaving only code.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut nesting = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    nesting += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    nesting -= 1;
                    out.push_str("  ");
                    i += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(chars[i - 1] as u8))
        {
            // A raw string: r"…", r#"…"#; `r#ident` is a raw identifier.
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let mut k = j + 1;
            while k < chars.len() && !chars[k..].starts_with(&close) {
                k += 1;
            }
            let end = (k + close.len()).min(chars.len());
            for &c in &chars[i..end] {
                blank(&mut out, c);
            }
            i = end;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            blank(&mut out, c);
            i += 1;
            if chars.get(i) == Some(&'\\') {
                blank(&mut out, '\\');
                i += 1;
            }
            while i < chars.len() && chars[i] != '\'' {
                blank(&mut out, chars[i]);
                i += 1;
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}
