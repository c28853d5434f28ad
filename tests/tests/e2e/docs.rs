//! The documentation stays true to the repository: every relative link
//! points to a file that exists, and every key of the configuration file is
//! described in `docs/configuration.md`, and the layout in
//! `docs/architecture.md` names files that exist.

use std::path::{Path, PathBuf};

/// The markdown files of the documentation, relative to the workspace root.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "CHANGELOG.md", "tests/README.md"].iter().map(PathBuf::from).collect();
    let docs = root.join("docs");
    let entries = std::fs::read_dir(&docs).unwrap_or_else(|err| panic!("reading {}: {err}", docs.display()));
    let mut pages: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap_or_else(|err| panic!("listing {}: {err}", docs.display())).path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| PathBuf::from("docs").join(path.file_name().expect("a directory entry has a name")))
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "no markdown file in {}", docs.display());
    files.extend(pages);
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// A line with its inline code spans (between backticks) blanked out, so
/// that code such as `a[i](x)` is never taken for a link.
fn without_code_spans(line: &str) -> String {
    line.split('`').enumerate().map(|(i, part)| if i % 2 == 0 { part } else { "" }).collect::<Vec<_>>().join("`")
}

/// The targets of the inline links `[text](target)` of a markdown text,
/// outside fenced code blocks, each with its line number.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            // `[text](target "title")` and `[text](<target>)`: the target alone.
            let target = after[..end].split_whitespace().next().unwrap_or_default();
            let target = target.trim_start_matches('<').trim_end_matches('>');
            targets.push((number + 1, target.to_owned()));
            rest = &after[end + 1..];
        }
    }
    targets
}

#[test]
fn every_relative_link_in_the_docs_points_to_an_existing_file() {
    let root = evogate_e2e::workspace_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files(&root) {
        let path = root.join(&file);
        let dir = path.parent().expect("a markdown file lies in a directory");
        for (line, target) in link_targets(&read(&path)) {
            let external = ["http://", "https://", "mailto:"].iter().any(|scheme| target.starts_with(scheme));
            if external || target.is_empty() || target.starts_with('#') {
                continue;
            }
            let relative = target.split('#').next().unwrap_or_default();
            checked += 1;
            if !dir.join(relative).exists() {
                broken.push(format!("{}:{line}: {target}", file.display()));
            }
        }
    }
    assert!(checked > 0, "no relative link found: the link parser is broken");
    assert!(broken.is_empty(), "{} broken link(s):\n{}", broken.len(), broken.join("\n"));
}

/// A struct deriving `Deserialize`: its name and its fields, each as
/// (name, type), leaving out fields that exist only with the
/// `fault-injection` feature.
type DeserializeStruct = (String, Vec<(String, String)>);

/// The structs deriving `Deserialize` in one Rust source file.
fn deserialize_structs(source: &str) -> Vec<DeserializeStruct> {
    let mut structs = Vec::new();
    let mut attributes: Vec<&str> = Vec::new();
    let mut current: Option<DeserializeStruct> = None;
    for line in source.lines() {
        let trimmed = line.trim();
        if let Some((name, fields)) = current.as_mut() {
            // rustfmt puts a struct's closing brace alone at the start of a line.
            if line == "}" {
                structs.push((std::mem::take(name), std::mem::take(fields)));
                current = None;
                attributes.clear();
            } else if trimmed.starts_with("#[") {
                attributes.push(trimmed);
            } else if let Some((field, ty)) = field_declaration(trimmed) {
                // Fault-injection-only fields, and fields serde never reads (not keys), are left out.
                let left_out =
                    |attr: &&str| attr.contains("feature = \"fault-injection\"") || *attr == "#[serde(skip)]";
                if !attributes.iter().any(left_out) {
                    fields.push((field.to_owned(), ty.to_owned()));
                }
                attributes.clear();
            }
            continue;
        }
        if trimmed.starts_with("#[") {
            attributes.push(trimmed);
        } else if let Some(name) = trimmed.strip_prefix("pub struct ") {
            let name = name.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default();
            let derives_deserialize =
                attributes.iter().any(|attr| attr.starts_with("#[derive(") && attr.contains("Deserialize"));
            if derives_deserialize && trimmed.ends_with('{') {
                current = Some((name.to_owned(), Vec::new()));
            }
            attributes.clear();
        } else if !trimmed.starts_with("///") && !trimmed.is_empty() {
            attributes.clear();
        }
    }
    structs
}

/// The field declared by a line `pub NAME: Type,`, if it is one: its name and type.
fn field_declaration(line: &str) -> Option<(&str, &str)> {
    let (name, ty) = line.strip_prefix("pub ")?.split_once(':')?;
    let is_identifier = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_identifier.then_some((name, ty.trim().trim_end_matches(',')))
}

/// Every `.rs` file below `dir`, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|err| panic!("listing {}: {err}", dir.display())).path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The configuration file's structs: `Config` of `host/src/config.rs` and
/// every struct its fields hold, wherever in `host/src` it is defined, each
/// with the names of its fields (fault-injection-only fields left out, and
/// with them what only they hold).
fn config_fields(root: &Path) -> Vec<(String, Vec<String>)> {
    let known: Vec<DeserializeStruct> =
        rust_files(&root.join("host/src")).iter().flat_map(|file| deserialize_structs(&read(file))).collect();
    let mut reached: Vec<(String, Vec<String>)> = Vec::new();
    let mut pending = vec!["Config".to_owned()];
    while let Some(name) = pending.pop() {
        if reached.iter().any(|(done, _)| *done == name) {
            continue;
        }
        let Some((_, fields)) = known.iter().find(|(known, _)| *known == name) else { continue };
        for (_, ty) in fields {
            pending.extend(ty.split(|c: char| !(c.is_alphanumeric() || c == '_')).map(str::to_owned));
        }
        reached.push((name, fields.iter().map(|(field, _)| field.clone()).collect()));
    }
    reached
}

