//! The documentation stays true: every relative link in the Markdown files resolves (file and
//! heading anchor), every repository path a page names in code exists, and
//! `docs/api-reference.md` is what the CRD schema generates.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's files whose names end with one of `suffixes`: build output, dependencies and
/// hidden folders aside.
fn files_ending_with(suffixes: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    walk(&path, suffixes, out);
                }
            } else if suffixes.iter().any(|s| name.ends_with(s)) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), suffixes, &mut out);
    out.sort();
    out
}

/// Every Markdown file of the project.
fn markdown_files() -> Vec<PathBuf> {
    files_ending_with(&[".md"])
}

/// The `docs/...` pages a text names (`docs/gateway.md`, `docs/argocd-health.lua`), as paths
/// from the repository root; a path inside another (`../../docs/x.md`) is not one.
fn docs_pages_named(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("docs/") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || "/._-".contains(c)) {
            continue;
        }
        let path: String = text[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || "/._-".contains(*c))
            .collect();
        let path = path.trim_end_matches('.');
        if [".md", ".lua", ".svg"].iter().any(|e| path.ends_with(e)) {
            out.push(path.to_string());
        }
    }
    out
}

/// A page's lines outside fenced code blocks, with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((n + 1, line));
        }
    }
    out
}

/// `line` without its code spans, and the code spans themselves.
fn split_code_spans(line: &str) -> (String, Vec<&str>) {
    let mut prose = String::new();
    let mut spans = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        prose.push_str(&rest[..start]);
        let after = &rest[start..];
        let ticks = after.len() - after.trim_start_matches('`').len();
        let fence = &after[..ticks];
        let body = &after[ticks..];
        match body.find(fence) {
            Some(end) => {
                spans.push(body[..end].trim());
                rest = &body[end + ticks..];
            }
            None => {
                prose.push_str(after);
                rest = "";
            }
        }
    }
    prose.push_str(rest);
    (prose, spans)
}

