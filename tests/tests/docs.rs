//! The documentation's links: README.md and every page under docs/. Every
//! relative link (outside fenced code blocks) names a file that exists, and
//! its `#anchor`, if any, is the GitHub slug of a heading of that file. The
//! README stays a short entry point that links every page. No root needed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The README's size limit, in bytes: the details belong in docs/.
const README_MAX_BYTES: usize = 12_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// README.md, then docs/*.md in name order.
fn documents() -> Vec<PathBuf> {
    let root = repo();
    let mut pages: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    let mut all = vec![root.join("README.md")];
    all.extend(pages);
    all
}

/// The lines of `text` outside fenced code blocks (``` or ~~~, indented
/// or not, as inside list items), with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// GitHub's anchor for a heading's text: lower case, spaces become `-`,
/// every other character but letters, digits, `-` and `_` is removed.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of `text`'s headings, with GitHub's `-1`, `-2`... for
/// repeated ones.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let text = line[hashes..].trim().trim_end_matches('#');
        let base = slug(text);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The targets of the links on `line`: inline `[text](target)` (and
/// images) and reference definitions `[name]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches(|c| c == '<' || c == '>');
        targets.push(target.to_owned());
        rest = &after[end..];
    }
    let trimmed = line.trim_start();
    if let Some(close) = trimmed.strip_prefix('[').and_then(|t| t.find("]:")) {
        let def = trimmed[close + 3..].split_whitespace().next().unwrap_or("");
        if !def.is_empty() {
            targets.push(def.to_owned());
        }
    }
    targets
}

fn is_external(target: &str) -> bool {
    let scheme = target.split(':').next().unwrap_or("");
    target.contains(':')
        && !scheme.is_empty()
        && !scheme.contains('/')
        && !scheme.contains('#')
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
}

/// `path` with its `.` and `..` components resolved, without the file
/// system (so that a link is judged by its text).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let root = repo();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = fs::read_to_string(&doc).expect("readable document");
        let shown = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        let dir = doc.parent().expect("a document is in a directory");
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.is_empty() {
                    broken.push(format!("{shown}:{number}: empty link target"));
                    continue;
                }
                if is_external(&target) {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let linked = if file.is_empty() {
                    doc.clone()
                } else {
                    normalize(&dir.join(file))
                };
                if !linked.exists() {
                    broken.push(format!("{shown}:{number}: `{target}`: no such file"));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if linked.extension().is_none_or(|e| e != "md") {
                    broken.push(format!(
                        "{shown}:{number}: `{target}`: an anchor into a file that is not Markdown"
                    ));
                    continue;
                }
                let linked_text = fs::read_to_string(&linked).expect("readable document");
                if !anchors(&linked_text).contains(anchor) {
                    broken.push(format!(
                        "{shown}:{number}: `{target}`: no heading with the anchor `#{anchor}`"
                    ));
                }
            }
        }
    }
    assert!(
        checked > 0,
        "no relative link found: the link reader is broken"
    );
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn readme_is_short_and_links_every_page() {
    let root = repo();
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        readme.len() < README_MAX_BYTES,
        "README.md is {} bytes, over {README_MAX_BYTES}: move details into a page under docs/",
        readme.len()
    );
    let linked: BTreeSet<PathBuf> = prose_lines(&readme)
        .into_iter()
        .flat_map(|(_, line)| link_targets(line))
        .filter(|t| !is_external(t))
        .map(|t| normalize(Path::new(t.split('#').next().unwrap_or(""))))
        .collect();
    let unlinked: Vec<String> = documents()
        .into_iter()
        .skip(1)
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under the repository")
                .to_path_buf()
        })
        .filter(|p| !linked.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        unlinked.is_empty(),
        "pages the README does not link: {}",
        unlinked.join(", ")
    );
}

#[test]
fn kernel_table_markers_are_in_the_kernels_page() {
    // `cargo xtask vm-test --update-docs` writes the kernel table between
    // these markers (xtask/src/vm/table.rs).
    let page = fs::read_to_string(repo().join("docs/kernels.md")).expect("docs/kernels.md");
    let begin = page
        .find("<!-- kernel-table: written by `cargo xtask vm-test --update-docs` -->")
        .expect("docs/kernels.md has the kernel table's begin marker");
    let end = page
        .find("<!-- end of kernel-table -->")
        .expect("docs/kernels.md has the kernel table's end marker");
    assert!(begin < end, "the kernel table's markers are out of order");
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("Requests (L7)"), "requests-l7");
    assert_eq!(slug("`weft status`"), "weft-status");
    assert_eq!(
        slug("What the pod gets, and why"),
        "what-the-pod-gets-and-why"
    );
    assert_eq!(slug("snake_case and-dash"), "snake_case-and-dash");
    let dup = anchors("# A\n\n```\n# not a heading\n```\n\n## A\n");
    assert_eq!(dup, BTreeSet::from(["a".to_owned(), "a-1".to_owned()]));
    assert_eq!(
        link_targets("see [x](docs/a.md#b) and [y](#c \"title\")"),
        ["docs/a.md#b", "#c"]
    );
    assert!(is_external("https://example.com/a"));
    assert!(is_external("mailto:someone@example.com"));
    assert!(!is_external("docs/kernels.md#kernels"));
}