/// Whether `doc` names the key `name` in a code span: `` `name` ``,
/// `` `section.name` `` or `` `[[plugins]] name` ``.
fn documented(doc: &str, name: &str) -> bool {
    let quoted = format!("{name}`");
    doc.match_indices(&quoted).any(|(at, _)| matches!(doc[..at].chars().next_back(), Some('`' | '.' | ' ')))
}

#[test]
fn every_configuration_key_is_documented_in_docs_configuration_md() {
    let root = evogate_e2e::workspace_root();
    let doc = read(&root.join("docs/configuration.md"));
    let structs = config_fields(&root);
    let found: Vec<&str> = structs.iter().map(|(name, _)| name.as_str()).collect();
    for expected in ["Config", "AdminConfig", "TlsConfig", "StoreConfig", "LimitsConfig", "PluginConfig", "JobConfig"] {
        assert!(found.contains(&expected), "struct {expected} not reached from Config in host/src (found {found:?})");
    }
    let missing: Vec<String> = structs
        .iter()
        .flat_map(|(name, fields)| fields.iter().map(move |field| (name, field)))
        .filter(|(_, field)| !documented(&doc, field))
        .map(|(name, field)| format!("{name}.{field}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{} configuration key(s) not described in docs/configuration.md (write each in backticks, \
         e.g. `limits.NAME` or `[[plugins]] NAME`):\n{}",
        missing.len(),
        missing.join("\n")
    );
    assert!(
        !structs.iter().any(|(_, fields)| fields.iter().any(|field| field == "faults")),
        "the fault-injection-only `faults` field must be left out"
    );
}

/// Each fenced block after `<!-- file: PATH -->` in the docs, with PATH.
fn quoted_files(text: &str) -> Vec<(String, String)> {
    let mut quoted = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("<!-- file: ") {
        let after = &rest[at + "<!-- file: ".len()..];
        let (path, after) = after.split_once(" -->").expect("a closed marker");
        let fence = after.find("```").expect("a fenced block after the marker");
        let body = after[fence..].split_once('\n').expect("a fence line").1;
        let end = body.find("\n```").map_or(body.len(), |end| end + 1);
        quoted.push((path.to_owned(), body[..end].to_owned()));
        rest = &body[end..];
    }
    quoted
}

/// The guide's code is the example's, which CI builds, tests and deploys.
#[test]
fn code_the_docs_quote_from_a_file_is_that_file() {
    let root = evogate_e2e::workspace_root();
    let mut checked = 0;
    for file in markdown_files(&root) {
        for (path, quoted) in quoted_files(&read(&root.join(&file))) {
            let actual = read(&root.join(&path));
            assert!(quoted == actual, "{} quotes {path}, which now reads:\n{actual}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "the plugin guide quotes the example's manifest, code and tests");
}

/// Every file and folder below `dir`, as paths relative to it (`target/`
/// and hidden entries left out).
fn tree(dir: &Path, prefix: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|err| panic!("listing {}: {err}", dir.display()));
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let relative = prefix.join(&name);
        if entry.path().is_dir() {
            tree(&entry.path(), &relative, into);
        }
        into.push(relative);
    }
}

/// The layout in `docs/architecture.md` names the tree as it is: each source
/// file or folder it names (`server.rs`, `deploy/`, `src/storage/`) exists
/// under the top-level folder whose entry names it, or from the root.
#[test]
fn the_architecture_layout_names_only_files_and_folders_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = read(&root.join("docs/architecture.md"));
    let layout =
        guide.split("\n## Layout\n").nth(1).and_then(|rest| rest.split("\n## ").next()).expect("a Layout section");
    let (mut base, mut checked, mut missing) = (None::<(String, Vec<PathBuf>)>, 0, Vec::new());
    for line in layout.lines() {
        // A top-level entry, "- [`host/`](../host/)" or "- `tests/guest/`", names the folder the rest is under.
        if let Some(entry) = line.strip_prefix("- ") {
            let folder = entry.trim_start_matches('[').strip_prefix('`').and_then(|rest| rest.split('`').next());
            base = folder.filter(|folder| folder.ends_with('/') && root.join(folder).is_dir()).map(|folder| {
                let mut files = Vec::new();
                tree(&root.join(folder), Path::new(""), &mut files);
                (folder.to_owned(), files)
            });
        }
        let Some((folder, files)) = &base else { continue };
        for (i, span) in line.split('`').enumerate() {
            let named = i % 2 == 1
                && !span.contains(' ')
                && !span.contains("::")
                && (span.ends_with(".rs") || (span.ends_with('/') && span.len() > 1 && !span.starts_with("..")));
            if !named || span == folder {
                continue;
            }
            checked += 1;
            let wanted = Path::new(span.trim_end_matches('/'));
            // A path from the repository's root (`tests/tests/e2e/`), or one below the entry's folder.
            if !root.join(wanted).exists() && !files.iter().any(|file| file.ends_with(wanted)) {
                missing.push(format!("{span} (under {folder})"));
            }
        }
    }
    assert!(checked >= 60, "the layout names the tree's files: only {checked} found");
    assert!(missing.is_empty(), "docs/architecture.md names what the tree lacks: {missing:?}");
}