/// Link targets in prose: `[text](target)`, `![alt](target)` and `[label]: target`.
fn link_targets(prose: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = prose;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        // The target ends at the matching `)` (targets may hold balanced parentheses).
        let mut depth = 0usize;
        let mut end = None;
        for (j, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(j);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else { break };
        // `[text](target "title")`: the target is the first word.
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        out.push(target.trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    let t = prose.trim_start();
    if t.starts_with('[')
        && let Some(i) = t.find("]: ")
        && !t[1..i].contains(']')
    {
        out.push(
            t[i + 3..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    out
}

/// GitHub's anchors for a page's headings: lowercased, punctuation dropped, spaces to `-`,
/// repeats suffixed `-1`, `-2`...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// Problems with one relative link of `page`: missing file, or missing heading anchor.
fn check_link(page: &Path, target: &str) -> Option<String> {
    let (file, anchor) = match target.split_once('#') {
        Some((f, a)) => (f, Some(a)),
        None => (target, None),
    };
    let resolved = if file.is_empty() {
        page.to_path_buf()
    } else if let Some(from_root) = file.strip_prefix('/') {
        root().join(from_root)
    } else {
        page.parent().unwrap_or(Path::new("")).join(file)
    };
    if !resolved.exists() {
        return Some(format!("{target}: no such file"));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if resolved.extension().is_some_and(|e| e == "md") {
        let text = std::fs::read_to_string(&resolved).unwrap_or_default();
        if !anchors(&text).contains(anchor) {
            return Some(format!("{target}: no heading with anchor #{anchor}"));
        }
    }
    None
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_relative_link_in_the_markdown_files_resolves() {
    let pages = markdown_files();
    assert!(
        pages.iter().any(|p| p.ends_with("README.md")) && pages.len() > 5,
        "found only {pages:?}"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("readable page");
        for (n, line) in prose_lines(&text) {
            let (prose, _) = split_code_spans(line);
            for target in link_targets(&prose) {
                if target.is_empty() || is_external(&target) {
                    continue;
                }
                checked += 1;
                if let Some(problem) = check_link(page, &target) {
                    broken.push(format!("{}:{n}: {problem}", relative(page)));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Top-level folders whose paths the pages name in code spans (`docs/gateway.md`,
/// `tests/support/operator/kstatus.rs`); such a path must exist, so that moving a file cannot
/// leave a page pointing at nothing.
const TOP: [&str; 12] = [
    ".ci/",
    ".config/",
    "benches/",
    "charts/",
    "crds/",
    "deploy/",
    "docs/",
    "examples/",
    "fuzz/",
    "scripts/",
    "src/",
    "tests/",
];

#[test]
fn every_repository_path_named_in_the_markdown_files_exists() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for page in markdown_files() {
        let text = std::fs::read_to_string(&page).expect("readable page");
        for (n, line) in prose_lines(&text) {
            let (_, spans) = split_code_spans(line);
            for span in spans {
                // A path alone, not a command line or a pattern (`tests/operator/*.rs`).
                let is_path = TOP.iter().any(|t| span.starts_with(t))
                    && !span.contains(|c: char| c.is_whitespace() || "*{}<>$[]".contains(c));
                if !is_path {
                    continue;
                }
                checked += 1;
                if !root().join(span).exists() {
                    missing.push(format!("{}:{n}: `{span}` does not exist", relative(&page)));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} paths found");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Code, scripts and manifests point readers at `docs/` pages (`see docs/api-emulator.md`);
/// such a page must exist (five files once named one that had been folded into the README).
#[test]
fn every_docs_page_named_in_code_and_scripts_exists() {
    let this_file = root().join("tests/docs.rs");
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in files_ending_with(&[".rs", ".sh", ".py", ".toml", ".yaml", ".yml", ".mjs"]) {
        if file == this_file {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for page in docs_pages_named(&text) {
            checked += 1;
            if !root().join(&page).exists() {
                missing.push(format!(
                    "{}: names {page}, which does not exist",
                    relative(&file)
                ));
            }
        }
    }
    assert!(checked > 5, "only {checked} docs pages named");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_link_checker_finds_what_is_broken() {
    assert_eq!(
        docs_pages_named("see docs/a.md. and `docs/b.lua`, ../../docs/c.md, mydocs/d.md, docs/e/"),
        ["docs/a.md", "docs/b.lua"]
    );
    let (prose, spans) =
        split_code_spans("see [a](docs/x.md#part) and `[b](not/a/link.md)` or ``tests/y.rs``");
    assert_eq!(spans, ["[b](not/a/link.md)", "tests/y.rs"]);
    assert_eq!(link_targets(&prose), ["docs/x.md#part"]);
    assert_eq!(
        link_targets("[x](<a b.md> \"title\") [y](f(1).md)"),
        ["a", "f(1).md"]
    );
    assert_eq!(link_targets("[label]: docs/z.md"), ["docs/z.md"]);
    let page = root().join("README.md");
    assert_eq!(check_link(&page, "docs/gateway.md"), None);
    assert_eq!(
        check_link(&page, "docs/missing.md"),
        Some("docs/missing.md: no such file".to_string())
    );
    assert_eq!(
        check_link(&page, "#no-such-heading"),
        Some("#no-such-heading: no heading with anchor #no-such-heading".to_string())
    );
    let a = anchors("# The gateway: flags\n## Fan-out\n## Fan-out\n```\n# not a heading\n```\n");
    assert_eq!(
        a.into_iter().collect::<Vec<_>>(),
        ["fan-out", "fan-out-1", "the-gateway-flags"]
    );
}

#[test]
fn the_api_reference_is_generated_from_the_crd_schema() {
    let path = root().join("docs/api-reference.md");
    let want = stompgate::crd::reference::markdown().expect("reference");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/api-reference.md is stale: regenerate it with `{}`",
        stompgate::crd::reference::REGENERATE
    );
}
